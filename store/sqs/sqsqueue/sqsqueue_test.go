package sqsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/leveehq/levee/internal/fakeclock"
	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/queue/queuetest"
	"github.com/leveehq/levee/store/sqs/sqsqueue"
)

// The shared queuetest suite runs on goaws in TestConformance, with
// ServerClock and NoCrossCallDedupe declared; the suite's checks that drive
// leases, delays and dedupe windows with a fake clock skip there. TestGoaws
// checks those guarantees as SQS keeps them, on SQS's clock, in the
// suite's terms.

const wait = 30 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type env struct {
	client *sqs.Client
	api    *fidelity
}

func msg(q, id, target string) *queue.Message {
	return &queue.Message{ID: id, Queue: q, Target: target, Payload: []byte("payload-" + id),
		Headers: http.Header{"Content-Type": {"application/json"}}, EnqueuedAt: t0}
}

func ids(cs []queue.Claimed) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.ID)
	}
	slices.Sort(out)
	return out
}

// backend returns a backend over fresh queues prefix+"q" and prefix+"other"
// (visibility visSec, redrive after maxReceives when > 0), its lease clock
// a fake one.
func (e *env) backend(t *testing.T, visSec, maxReceives int) (*sqsqueue.Backend, *fakeclock.Clock) {
	prefix := randomPrefix()
	createQueues(t, e.client, prefix, visSec, maxReceives, "q", "other")
	clock := fakeclock.New(time.Now())
	b, err := sqsqueue.New(e.api, sqsqueue.Options{Prefix: prefix, ScanWait: -1, ScanVisibility: 5 * time.Second, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return b, clock
}

func TestGoaws(t *testing.T) {
	endpoint := startGoaws(t, buildGoaws(t))
	c := newClient(t, endpoint)
	e := &env{client: c, api: newFidelity(c)}
	ctx := context.Background()
	enqueue := func(t *testing.T, b queue.Backend, ms ...*queue.Message) []queue.EnqueueResult {
		t.Helper()
		res, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: ms, Now: t0, DedupeUntil: t0.Add(time.Hour)})
		if err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
		return res
	}
	claim := func(t *testing.T, b queue.Backend, now time.Time, limit, per int, exclude ...string) []queue.Claimed {
		t.Helper()
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: now, LeaseUntil: now.Add(time.Minute), Limit: limit, PerTarget: per, Exclude: exclude})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		return cs
	}

	t.Run("EnqueueClaimAck", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		enqueue(t, b, msg("q", "a", "x"), msg("q", "b", "y"), msg("other", "c", "x"))
		// Not due yet by the caller's clock: handed back, hidden for the
		// second it still has to wait (on SQS's clock), not claimed.
		if cs := claim(t, b, t0.Add(-time.Second), 10, 0); len(cs) != 0 {
			t.Fatalf("claimed %v before they were enqueued", ids(cs))
		}
		var cs []queue.Claimed
		poll.Until(t, wait, func() bool {
			cs = append(cs, claim(t, b, t0, 10, 0)...)
			return len(cs) >= 2
		}, "handed-back messages never claimable")
		if got := ids(cs); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("claimed %v, want [a b] (queue q only)", got)
		}
		c := cs[slices.IndexFunc(cs, func(c queue.Claimed) bool { return c.ID == "a" })]
		if c.Attempt != 1 || c.Target != "x" || string(c.Payload) != "payload-a" || c.Headers.Get("Content-Type") != "application/json" || !c.EnqueuedAt.Equal(t0) || c.Queue != "q" {
			t.Fatalf("claimed %+v: fields not kept (a hand-back is not an attempt)", c)
		}
		if again := claim(t, b, t0, 10, 0); len(again) != 0 {
			t.Fatalf("leased messages claimed again: %v", ids(again))
		}
		if err := b.Ack(ctx, "q", "a", c.Token+100); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("Ack with a wrong token: %v, want ErrLeaseLost", err)
		}
		if err := b.Ack(ctx, "q", "a", c.Token); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		if err := b.Ack(ctx, "q", "a", c.Token); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("second Ack: %v, want ErrLeaseLost", err)
		}
	})

	t.Run("HandBackOfADueMessageIsNotDelayed", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		// Due 100ms after the claim's Now (an Enqueue racing a claim):
		// due, since SQS's delays are whole seconds.
		m := msg("q", "a", "x")
		m.EnqueuedAt = t0.Add(100 * time.Millisecond)
		enqueue(t, b, m)
		if cs := claim(t, b, t0, 10, 0, "x"); len(cs) != 0 {
			t.Fatalf("claimed %v of an excluded target", ids(cs))
		}
		// Handed back visible at once, not after SQS's one-second minimum.
		if got := ids(claim(t, b, t0, 10, 0)); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("right after the hand-back: claimed %v, want [a]", got)
		}
	})

	t.Run("ExcludedBacklogBoundsAClaim", func(t *testing.T) {
		// Not parallel: it counts the shared wrapper's receives.
		b, _ := e.backend(t, 60, 0)
		var ms []*queue.Message
		for i := range 30 {
			ms = append(ms, msg("q", "x"+strconv.Itoa(i), "x"))
		}
		enqueue(t, b, ms[:10]...)
		enqueue(t, b, ms[10:20]...)
		enqueue(t, b, ms[20:]...)
		e.api.mu.Lock()
		before := e.api.calls
		e.api.mu.Unlock()
		if cs := claim(t, b, t0, 10, 0, "x"); len(cs) != 0 {
			t.Fatalf("claimed %v of an excluded target", ids(cs))
		}
		e.api.mu.Lock()
		n := e.api.calls - before
		e.api.mu.Unlock()
		if n != 1 {
			t.Fatalf("Claim(Limit 10) over an excluded backlog made %d receives, want 1", n)
		}
		if got := len(claim(t, b, t0, 30, 0)); got == 0 {
			t.Fatal("the handed-back backlog is not claimable")
		}
	})

	t.Run("DedupeWithinACall", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		m1, m2 := msg("q", "1", "x"), msg("q", "2", "x")
		m1.DedupeID, m2.DedupeID = "evt", "evt"
		res := enqueue(t, b, m1, m2, msg("q", "1", "x"))
		want := []queue.EnqueueResult{{ID: "1"}, {ID: "1", Duplicate: true}, {ID: "1", Duplicate: true}}
		if !slices.Equal(res, want) {
			t.Fatalf("one call: %+v, want %+v", res, want)
		}
		if got := ids(claim(t, b, t0, 10, 0)); !slices.Equal(got, []string{"1"}) {
			t.Fatalf("stored %v, want [1]", got)
		}
	})

	t.Run("LapsedLeaseFencedAndCounted", func(t *testing.T) {
		t.Parallel()
		b, clock := e.backend(t, 1, 0) // SQS lease: 1 s of goaws's clock
		enqueue(t, b, msg("q", "a", "x"))
		now := time.Now()
		first, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: now, LeaseUntil: now.Add(time.Second), Limit: 1})
		if err != nil || len(first) != 1 {
			t.Fatalf("Claim: %v, %v", first, err)
		}
		// The holder's lease clock passes the lease: its late writes are
		// refused and change nothing.
		clock.Advance(2 * time.Second)
		if err := b.Ack(ctx, "q", "a", first[0].Token); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("stale Ack: %v", err)
		}
		if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: first[0].Token, Attempts: 1, AvailableAt: now}); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("stale Nack: %v", err)
		}
		if err := b.Bury(ctx, queue.Burial{Queue: "q", ID: "a", Token: first[0].Token, Attempts: 1, Reason: queue.ReasonPermanent, At: now}); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("stale Bury: %v", err)
		}
		// SQS redelivers after its visibility timeout; the lost lease is
		// counted from the receive count (the worker records it).
		var second []queue.Claimed
		poll.Until(t, wait, func() bool {
			second = claim(t, b, time.Now(), 1, 0)
			return len(second) == 1
		}, "message not redelivered after its lease")
		if second[0].Attempt != 2 || second[0].Token == first[0].Token {
			t.Fatalf("after the lease: %+v, want attempt 2 with a new token", second[0])
		}
		if err := b.Ack(ctx, "q", "a", second[0].Token); err != nil {
			t.Fatalf("Ack by the new holder: %v", err)
		}
	})

	t.Run("NackKeepsHistory", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		enqueue(t, b, msg("q", "a", "x"))
		c := claim(t, b, t0, 1, 0)[0]
		hist := []queue.Attempt{{N: 1, StartedAt: t0, FailedAt: t0.Add(time.Second), Error: "boom", Status: 503, Body: []byte("down")}}
		// Due one second later: SQS hides the copy for that second of its
		// own clock (the caller's clock cannot skip it, see docs/queue.md).
		if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: c.Token, Attempts: 1, History: hist, AvailableAt: t0.Add(time.Second)}); err != nil {
			t.Fatalf("Nack: %v", err)
		}
		if cs := claim(t, b, t0.Add(time.Second), 1, 0); len(cs) != 0 {
			t.Fatal("claimed while in backoff")
		}
		var again []queue.Claimed
		poll.Until(t, wait, func() bool {
			again = claim(t, b, t0.Add(time.Second), 1, 0)
			return len(again) == 1
		}, "nacked message never available again")
		if again[0].Attempt != 2 || len(again[0].History) != 1 {
			t.Fatalf("after backoff: %+v", again)
		}
		a := again[0].History[0]
		if a.Error != "boom" || a.Status != 503 || string(a.Body) != "down" || !a.FailedAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("history not kept: %+v", a)
		}
	})

	t.Run("PerTargetExcludeDisabled", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		for i := range 5 {
			enqueue(t, b, msg("q", "x"+strconv.Itoa(i), "x"))
		}
		enqueue(t, b, msg("q", "y0", "y"), msg("q", "z0", "z"))
		byTarget := func(cs []queue.Claimed) map[string]int {
			m := map[string]int{}
			for _, c := range cs {
				m[c.Target]++
			}
			return m
		}
		cs := claim(t, b, t0, 10, 2)
		if got := byTarget(cs); got["x"] != 2 || got["y"] != 1 || got["z"] != 1 || len(cs) != 4 {
			t.Fatalf("PerTarget 2: claimed %v, want 2 of x, y0, z0", ids(cs))
		}
		enqueue(t, b, msg("q", "y1", "y"), msg("q", "w0", "w"))
		if got := ids(claim(t, b, t0, 10, 0, "x", "y")); !slices.Equal(got, []string{"w0"}) {
			t.Fatalf("Exclude x,y: claimed %v, want [w0]", got)
		}
		if err := b.SetTarget(ctx, queue.TargetState{Queue: "q", Target: "y", Disabled: true, Reason: "410 Gone", Since: t0}); err != nil {
			t.Fatal(err)
		}
		if got := byTarget(claim(t, b, t0, 10, 0)); got["x"] != 3 || got["y"] != 0 {
			t.Fatalf("y disabled: claimed %v, want the 3 other x", got)
		}
		ts, err := b.Targets(ctx, "q")
		if err != nil || len(ts) != 1 || !ts[0].Disabled || ts[0].Target != "y" || ts[0].Reason != "410 Gone" || !ts[0].Since.Equal(t0) {
			t.Fatalf("Targets: %+v, %v", ts, err)
		}
		if err := b.SetTarget(ctx, queue.TargetState{Queue: "q", Target: "y", Since: t0.Add(time.Second)}); err != nil {
			t.Fatal(err)
		}
		if got := ids(claim(t, b, t0, 10, 0)); !slices.Equal(got, []string{"y1"}) {
			t.Fatalf("y enabled: claimed %v, want [y1]", got)
		}
	})

	t.Run("DeadLetters", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		bury := func(id, target string, reason queue.Reason, at time.Time) {
			t.Helper()
			enqueue(t, b, msg("q", id, target))
			cs := claim(t, b, t0.Add(time.Hour), 1, 0)
			if len(cs) != 1 || cs[0].ID != id {
				t.Fatalf("claimed %v, want %s", ids(cs), id)
			}
			hist := []queue.Attempt{
				{N: 1, StartedAt: at.Add(-2 * time.Minute), FailedAt: at.Add(-time.Minute), Error: "e1", Status: 500, Body: []byte("b1")},
				{N: 2, StartedAt: at.Add(-time.Second), FailedAt: at, Error: "e2"},
			}
			if err := b.Bury(ctx, queue.Burial{Queue: "q", ID: id, Token: cs[0].Token, Attempts: 2, History: hist, Reason: reason, At: at}); err != nil {
				t.Fatalf("Bury: %v", err)
			}
		}
		bury("a", "x", queue.ReasonMaxAttempts, t0.Add(time.Minute))
		bury("b", "y", queue.ReasonTargetGone, t0.Add(2*time.Minute))
		bury("c", "x", queue.ReasonPermanent, t0.Add(3*time.Minute))
		if cs := claim(t, b, t0.Add(time.Hour), 10, 0); len(cs) != 0 {
			t.Fatalf("dead messages claimable: %v", ids(cs))
		}
		d, err := b.GetDead(ctx, "q", "a")
		if err != nil {
			t.Fatalf("GetDead: %v", err)
		}
		if d.ID != "a" || d.Target != "x" || string(d.Payload) != "payload-a" || d.Headers.Get("Content-Type") != "application/json" ||
			d.Reason != queue.ReasonMaxAttempts || d.Attempts != 2 || len(d.History) != 2 || d.History[0].Status != 500 ||
			string(d.History[0].Body) != "b1" || d.History[1].Error != "e2" ||
			!d.FirstFailure.Equal(t0) || !d.LastFailure.Equal(t0.Add(time.Minute)) || !d.DeadAt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("GetDead: %+v", d)
		}
		if _, err := b.GetDead(ctx, "q", "nope"); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("GetDead(missing): %v", err)
		}
		list := func(f queue.DeadFilter) []string {
			t.Helper()
			f.Queue = "q"
			ds, err := b.ListDead(ctx, f)
			if err != nil {
				t.Fatalf("ListDead(%+v): %v", f, err)
			}
			out := []string{}
			for _, d := range ds {
				out = append(out, d.ID)
			}
			return out
		}
		for _, tc := range []struct {
			f    queue.DeadFilter
			want []string
		}{
			{queue.DeadFilter{}, []string{"a", "b", "c"}},
			{queue.DeadFilter{Limit: 2}, []string{"a", "b"}},
			{queue.DeadFilter{IDs: []string{"c", "a"}}, []string{"a", "c"}},
			{queue.DeadFilter{Target: "x"}, []string{"a", "c"}},
			{queue.DeadFilter{Reason: queue.ReasonTargetGone}, []string{"b"}},
			{queue.DeadFilter{DeadBefore: t0.Add(2 * time.Minute)}, []string{"a"}},
			{queue.DeadFilter{DeadAfter: t0.Add(2 * time.Minute)}, []string{"c"}},
		} {
			if got := list(tc.f); !slices.Equal(got, tc.want) {
				t.Fatalf("ListDead(%+v) = %v, want %v", tc.f, got, tc.want)
			}
		}
		all, _ := b.ListDead(ctx, queue.DeadFilter{Queue: "q"})
		if got := list(queue.DeadFilter{AfterSeq: all[0].Seq}); !slices.Equal(got, []string{"b", "c"}) {
			t.Fatalf("after a: %v", got)
		}
		// Scans release what they read: the DLQ is whole after them.
		if got := list(queue.DeadFilter{}); len(got) != 3 {
			t.Fatalf("after scans: %v", got)
		}
		n, err := b.Requeue(ctx, "q", []string{"a", "nope"}, t0.Add(2*time.Hour))
		if err != nil || n != 1 {
			t.Fatalf("Requeue: %d, %v", n, err)
		}
		cs := claim(t, b, t0.Add(2*time.Hour), 10, 0)
		if len(cs) != 1 || cs[0].ID != "a" || cs[0].Attempt != 1 || len(cs[0].History) != 0 || string(cs[0].Payload) != "payload-a" {
			t.Fatalf("requeued: %+v", cs)
		}
		if _, err := b.GetDead(ctx, "q", "a"); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("requeued message still dead: %v", err)
		}
		if n, err := b.DeleteDead(ctx, queue.DeadFilter{Queue: "q", Target: "y"}); err != nil || n != 1 {
			t.Fatalf("DeleteDead(target y): %d, %v", n, err)
		}
		if got := list(queue.DeadFilter{}); !slices.Equal(got, []string{"c"}) {
			t.Fatalf("after purge: %v", got)
		}
	})

	t.Run("NativeRedriveKeepsLeveesRecord", func(t *testing.T) {
		t.Parallel()
		// maxReceiveCount 1: the second lapsed lease moves it to the DLQ
		// (goaws's redrive), with no levee Bury.
		b, _ := e.backend(t, 1, 1)
		enqueue(t, b, msg("q", "a", "x"))
		now := time.Now()
		c := claim(t, b, now, 1, 0)[0]
		hist := []queue.Attempt{{N: 1, StartedAt: now, FailedAt: now, Error: "upstream 503", Status: 503}}
		if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: c.Token, Attempts: 1, History: hist, AvailableAt: now}); err != nil {
			t.Fatal(err)
		}
		// Workers die twice: receive, never settle.
		var d *queue.DeadMessage
		poll.Until(t, wait, func() bool {
			_ = claim(t, b, time.Now(), 1, 0)
			var err error
			d, err = b.GetDead(ctx, "q", "a")
			return err == nil
		}, "SQS's redrive never moved the message")
		if d.Reason != sqsqueue.ReasonMaxReceives || d.Attempts != 1 || len(d.History) != 1 || d.History[0].Error != "upstream 503" || string(d.Payload) != "payload-a" {
			t.Fatalf("natively dead-lettered: %+v, want max_receives with levee's record of attempt 1", d)
		}
	})

	t.Run("RedriveIsAReplay", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 0)
		enqueue(t, b, msg("q", "a", "x"))
		c := claim(t, b, t0, 1, 0)[0]
		if err := b.Bury(ctx, queue.Burial{Queue: "q", ID: "a", Token: c.Token, Attempts: 3, Reason: queue.ReasonMaxAttempts, At: t0,
			History: []queue.Attempt{{N: 1, Error: "e"}, {N: 2, Error: "e"}, {N: 3, Error: "e"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Redrive(ctx, "q", 10); err != nil {
			t.Fatalf("Redrive: %v", err)
		}
		cs := claim(t, b, t0.Add(time.Minute), 1, 0)
		if len(cs) != 1 || cs[0].ID != "a" || cs[0].Attempt != 1 || len(cs[0].History) != 0 {
			t.Fatalf("after Redrive: %+v, want a at attempt 1 with no history", cs)
		}
	})

	t.Run("QueueToDLQThenReplayOnce", func(t *testing.T) {
		t.Parallel()
		b, _ := e.backend(t, 60, 5)
		q, err := queue.New(b, queue.Config{Name: "q", ReplayRate: 1000})
		if err != nil {
			t.Fatal(err)
		}
		var fail atomic.Bool
		fail.Store(true)
		var calls, delivered atomic.Int32
		w, err := q.NewWorker(queue.WorkerConfig{MaxAttempts: 3, PollInterval: 10 * time.Millisecond,
			Jitter: func(time.Duration) time.Duration { return 0 },
			Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
				calls.Add(1)
				if fail.Load() {
					return &queue.HTTPError{Status: 503, Body: []byte(fmt.Sprintf("attempt %d: upstream down", d.Attempt))}
				}
				delivered.Add(1)
				return nil
			})})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
		res, err := q.Enqueue(ctx, &queue.Message{Target: "https://partner.example/hook", Payload: []byte(`{"n":1}`)})
		if err != nil {
			t.Fatal(err)
		}
		var dead *queue.DeadMessage
		poll.Until(t, wait, func() bool {
			dead, err = q.Get(ctx, res[0].ID)
			return err == nil
		}, "message never reached the DLQ (%d calls)", calls.Load())
		if calls.Load() != 3 || dead.Attempts != 3 || len(dead.History) != 3 || dead.Reason != queue.ReasonMaxAttempts {
			t.Fatalf("calls %d, dead %+v", calls.Load(), dead)
		}
		for i, a := range dead.History {
			if a.N != i+1 || a.Status != 503 || string(a.Body) != fmt.Sprintf("attempt %d: upstream down", i+1) {
				t.Fatalf("attempt %d: %+v", i+1, a)
			}
		}
		fail.Store(false)
		if n, err := q.Replay(ctx, queue.DeadFilter{IDs: []string{res[0].ID}}); err != nil || n != 1 {
			t.Fatalf("Replay: %d, %v", n, err)
		}
		poll.Until(t, wait, func() bool { return delivered.Load() == 1 }, "replayed message not delivered")
		w.Stop()
		if delivered.Load() != 1 || calls.Load() != 4 {
			t.Fatalf("delivered %d times, %d calls; want once after 3 failures", delivered.Load(), calls.Load())
		}
	})
}

func TestOptions(t *testing.T) {
	if _, err := sqsqueue.New(nil, sqsqueue.Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	c := newClient(t, "http://127.0.0.1:1")
	for _, o := range []sqsqueue.Options{{ScanVisibility: time.Millisecond}, {ScanWait: time.Minute}} {
		if _, err := sqsqueue.New(c, o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	b, err := sqsqueue.New(c, sqsqueue.Options{Prefix: "x-"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Claim(ctx, queue.ClaimRequest{Queue: "orders.fifo", Limit: 1}); err == nil {
		t.Error("a FIFO queue was accepted")
	}
	_ = aws.String
}

// BenchmarkQueue runs the shared queue benchmarks on goaws (one process on
// 127.0.0.1, behind the JSON front): they measure the backend, the SDK and
// an emulator round trip, not SQS's latency.
//
//	go test -run '^$' -bench . -benchtime 2000x ./store/sqs/sqsqueue/
func BenchmarkQueue(b *testing.B) {
	endpoint := startGoaws(b, buildGoaws(b))
	c := newClient(b, endpoint)
	api := newFidelity(c) // target states (tags) are what goaws lacks
	queuetest.Bench(b, func(b *testing.B) queue.Backend {
		prefix := randomPrefix()
		createQueues(b, c, prefix, 30, 0, "bench")
		be, err := sqsqueue.New(api, sqsqueue.Options{Prefix: prefix})
		if err != nil {
			b.Fatal(err)
		}
		return be
	})
}
