// Package queuetest is the conformance suite every queue.Backend runs
// against its real service (river's riverdrivertest and watermill's Pub/Sub
// suite are the model). A backend's test calls Run with a Harness; the
// suite checks the Backend contract directly (claim order, leases and their
// expiry, token fencing, dedupe windows, per-target limits, disabled
// targets, the DLQ and its filters, requeue) and then the queue's
// guarantees on top of it: a target failing every time ends in the DLQ with
// every attempt's error, a replay delivers it once, a hanging target does
// not delay another's deliveries, a crashed worker's message is redelivered
// after its lease, and thousands of messages reach an idempotent receiver
// exactly once with none lost.
package queuetest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/fakeclock"
	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
)

// Harness tells the suite how to make backends.
type Harness struct {
	// NewBackend returns a fresh, empty backend private to the test (its
	// own file, schema or stream names) and cleans it up when t ends.
	NewBackend func(t testing.TB) queue.Backend
	// Reopen, when set, returns a second backend over the same storage as
	// b, as a second process would open it.
	Reopen func(t testing.TB, b queue.Backend) queue.Backend
	// Features lists what the backend lacks.
	Features Features
}

// Features declares optional behaviour; the zero value claims everything.
type Features struct {
	// NoDeadFilters: ListDead and DeleteDead support only Queue and IDs.
	NoDeadFilters bool
	// ServerClock: leases, backoff delays, dedupe windows and claim order
	// follow the service's own clock and publish order (NATS JetStream), not
	// the times passed in; the checks that move a fake clock are skipped
	// (the backend tests those itself, with real, short durations), and
	// OldestFirst takes age to be publish order. Also skipped, as before
	// ServerClock's skips were narrowed, since NATS does not meet them:
	// PerTargetExcludeDisabled (a message a claim passes over is handed back
	// with a delay on the service's clock, NATS's HandBackDelay, so the next
	// claim at the same instant does not see it) and Dedupe's "an id still
	// queued is a duplicate".
	ServerClock bool
	// NoCrossCallDedupe: a DedupeID (or a message ID still queued) is a
	// duplicate only within one Enqueue call, not across calls (SQS
	// standard queues keep no dedupe ids; consumers dedupe on the message
	// ID with queue.Idempotent). Dedupe checks dedupe within a call, then
	// skips the rest.
	NoCrossCallDedupe bool
}

// needsClock skips t when the backend runs on its service's clock.
func needsClock(t *testing.T, h Harness) {
	t.Helper()
	if h.Features.ServerClock {
		t.Skip("Features.ServerClock: the backend does not honour the times passed in")
	}
}

// wait bounds every wait of the suite.
const wait = 60 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	t.Run("Backend", func(t *testing.T) { runBackend(t, h) })
	t.Run("Queue", func(t *testing.T) { runQueue(t, h) })
}

func msg(q, id, target string) *queue.Message {
	return &queue.Message{ID: id, Queue: q, Target: target, Payload: []byte("payload-" + id),
		Headers: http.Header{"Content-Type": {"application/json"}}, EnqueuedAt: t0}
}

func ids(cs []queue.Claimed) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}

func runBackend(t *testing.T, h Harness) {
	ctx := context.Background()
	claim := func(t *testing.T, b queue.Backend, now time.Time, limit, per int, exclude ...string) []queue.Claimed {
		t.Helper()
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: now, LeaseUntil: now.Add(time.Minute), Limit: limit, PerTarget: per, Exclude: exclude})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		slices.SortFunc(cs, func(a, b queue.Claimed) int { return cmpStr(a.ID, b.ID) })
		return cs
	}
	enqueue := func(t *testing.T, b queue.Backend, ms ...*queue.Message) []queue.EnqueueResult {
		t.Helper()
		res, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: ms, Now: t0, DedupeUntil: t0.Add(time.Hour)})
		if err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
		return res
	}

	t.Run("EnqueueClaimAck", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		b := h.NewBackend(t)
		enqueue(t, b, msg("q", "a", "x"), msg("q", "b", "y"), msg("other", "c", "x"))
		if cs := claim(t, b, t0.Add(-time.Second), 10, 0); len(cs) != 0 {
			t.Fatalf("claimed %v before they were enqueued", ids(cs))
		}
		cs := claim(t, b, t0, 10, 0)
		if got := ids(cs); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("claimed %v, want [a b] (queue q only)", got)
		}
		c := cs[0]
		if c.Attempt != 1 || c.Target != "x" || string(c.Payload) != "payload-a" || c.Headers.Get("Content-Type") != "application/json" || !c.EnqueuedAt.Equal(t0) || c.Queue != "q" {
			t.Fatalf("claimed %+v: fields not kept", c)
		}
		if again := claim(t, b, t0, 10, 0); len(again) != 0 {
			t.Fatalf("leased messages claimed again: %v", ids(again))
		}
		if err := b.Ack(ctx, "q", "a", c.Token+1); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("Ack with a wrong token: %v, want ErrLeaseLost", err)
		}
		if err := b.Ack(ctx, "q", "a", c.Token); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		if err := b.Ack(ctx, "q", "a", c.Token); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("second Ack: %v, want ErrLeaseLost", err)
		}
		// b's lease lapses; a is gone for good.
		if got := ids(claim(t, b, t0.Add(2*time.Minute), 10, 0)); !slices.Equal(got, []string{"b"}) {
			t.Fatalf("after the lease: claimed %v, want [b]", got)
		}
	})

	t.Run("AckAndClaim", func(t *testing.T) {
		// The optional queue.AckClaimer: the acknowledgements take effect
		// as Ack's would, and the claim as Claim's, in one call.
		t.Parallel()
		needsClock(t, h)
		b := h.NewBackend(t)
		ac, ok := b.(queue.AckClaimer)
		if !ok {
			t.Skipf("%T is no queue.AckClaimer (optional)", b)
		}
		enqueue(t, b, msg("q", "a", "x"), msg("q", "b", "x"), msg("q", "c", "x"))
		first := claim(t, b, t0, 2, 0) // a, b
		if got := ids(first); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("claimed %v, want [a b]", got)
		}
		acks := []queue.AckRef{{Queue: "q", ID: "a", Token: first[0].Token}, {Queue: "q", ID: "b", Token: first[1].Token + 1}}
		errs, cs, err := ac.AckAndClaim(ctx, acks, queue.ClaimRequest{Queue: "q", Now: t0, LeaseUntil: t0.Add(time.Minute), Limit: 10})
		if err != nil || len(errs) != 2 || errs[0] != nil || !errors.Is(errs[1], queue.ErrLeaseLost) {
			t.Fatalf("AckAndClaim: acks %v, %v; want [nil ErrLeaseLost]", errs, err)
		}
		if got := ids(cs); !slices.Equal(got, []string{"c"}) {
			t.Fatalf("AckAndClaim claimed %v, want [c]", got)
		}
		// Only acknowledgements, no claim.
		if errs, cs, err := ac.AckAndClaim(ctx, []queue.AckRef{{Queue: "q", ID: "c", Token: cs[0].Token}}, queue.ClaimRequest{Queue: "q"}); err != nil || len(errs) != 1 || errs[0] != nil || len(cs) != 0 {
			t.Fatalf("acks alone: %v %v %v", errs, ids(cs), err)
		}
		// Once every lease lapsed, a and c are gone, and b (its ack held a
		// wrong token) comes back.
		if got := ids(claim(t, b, t0.Add(2*time.Minute), 10, 0)); !slices.Equal(got, []string{"b"}) {
			t.Fatalf("after the leases: claimed %v, want [b]", got)
		}
	})

	t.Run("OldestFirst", func(t *testing.T) {
		t.Parallel()
		b := h.NewBackend(t)
		for i := range 5 {
			m := msg("q", "m"+strconv.Itoa(i), "x")
			m.EnqueuedAt = t0.Add(time.Duration(5-i) * time.Second) // m4 oldest
			if h.Features.ServerClock {
				// Age is publish order: m4 and m3 published first.
				m = msg("q", "m"+strconv.Itoa(4-i), "x")
			}
			enqueue(t, b, m)
		}
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: t0.Add(time.Minute), LeaseUntil: t0.Add(2 * time.Minute), Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		got := ids(cs)
		slices.Sort(got)
		if !slices.Equal(got, []string{"m3", "m4"}) {
			t.Fatalf("claimed %v, want the two oldest [m3 m4]", got)
		}
	})

	t.Run("Dedupe", func(t *testing.T) {
		t.Parallel()
		b := h.NewBackend(t)
		m1, m2, m3 := msg("q", "1", "x"), msg("q", "2", "x"), msg("q", "3", "x")
		m1.DedupeID, m2.DedupeID, m3.DedupeID = "evt", "evt", "evt"
		res := enqueue(t, b, m1, m2)
		if res[0] != (queue.EnqueueResult{ID: "1"}) || res[1] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
			t.Fatalf("one call: %+v", res)
		}
		if h.Features.NoCrossCallDedupe {
			t.Skip("Features.NoCrossCallDedupe: dedupe within one call checked; across calls the backend keeps no dedupe ids")
		}
		res = enqueue(t, b, m3)
		if res[0] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
			t.Fatalf("second call: %+v", res)
		}
		// An id still queued is a duplicate too (skipped with ServerClock:
		// see its doc).
		needsClock(t, h)
		if res := enqueue(t, b, msg("q", "1", "x")); res[0] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
			t.Fatalf("same id again: %+v", res)
		}
		// The same dedupe id on another queue is another message.
		o := msg("other", "4", "x")
		o.DedupeID = "evt"
		if res := enqueue(t, b, o); res[0].Duplicate {
			t.Fatalf("other queue: %+v", res)
		}
		// Past the window the dedupe id is free again.
		m5 := msg("q", "5", "x")
		m5.DedupeID = "evt"
		late, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: []*queue.Message{m5}, Now: t0.Add(2 * time.Hour), DedupeUntil: t0.Add(3 * time.Hour)})
		if err != nil || late[0] != (queue.EnqueueResult{ID: "5"}) {
			t.Fatalf("after the window: %+v, %v", late, err)
		}
		if got := ids(claim(t, b, t0.Add(2*time.Hour), 10, 0)); !slices.Equal(got, []string{"1", "5"}) {
			t.Fatalf("stored %v, want [1 5]", got)
		}
	})

	t.Run("DedupeUntil", func(t *testing.T) {
		// A backend that says it keeps dedupe ids until each enqueue's
		// DedupeUntil (the gateway then makes the enqueue a webhook
		// route's only dedupe, for days) must keep them that long, and no
		// longer.
		t.Parallel()
		b := h.NewBackend(t)
		if !queue.HonorsDedupeUntil(b) {
			t.Skip("the backend does not implement queue.DedupeUntil")
		}
		needsClock(t, h)
		at := func(id string, now time.Duration) queue.EnqueueResult {
			t.Helper()
			m := msg("q", id, "x")
			m.DedupeID = "evt-days"
			res, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: []*queue.Message{m}, Now: t0.Add(now), DedupeUntil: t0.Add(now + 72*time.Hour)})
			if err != nil {
				t.Fatalf("enqueue %s: %v", id, err)
			}
			return res[0]
		}
		if r := at("d1", 0); r != (queue.EnqueueResult{ID: "d1"}) {
			t.Fatalf("first: %+v", r)
		}
		if r := at("d2", 71*time.Hour); r != (queue.EnqueueResult{ID: "d1", Duplicate: true}) {
			t.Fatalf("71h later, inside the 72h asked: %+v, want a duplicate of d1", r)
		}
		if r := at("d3", 73*time.Hour); r != (queue.EnqueueResult{ID: "d3"}) {
			t.Fatalf("73h later, past the 72h asked: %+v, want stored", r)
		}
	})

	t.Run("LeaseExpiryAndFencing", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		b := h.NewBackend(t)
		enqueue(t, b, msg("q", "a", "x"))
		first := claim(t, b, t0, 1, 0)
		if len(first) != 1 {
			t.Fatal("nothing claimed")
		}
		if cs := claim(t, b, t0.Add(59*time.Second), 1, 0); len(cs) != 0 {
			t.Fatal("claimed during the lease")
		}
		second := claim(t, b, t0.Add(61*time.Second), 1, 0)
		if len(second) != 1 || second[0].Attempt != 2 || second[0].Token == first[0].Token {
			t.Fatalf("after the lease: %+v, want attempt 2 with a new token", second)
		}
		// The first (crashed) holder's late writes change nothing.
		if err := b.Ack(ctx, "q", "a", first[0].Token); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("stale Ack: %v", err)
		}
		if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: first[0].Token, Attempts: 1, AvailableAt: t0}); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("stale Nack: %v", err)
		}
		if err := b.Bury(ctx, queue.Burial{Queue: "q", ID: "a", Token: first[0].Token, Attempts: 1, Reason: queue.ReasonPermanent, At: t0}); !errors.Is(err, queue.ErrLeaseLost) {
			t.Fatalf("stale Bury: %v", err)
		}
		if err := b.Ack(ctx, "q", "a", second[0].Token); err != nil {
			t.Fatalf("Ack by the new holder: %v", err)
		}
	})

	t.Run("NackKeepsHistory", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		b := h.NewBackend(t)
		enqueue(t, b, msg("q", "a", "x"))
		c := claim(t, b, t0, 1, 0)[0]
		hist := []queue.Attempt{{N: 1, StartedAt: t0, FailedAt: t0.Add(time.Second), Error: "boom", Status: 503, Body: []byte("down")}}
		if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: c.Token, Attempts: 1, History: hist, AvailableAt: t0.Add(10 * time.Second)}); err != nil {
			t.Fatalf("Nack: %v", err)
		}
		if cs := claim(t, b, t0.Add(9*time.Second), 1, 0); len(cs) != 0 {
			t.Fatal("claimed while in backoff")
		}
		again := claim(t, b, t0.Add(10*time.Second), 1, 0)
		if len(again) != 1 || again[0].Attempt != 2 || len(again[0].History) != 1 {
			t.Fatalf("after backoff: %+v", again)
		}
		a := again[0].History[0]
		if a.Error != "boom" || a.Status != 503 || string(a.Body) != "down" || !a.FailedAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("history not kept: %+v", a)
		}
	})

	t.Run("BackoffDoesNotBlockOthers", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		b := h.NewBackend(t)
		enqueue(t, b, msg("q", "a", "x"))
		c := claim(t, b, t0, 1, 0)[0]
		if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: c.Token, Attempts: 1, AvailableAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		enqueue(t, b, msg("q", "b", "x"))
		if got := ids(claim(t, b, t0.Add(time.Second), 1, 0)); !slices.Equal(got, []string{"b"}) {
			t.Fatalf("claimed %v, want [b] past a in backoff", got)
		}
	})

	t.Run("PerTargetExcludeDisabled", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		b := h.NewBackend(t)
		for i := range 5 {
			enqueue(t, b, msg("q", "x"+strconv.Itoa(i), "x"))
		}
		enqueue(t, b, msg("q", "y0", "y"), msg("q", "z0", "z"))
		cs := claim(t, b, t0, 10, 2)
		if got := ids(cs); !slices.Equal(got, []string{"x0", "x1", "y0", "z0"}) {
			t.Fatalf("PerTarget 2: claimed %v, want [x0 x1 y0 z0]", got)
		}
		enqueue(t, b, msg("q", "y1", "y"), msg("q", "w0", "w"))
		if got := ids(claim(t, b, t0, 10, 0, "x", "y")); !slices.Equal(got, []string{"w0"}) {
			t.Fatalf("Exclude x,y: claimed %v, want [w0]", got)
		}
		if err := b.SetTarget(ctx, queue.TargetState{Queue: "q", Target: "y", Disabled: true, Reason: "410 Gone", Since: t0}); err != nil {
			t.Fatal(err)
		}
		if got := ids(claim(t, b, t0, 10, 0)); !slices.Equal(got, []string{"x2", "x3", "x4"}) {
			t.Fatalf("y disabled: claimed %v, want [x2 x3 x4]", got)
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
		b := h.NewBackend(t)
		bury := func(id, target string, reason queue.Reason, at time.Time) {
			t.Helper()
			enqueue(t, b, msg("q", id, target))
			c := claim(t, b, t0.Add(time.Hour), 1, 0)[0]
			if c.ID != id {
				t.Fatalf("claimed %s, want %s", c.ID, id)
			}
			hist := []queue.Attempt{
				{N: 1, StartedAt: at.Add(-2 * time.Minute), FailedAt: at.Add(-time.Minute), Error: "e1", Status: 500, Body: []byte("b1")},
				{N: 2, StartedAt: at.Add(-time.Second), FailedAt: at, Error: "e2"},
			}
			if err := b.Bury(ctx, queue.Burial{Queue: "q", ID: id, Token: c.Token, Attempts: 2, History: hist, Reason: reason, At: at}); err != nil {
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
		if got := list(queue.DeadFilter{}); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("all: %v", got)
		}
		if got := list(queue.DeadFilter{Limit: 2}); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("limit 2: %v", got)
		}
		all, _ := b.ListDead(ctx, queue.DeadFilter{Queue: "q"})
		if got := list(queue.DeadFilter{AfterSeq: all[0].Seq}); !slices.Equal(got, []string{"b", "c"}) {
			t.Fatalf("after a: %v", got)
		}
		if got := list(queue.DeadFilter{IDs: []string{"c", "a"}}); !slices.Equal(got, []string{"a", "c"}) {
			t.Fatalf("ids: %v", got)
		}
		if !h.Features.NoDeadFilters {
			if got := list(queue.DeadFilter{Target: "x"}); !slices.Equal(got, []string{"a", "c"}) {
				t.Fatalf("target x: %v", got)
			}
			if got := list(queue.DeadFilter{Reason: queue.ReasonTargetGone}); !slices.Equal(got, []string{"b"}) {
				t.Fatalf("reason: %v", got)
			}
			if got := list(queue.DeadFilter{DeadBefore: t0.Add(2 * time.Minute)}); !slices.Equal(got, []string{"a"}) {
				t.Fatalf("dead before: %v", got)
			}
			if got := list(queue.DeadFilter{DeadAfter: t0.Add(2 * time.Minute)}); !slices.Equal(got, []string{"c"}) {
				t.Fatalf("dead after: %v", got)
			}
		}
		// Requeue keeps the id, resets attempts and history.
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
		f := queue.DeadFilter{Queue: "q", IDs: []string{"b"}}
		if !h.Features.NoDeadFilters {
			f = queue.DeadFilter{Queue: "q", Target: "y"}
		}
		if n, err := b.DeleteDead(ctx, f); err != nil || n != 1 {
			t.Fatalf("DeleteDead(%+v): %d, %v", f, n, err)
		}
		if got := list(queue.DeadFilter{}); !slices.Equal(got, []string{"c"}) {
			t.Fatalf("after purge: %v", got)
		}
		if n, err := b.DeleteDead(ctx, queue.DeadFilter{Queue: "q"}); err != nil || n != 1 {
			t.Fatalf("DeleteDead(all): %d, %v", n, err)
		}
	})

	if h.Reopen != nil {
		t.Run("SharedAcrossBackends", func(t *testing.T) {
			t.Parallel()
			b := h.NewBackend(t)
			b2 := h.Reopen(t, b)
			enqueue(t, b, msg("q", "a", "x"))
			cs := claim(t, b2, t0, 10, 0)
			if len(cs) != 1 || cs[0].ID != "a" {
				t.Fatalf("second backend claimed %v", ids(cs))
			}
			if more := claim(t, b, t0, 10, 0); len(more) != 0 {
				t.Fatalf("first backend claimed a leased message: %v", ids(more))
			}
		})
	}
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// newQueue makes a Queue over b with a fake clock.
func newQueue(t testing.TB, b queue.Backend, clock *fakeclock.Clock) *queue.Queue {
	t.Helper()
	q, err := queue.New(b, queue.Config{Name: "q", Now: clock.Now, ReplayRate: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// start starts a worker and stops it when t ends.
func start(t testing.TB, q *queue.Queue, cfg queue.WorkerConfig) *queue.Worker {
	t.Helper()
	if cfg.Jitter == nil {
		cfg.Jitter = func(time.Duration) time.Duration { return 0 }
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	w, err := q.NewWorker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w
}

func runQueue(t *testing.T, h Harness) {
	ctx := context.Background()

	t.Run("FailingTargetToDLQThenReplayOnce", func(t *testing.T) {
		t.Parallel()
		clock := fakeclock.New(t0)
		q := newQueue(t, h.NewBackend(t), clock)
		var fail atomic.Bool
		fail.Store(true)
		var calls, delivered atomic.Int32
		w := start(t, q, queue.WorkerConfig{MaxAttempts: 3, Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			calls.Add(1)
			if fail.Load() {
				clock.Advance(time.Second)
				return &queue.HTTPError{Status: 503, Body: []byte(fmt.Sprintf("attempt %d: upstream down %0600d", d.Attempt, 0))}
			}
			delivered.Add(1)
			return nil
		})})
		res, err := q.Enqueue(ctx, &queue.Message{Target: "https://partner.example/hook", Payload: []byte(`{"n":1}`), Headers: http.Header{"X-Trace": {"t1"}}})
		if err != nil {
			t.Fatal(err)
		}
		id := res[0].ID
		var dead *queue.DeadMessage
		poll.Until(t, wait, func() bool {
			dead, err = q.Get(ctx, id)
			return err == nil
		}, "message never reached the DLQ (%d calls)", calls.Load())
		if calls.Load() != 3 || dead.Attempts != 3 || len(dead.History) != 3 || dead.Reason != queue.ReasonMaxAttempts {
			t.Fatalf("calls %d, dead %+v", calls.Load(), dead)
		}
		for i, a := range dead.History {
			want := fmt.Sprintf("attempt %d: upstream down", i+1)
			if a.N != i+1 || a.Status != 503 || len(a.Body) != queue.MaxBodyBytes || string(a.Body[:len(want)]) != want || a.Error == "" {
				t.Fatalf("attempt %d: %+v", i+1, a)
			}
		}
		if string(dead.Payload) != `{"n":1}` || dead.Headers.Get("X-Trace") != "t1" || dead.Target != "https://partner.example/hook" ||
			!dead.FirstFailure.Equal(dead.History[0].FailedAt) || !dead.LastFailure.Equal(dead.History[2].FailedAt) || !dead.FirstFailure.Before(dead.LastFailure) {
			t.Fatalf("dead message: %+v", dead)
		}
		page, err := q.List(ctx, queue.DeadFilter{})
		if err != nil || len(page.Messages) != 1 || page.Messages[0].ID != id || page.Next != 0 {
			t.Fatalf("List: %+v, %v", page, err)
		}

		fail.Store(false)
		n, err := q.Replay(ctx, queue.DeadFilter{IDs: []string{id}})
		if err != nil || n != 1 {
			t.Fatalf("Replay: %d, %v", n, err)
		}
		poll.Until(t, wait, func() bool { return delivered.Load() == 1 }, "replayed message not delivered")
		w.Stop() // every outcome recorded
		if delivered.Load() != 1 || calls.Load() != 4 {
			t.Fatalf("delivered %d times, %d calls; want once after 3 failures", delivered.Load(), calls.Load())
		}
		if _, err := q.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("replayed message still dead: %v", err)
		}
	})

	t.Run("ReplayOldestFirstRateLimitedOneAtATime", func(t *testing.T) {
		t.Parallel()
		clock := fakeclock.New(t0)
		b := h.NewBackend(t)
		q := newQueue(t, b, clock)
		var mu sync.Mutex
		var order []string
		var failing atomic.Bool
		failing.Store(true)
		w := start(t, q, queue.WorkerConfig{MaxAttempts: 1, Concurrency: 1, Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			if failing.Load() {
				return queue.Permanent(errors.New("bad request"))
			}
			mu.Lock()
			order = append(order, string(d.Payload))
			mu.Unlock()
			return nil
		})})
		for i := range 5 {
			if _, err := q.Enqueue(ctx, &queue.Message{Payload: []byte(strconv.Itoa(i))}); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, wait, func() bool {
				p, err := q.List(ctx, queue.DeadFilter{})
				return err == nil && len(p.Messages) == i+1
			}, "message %d not dead", i)
			clock.Advance(time.Second)
		}
		w.Stop()
		p, _ := q.List(ctx, queue.DeadFilter{Limit: 2})
		if len(p.Messages) != 2 || p.Next == 0 || p.Messages[0].Reason != queue.ReasonPermanent {
			t.Fatalf("page 1: %+v", p)
		}
		p2, _ := q.List(ctx, queue.DeadFilter{Limit: 2, AfterSeq: p.Next})
		if len(p2.Messages) != 2 || p2.Messages[0].ID == p.Messages[1].ID {
			t.Fatalf("page 2: %+v", p2)
		}
		// A slow replay holds the queue's replay slot.
		slow, err := queue.New(b, queue.Config{Name: "q", Now: clock.Now, ReplayRate: 1})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan int, 1)
		go func() {
			n, _ := slow.Replay(rctx, queue.DeadFilter{})
			done <- n
		}()
		poll.Until(t, wait, func() bool {
			p, err := q.List(ctx, queue.DeadFilter{})
			return err == nil && len(p.Messages) == 4
		}, "the slow replay moved nothing")
		if _, err := slow.Replay(ctx, queue.DeadFilter{}); !errors.Is(err, queue.ErrReplayRunning) {
			t.Fatalf("a second replay while one runs: %v, want ErrReplayRunning", err)
		}
		cancel()
		moved := <-done
		if moved < 1 || moved > 4 {
			t.Fatalf("rate-limited replay (1/s, burst 1) moved %d of 5 before being canceled", moved)
		}
		failing.Store(false)
		n, err := q.Replay(ctx, queue.DeadFilter{})
		if err != nil || n != 5-moved {
			t.Fatalf("Replay(all): %d, %v", n, err)
		}
		start(t, q, queue.WorkerConfig{Concurrency: 1, Handler: w2handler(&mu, &order)})
		poll.Until(t, wait, func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 5 }, "replayed messages not delivered")
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(order, []string{"0", "1", "2", "3", "4"}) {
			t.Fatalf("delivery order %v: the replay was not oldest first", order)
		}
	})

	t.Run("HangingTargetDoesNotDelayOthers", func(t *testing.T) {
		t.Parallel()
		q := newQueue(t, h.NewBackend(t), fakeclock.New(t0))
		release := make(chan struct{})
		var hanging, fast atomic.Int32
		start(t, q, queue.WorkerConfig{Concurrency: 4, MaxPerTarget: 2, AttemptTimeout: time.Hour, Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			if d.Target == "hangs" {
				hanging.Add(1)
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			fast.Add(1)
			return nil
		})})
		// A backlog larger than one claim's candidate scan.
		var backlog []*queue.Message
		for i := range 300 {
			backlog = append(backlog, &queue.Message{Target: "hangs", Payload: []byte(strconv.Itoa(i))})
		}
		if _, err := q.Enqueue(ctx, backlog...); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, wait, func() bool { return hanging.Load() == 2 }, "hanging target did not get its 2 slots")
		for i := range 50 {
			if _, err := q.Enqueue(ctx, &queue.Message{Target: "ok-" + strconv.Itoa(i%3)}); err != nil {
				t.Fatal(err)
			}
		}
		poll.Until(t, wait, func() bool { return fast.Load() == 50 }, "other targets' deliveries were held up: %d of 50", fast.Load())
		if n := hanging.Load(); n != 2 {
			t.Fatalf("the hanging target took %d slots, want MaxPerTarget 2", n)
		}
		close(release)
		poll.Until(t, wait, func() bool { return hanging.Load() == 300 }, "hanging target's messages not delivered after it recovered")
	})

	t.Run("TargetGoneDisabled", func(t *testing.T) {
		t.Parallel()
		q := newQueue(t, h.NewBackend(t), fakeclock.New(t0))
		var gone atomic.Bool
		gone.Store(true)
		var delivered atomic.Int32
		disabled := make(chan string, 1)
		start(t, q, queue.WorkerConfig{Concurrency: 1, OnTargetDisabled: func(target string, err error) { disabled <- target },
			Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
				if d.Target == "old" && gone.Load() {
					return &queue.HTTPError{Status: http.StatusGone, Body: []byte("endpoint removed")}
				}
				delivered.Add(1)
				return nil
			})})
		res, err := q.Enqueue(ctx, &queue.Message{Target: "old"})
		if err != nil {
			t.Fatal(err)
		}
		if got := <-disabled; got != "old" {
			t.Fatalf("disabled %q", got)
		}
		if _, err := q.Enqueue(ctx, &queue.Message{Target: "old"}, &queue.Message{Target: "new"}); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, wait, func() bool { return delivered.Load() == 1 }, "other target not delivered")
		d, err := q.Get(ctx, res[0].ID)
		if err != nil || d.Reason != queue.ReasonTargetGone || d.History[0].Status != 410 || len(d.History) != 1 {
			t.Fatalf("dead: %+v, %v", d, err)
		}
		ts, err := q.Targets(ctx)
		if err != nil || len(ts) != 1 || !ts[0].Disabled || ts[0].Target != "old" {
			t.Fatalf("Targets: %+v, %v", ts, err)
		}
		gone.Store(false)
		if err := q.EnableTarget(ctx, "old"); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, wait, func() bool { return delivered.Load() == 2 }, "waiting message of the re-enabled target not delivered")
	})

	t.Run("RetryAfterHonouredAndCapped", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		clock := fakeclock.New(t0)
		b := h.NewBackend(t)
		q := newQueue(t, b, clock)
		attempts := make(chan int, 10)
		w := start(t, q, queue.WorkerConfig{MaxRetryAfter: time.Minute, Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			attempts <- d.Attempt
			if d.Attempt == 1 {
				return &queue.HTTPError{Status: 429, RetryAfter: time.Hour}
			}
			return nil
		})})
		if _, err := q.Enqueue(ctx, &queue.Message{}); err != nil {
			t.Fatal(err)
		}
		if a := <-attempts; a != 1 {
			t.Fatalf("attempt %d", a)
		}
		w.Stop()
		// Capped at a minute: not available a second before, available at it.
		if cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: t0.Add(59 * time.Second), LeaseUntil: t0.Add(time.Hour), Limit: 1}); err != nil || len(cs) != 0 {
			t.Fatalf("available before the capped Retry-After: %v, %v", len(cs), err)
		}
		clock.Advance(time.Minute)
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if a := <-attempts; a != 2 {
			t.Fatalf("attempt %d, want 2", a)
		}
	})

	t.Run("CrashedWorkerRedeliveredAfterLease", func(t *testing.T) {
		t.Parallel()
		needsClock(t, h)
		clock := fakeclock.New(t0)
		b := h.NewBackend(t)
		q := newQueue(t, b, clock)
		if _, err := q.Enqueue(ctx, &queue.Message{ID: "m1", Target: "x"}); err != nil {
			t.Fatal(err)
		}
		// A worker claims it and dies: no ack, no nack, only the lease.
		crashed, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: clock.Now(), LeaseUntil: clock.Now().Add(time.Minute), Limit: 10})
		if err != nil || len(crashed) != 1 {
			t.Fatalf("crashed worker's claim: %v, %v", crashed, err)
		}
		b2 := b
		if h.Reopen != nil {
			b2 = h.Reopen(t, b) // the second worker is another process
		}
		q2 := newQueue(t, b2, clock)
		got := make(chan *queue.Delivery, 2)
		// Jitter keeps the whole backoff: the failed redelivery waits for
		// a clock that does not move, so it is attempted exactly once
		// before Stop (with no backoff it was retried at once, as often as
		// the worker managed before Stop, and the history below varied).
		w := start(t, q2, queue.WorkerConfig{Lease: time.Minute, AttemptTimeout: 30 * time.Second,
			Jitter: func(d time.Duration) time.Duration { return d },
			Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
				got <- d
				return errors.New("still failing")
			})})
		select {
		case d := <-got:
			t.Fatalf("delivered during the crashed worker's lease: %+v", d)
		case <-time.After(50 * time.Millisecond): // a few polls; absence cannot be awaited
		}
		clock.Advance(time.Minute)
		d := <-got
		if d.ID != "m1" || d.Attempt != 2 {
			t.Fatalf("redelivered %+v, want m1 attempt 2", d)
		}
		w.Stop()
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: clock.Now().Add(time.Hour), LeaseUntil: clock.Now().Add(2 * time.Hour), Limit: 1})
		if err != nil || len(cs) != 1 || len(cs[0].History) != 2 || cs[0].History[0].N != 1 || cs[0].History[1].Error != "still failing" {
			t.Fatalf("history after a lost lease: %+v, %v", cs, err)
		}
		if cs[0].History[0].Error == "" {
			t.Fatal("the lost attempt has no error recorded")
		}
	})

	t.Run("DeferIsNotAnAttempt", func(t *testing.T) {
		t.Parallel()
		clock := fakeclock.New(t0)
		q := newQueue(t, h.NewBackend(t), clock)
		// "ok" is deferred three times, then delivered; "dies" alternates a
		// deferral and a real failure. With MaxAttempts 2 a counted
		// deferral would dead-letter "ok" and give "dies" a short history.
		script := map[string][]string{"ok": {"defer", "defer", "defer", "ok"}, "dies": {"defer", "fail", "defer", "fail"}}
		var mu sync.Mutex
		calls := map[string][]int{} // attempt numbers seen, by id
		firstDelay := time.Minute
		if h.Features.ServerClock {
			firstDelay = 0 // the delay runs on the service's clock
		}
		// A lease far beyond the minute the clock moves, which must not
		// expire a claim in flight.
		start(t, q, queue.WorkerConfig{MaxAttempts: 2, Lease: time.Hour, Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			mu.Lock()
			n := len(calls[d.ID])
			calls[d.ID] = append(calls[d.ID], d.Attempt)
			mu.Unlock()
			if n >= len(script[d.ID]) {
				return queue.Permanent(fmt.Errorf("call %d of %s: more than scripted", n+1, d.ID))
			}
			switch script[d.ID][n] {
			case "defer":
				delay := time.Duration(0)
				if d.ID == "ok" && n == 0 {
					delay = firstDelay
				}
				return queue.Defer(delay, errors.New("circuit breaker open: not sent"))
			case "fail":
				return errors.New("boom")
			}
			return nil
		})})
		if _, err := q.Enqueue(ctx, &queue.Message{ID: "ok", Target: "a"}, &queue.Message{ID: "dies", Target: "b"}); err != nil {
			t.Fatal(err)
		}
		seen := func(id string) []int {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(calls[id])
		}
		if !h.Features.ServerClock {
			poll.Until(t, wait, func() bool { return len(seen("ok")) >= 1 }, "ok never delivered")
			time.Sleep(50 * time.Millisecond) // a few polls; absence cannot be awaited
			if got := seen("ok"); len(got) != 1 {
				t.Fatalf("deferred by a minute, delivered again at once: attempts %v", got)
			}
			clock.Advance(time.Minute)
		}
		var dead *queue.DeadMessage
		if !poll.Wait(wait, func() bool {
			var err error
			dead, err = q.Get(ctx, "dies")
			return err == nil && len(seen("ok")) == 4
		}) {
			_, okErr := q.Get(ctx, "ok")
			_, diesErr := q.Get(ctx, "dies")
			t.Fatalf("after %v: ok delivered as attempts %v (in the DLQ: %v), dies as %v (in the DLQ: %v); want ok delivered 4 times, dies dead",
				wait, seen("ok"), okErr == nil, seen("dies"), diesErr == nil)
		}
		if got := seen("ok"); !slices.Equal(got, []int{1, 1, 1, 1}) {
			t.Fatalf("ok delivered as attempts %v, want [1 1 1 1] (a deferral is not an attempt)", got)
		}
		if got := seen("dies"); !slices.Equal(got, []int{1, 1, 2, 2}) {
			t.Fatalf("dies delivered as attempts %v, want [1 1 2 2]", got)
		}
		if dead.Attempts != 2 || len(dead.History) != 2 || dead.History[0].Error != "boom" || dead.History[1].Error != "boom" || dead.Reason != queue.ReasonMaxAttempts {
			t.Fatalf("dead %+v: want the two real attempts only, no deferral", dead)
		}
		if _, err := q.Get(ctx, "ok"); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("ok in the DLQ (%v): its deferrals were counted", err)
		}
	})

	t.Run("StopReleasesInFlightUncounted", func(t *testing.T) {
		t.Parallel()
		q := newQueue(t, h.NewBackend(t), fakeclock.New(t0))
		entered := make(chan int, 4)
		w := start(t, q, queue.WorkerConfig{Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			entered <- d.Attempt
			<-ctx.Done()
			return ctx.Err()
		})})
		if _, err := q.Enqueue(ctx, &queue.Message{}); err != nil {
			t.Fatal(err)
		}
		if a := <-entered; a != 1 {
			t.Fatalf("attempt %d", a)
		}
		w.Stop()
		w.Stop() // idempotent
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-entered:
			if a != 1 {
				t.Fatalf("after Stop and Start: attempt %d, want 1 again (a stop is not an attempt)", a)
			}
		case <-time.After(wait):
			t.Fatalf("after Stop and Start: not delivered again within %v (the stopped delivery was not released)", wait)
		}
	})

	t.Run("ThousandsExactlyOnceToIdempotentReceiver", func(t *testing.T) {
		t.Parallel()
		n := 3000
		if raceEnabled {
			n = 600
		}
		b := h.NewBackend(t)
		q1 := newQueue(t, b, fakeclock.New(t0))
		q2 := q1
		if h.Reopen != nil {
			q2 = newQueue(t, h.Reopen(t, b), fakeclock.New(t0))
		}
		rcv := &receiver{seen: map[string]int{}}
		var flaky atomic.Int64
		handler := queue.Idempotent(rcv, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			if flaky.Add(1)%7 == 0 {
				return errors.New("transient") // a failure never marks processed
			}
			rcv.process(d.ID)
			return nil
		}))
		for _, q := range []*queue.Queue{q1, q2} {
			start(t, q, queue.WorkerConfig{Concurrency: 8, MaxPerTarget: 8, MaxAttempts: 100, Handler: handler})
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				q := q1
				if g%2 == 1 {
					q = q2
				}
				// Batches of up to 10, every tenth message sent twice (a
				// producer's retry of the same id).
				var batch []*queue.Message
				for i := g; i < n; i += 8 {
					m := &queue.Message{ID: "msg-" + strconv.Itoa(i), Target: "t" + strconv.Itoa(i%4)}
					batch = append(batch, m)
					if i%10 == 0 {
						batch = append(batch, &queue.Message{ID: m.ID, Target: m.Target})
					}
					if len(batch) >= 10 || i+8 >= n {
						if _, err := q.Enqueue(ctx, batch...); err != nil {
							errs <- err
							return
						}
						batch = nil
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("Enqueue: %v", err)
		}
		poll.Until(t, 3*wait, func() bool { return rcv.count() == n }, "processed %d of %d", rcv.count(), n)
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		for id, c := range rcv.seen {
			if c != 1 {
				t.Fatalf("%s processed %d times", id, c)
			}
		}
	})
}

func w2handler(mu *sync.Mutex, order *[]string) queue.Handler {
	return queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
		mu.Lock()
		*order = append(*order, string(d.Payload))
		mu.Unlock()
		return nil
	})
}

// receiver is an idempotent receiver's bookkeeping, with the Deduper
// contract implemented in memory (the real one is the idempotency engine).
type receiver struct {
	mu       sync.Mutex
	seen     map[string]int
	state    sync.Map // key -> "busy" | "done"
	begunMu  sync.Mutex
	inFlight map[string]bool
}

func (r *receiver) process(id string) {
	r.mu.Lock()
	r.seen[id]++
	r.mu.Unlock()
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// Begin implements queue.Deduper.
func (r *receiver) Begin(ctx context.Context, key string) (queue.Finish, error) {
	r.begunMu.Lock()
	defer r.begunMu.Unlock()
	if r.inFlight == nil {
		r.inFlight = map[string]bool{}
	}
	if v, ok := r.state.Load(key); ok && v == "done" {
		return nil, queue.ErrProcessed
	}
	if r.inFlight[key] {
		return nil, queue.ErrInProgress
	}
	r.inFlight[key] = true
	return func(ctx context.Context, herr error) error {
		r.begunMu.Lock()
		defer r.begunMu.Unlock()
		delete(r.inFlight, key)
		if herr == nil {
			r.state.Store(key, "done")
		}
		return nil
	}, nil
}
