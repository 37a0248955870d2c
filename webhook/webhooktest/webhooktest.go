// Package webhooktest holds the conformance suite every [webhook.Dedupe]
// implementation runs, so the handler's guarantees (a duplicate is not
// handed on twice; a failed sink never marks an event seen) hold whatever
// backs the dedupe.
package webhooktest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/leveehq/levee/webhook"
)

// TestDedupe runs the Dedupe contract against fresh instances from newDedupe
// (each subtest gets its own; instances may share a backend as long as the
// ids of different calls do not collide, which the suite ensures by using a
// random prefix per run). It fails t on the first violation:
//
//   - a first Claim is not seen and returns a done func;
//   - done(nil) marks the event seen: the next Claim returns seen, no done;
//   - done(err) releases it: the next Claim is not seen and may claim again;
//   - while a claim is held, a second Claim either returns an error wrapping
//     webhook.ErrInFlight, or waits (bounded by its context) and reports seen
//     once the holder's done(nil) ran: it never claims the same event twice;
//   - events differing in Source or in ID are independent.
func TestDedupe(t *testing.T, newDedupe func(t *testing.T) webhook.Dedupe) {
	t.Helper()
	run := fmt.Sprintf("wt%d", time.Now().UnixNano())
	ev := func(source, id string) webhook.Event {
		return webhook.Event{Scheme: "hmac", Source: run + "-" + source, ID: id, Body: []byte(`{}`)}
	}
	claim := func(t *testing.T, d webhook.Dedupe, e webhook.Event) (func(context.Context, error) error, bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done, seen, err := d.Claim(ctx, e)
		if err != nil {
			t.Fatalf("Claim(%s/%s): %v", e.Source, e.ID, err)
		}
		if seen == (done != nil) {
			t.Fatalf("Claim(%s/%s): seen %v with done %v: exactly one is expected", e.Source, e.ID, seen, done != nil)
		}
		return done, seen
	}
	finish := func(t *testing.T, done func(context.Context, error) error, sinkErr error) {
		t.Helper()
		if err := done(context.Background(), sinkErr); err != nil {
			t.Fatalf("done(%v): %v", sinkErr, err)
		}
	}

	t.Run("AcceptedIsSeen", func(t *testing.T) {
		d := newDedupe(t)
		done, seen := claim(t, d, ev("a", "1"))
		if seen {
			t.Fatal("a new event is seen")
		}
		finish(t, done, nil)
		for i := range 2 {
			if _, seen := claim(t, d, ev("a", "1")); !seen {
				t.Fatalf("claim %d after done(nil): not seen", i+2)
			}
		}
	})

	t.Run("FailedSinkReleases", func(t *testing.T) {
		d := newDedupe(t)
		done, _ := claim(t, d, ev("a", "2"))
		finish(t, done, errors.New("sink down"))
		done, seen := claim(t, d, ev("a", "2"))
		if seen {
			t.Fatal("after done(err) the event is seen: a failed sink marked it")
		}
		finish(t, done, nil)
		if _, seen := claim(t, d, ev("a", "2")); !seen {
			t.Fatal("after the retry's done(nil): not seen")
		}
	})

	t.Run("InFlightIsNotClaimedTwice", func(t *testing.T) {
		d := newDedupe(t)
		done, _ := claim(t, d, ev("a", "3"))
		type answer struct {
			done func(context.Context, error) error
			seen bool
			err  error
		}
		second := make(chan answer, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go func() {
			dn, seen, err := d.Claim(ctx, ev("a", "3"))
			second <- answer{dn, seen, err}
		}()
		// Give the second Claim time to meet the held claim, then release it.
		// Whenever the second answers, it must not have claimed the event.
		var a answer
		released := false
		select {
		case a = <-second:
		case <-time.After(200 * time.Millisecond):
			finish(t, done, nil)
			released = true
			select {
			case a = <-second:
			case <-ctx.Done():
				t.Fatal("a waiting Claim did not return after the holder finished")
			}
		}
		if !released {
			finish(t, done, nil)
		}
		switch {
		case errors.Is(a.err, webhook.ErrInFlight):
		case a.err == nil && a.seen && a.done == nil && released:
		default:
			t.Fatalf("a second Claim while held returned seen %v, done %v, err %v (holder released: %v); want ErrInFlight, or seen after a wait",
				a.seen, a.done != nil, a.err, released)
		}
	})

	t.Run("SourceAndIDScope", func(t *testing.T) {
		d := newDedupe(t)
		done, _ := claim(t, d, ev("a", "4"))
		finish(t, done, nil)
		for _, e := range []webhook.Event{ev("b", "4"), ev("a", "5")} {
			done, seen := claim(t, d, e)
			if seen {
				t.Fatalf("%s/%s is seen after only a/4 was accepted", e.Source, e.ID)
			}
			finish(t, done, nil)
		}
	})
}
