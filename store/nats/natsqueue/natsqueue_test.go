package natsqueue_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/queue/queuetest"
	"github.com/leveehq/levee/store/nats/natsqueue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func natsURL() string {
	if u := os.Getenv("LEVEE_NATS_URL"); u != "" {
		return u
	}
	return nats.DefaultURL
}

// connect opens a connection (a "process") closed when t ends. An
// unreachable server fails the test under CI=true and skips it otherwise.
func connect(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL(), nats.Timeout(3*time.Second), nats.MaxReconnects(0))
	var js jetstream.JetStream
	if err == nil {
		js, err = jetstream.New(nc)
	}
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = js.AccountInfo(ctx)
		cancel()
	}
	if err != nil {
		if nc != nil {
			nc.Close()
		}
		msg := fmt.Sprintf("NATS JetStream is not reachable at %s (set LEVEE_NATS_URL): %v", natsURL(), err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(nc.Close)
	return js
}

// newBackend returns a backend on streams and buckets of its own (a random
// prefix), deleted (those only) when t ends.
func newBackend(t testing.TB, opts natsqueue.Options) *natsqueue.Backend {
	t.Helper()
	js := connect(t)
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	if opts.Prefix == "" {
		opts.Prefix = "LEVEE_QTEST_" + hex.EncodeToString(rb[:])
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := natsqueue.Destroy(ctx, js, opts.Prefix); err != nil {
			t.Errorf("destroy %s: %v", opts.Prefix, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := natsqueue.New(ctx, js, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// reopen is a second process (its own connection) on b's prefix.
func reopen(t testing.TB, b *natsqueue.Backend, opts natsqueue.Options) *natsqueue.Backend {
	t.Helper()
	opts.Prefix = b.Prefix()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := natsqueue.New(ctx, connect(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestConformance(t *testing.T) {
	queuetest.Run(t, queuetest.Harness{
		NewBackend: func(t testing.TB) queue.Backend { return newBackend(t, natsqueue.Options{}) },
		Reopen: func(t testing.TB, b queue.Backend) queue.Backend {
			return reopen(t, b.(*natsqueue.Backend), natsqueue.Options{})
		},
		Features: queuetest.Features{ServerClock: true},
	})
}

var ctx = context.Background()

func enqueue(t *testing.T, b queue.Backend, ms ...*queue.Message) []queue.EnqueueResult {
	t.Helper()
	for _, m := range ms {
		m.Queue = "q"
		m.EnqueuedAt = time.Now()
	}
	res, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: ms, Now: time.Now()})
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return res
}

// claimAll polls until n messages are claimed (or fails after 10s).
func claimAll(t *testing.T, b queue.Backend, n int, per int, exclude ...string) []queue.Claimed {
	t.Helper()
	var got []queue.Claimed
	poll.Until(t, 10*time.Second, func() bool {
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Limit: n - len(got), PerTarget: per, Exclude: exclude})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		got = append(got, cs...)
		return len(got) >= n
	}, "claimed %d of %d", len(got), n)
	return got
}

func noClaim(t *testing.T, b queue.Backend, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Limit: 10})
		if err != nil || len(cs) != 0 {
			t.Fatalf("claimed %d (%v), want none yet", len(cs), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLeaseIsAckWait: the real-clock counterpart of the suite's lease
// checks. An unsettled claim comes back after AckWait as attempt 2 with a
// new token, and the first holder's late writes are refused.
func TestLeaseIsAckWait(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{AckWait: time.Second})
	enqueue(t, b, &queue.Message{ID: "a", Target: "x", Payload: []byte("p")})
	first := claimAll(t, b, 1, 0)[0]
	if first.Attempt != 1 || string(first.Payload) != "p" || first.Target != "x" {
		t.Fatalf("first claim %+v", first)
	}
	noClaim(t, b, 700*time.Millisecond)
	second := claimAll(t, b, 1, 0)[0]
	if second.ID != "a" || second.Attempt != 2 || second.Token == first.Token {
		t.Fatalf("after AckWait: %+v, want a attempt 2 with a new token", second)
	}
	if err := b.Ack(ctx, "q", "a", first.Token); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("stale Ack: %v", err)
	}
	if err := b.Bury(ctx, queue.Burial{Queue: "q", ID: "a", Token: first.Token}); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("stale Bury: %v", err)
	}
	if err := b.Ack(ctx, "q", "a", second.Token); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := b.Ack(ctx, "q", "a", second.Token); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("second Ack: %v", err)
	}
	noClaim(t, b, 1500*time.Millisecond) // acked: not redelivered after AckWait
}

// TestNackDelayAndHistory: a Nack is a NakWithDelay until AvailableAt; the
// next claim is attempt 2 with the history; another message is not held up.
func TestNackDelayAndHistory(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{})
	enqueue(t, b, &queue.Message{ID: "a"})
	c := claimAll(t, b, 1, 0)[0]
	hist := []queue.Attempt{{N: 1, StartedAt: time.Now(), FailedAt: time.Now(), Error: "boom", Status: 503, Body: []byte("down")}}
	if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: c.Token, Attempts: 1, History: hist, AvailableAt: time.Now().Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, b, &queue.Message{ID: "b"})
	if got := claimAll(t, b, 1, 0); got[0].ID != "b" {
		t.Fatalf("claimed %s, want b past a in backoff", got[0].ID)
	}
	noClaim(t, b, 500*time.Millisecond)
	again := claimAll(t, b, 1, 0)[0]
	if again.ID != "a" || again.Attempt != 2 || len(again.History) != 1 || again.History[0].Error != "boom" || string(again.History[0].Body) != "down" {
		t.Fatalf("after the delay: %+v", again)
	}
	// A hand-back (Attempts unchanged) is not counted.
	if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: again.Token, Attempts: 1, History: again.History}); err != nil {
		t.Fatal(err)
	}
	if third := claimAll(t, b, 1, 0)[0]; third.Attempt != 2 {
		t.Fatalf("after a hand-back: attempt %d, want 2", third.Attempt)
	}
}

// TestDedupeFirstID: duplicates report the first message's id, also when
// the first was already delivered and acknowledged; a re-sent id is a
// duplicate; another queue is another namespace.
func TestDedupeFirstID(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{})
	res := enqueue(t, b, &queue.Message{ID: "1", DedupeID: "evt"}, &queue.Message{ID: "2", DedupeID: "evt"})
	if res[0] != (queue.EnqueueResult{ID: "1"}) || res[1] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
		t.Fatalf("one call: %+v", res)
	}
	c := claimAll(t, b, 1, 0)[0]
	if err := b.Ack(ctx, "q", c.ID, c.Token); err != nil {
		t.Fatal(err)
	}
	if res := enqueue(t, b, &queue.Message{ID: "3", DedupeID: "evt"}); res[0] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
		t.Fatalf("after delivery: %+v", res)
	}
	if res := enqueue(t, b, &queue.Message{ID: "x"}, &queue.Message{ID: "x"}); !res[1].Duplicate || res[1].ID != "x" {
		t.Fatalf("same id twice: %+v", res)
	}
	o := &queue.Message{ID: "4", DedupeID: "evt"}
	o.EnqueuedAt = time.Now()
	o.Queue = "other"
	if r, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: []*queue.Message{o}}); err != nil || r[0].Duplicate {
		t.Fatalf("other queue: %+v, %v", r, err)
	}
}

// TestDedupeIDAsMessageID: a message whose ID is its DedupeID writes no
// DEDUPE entry, and its duplicates are reported with that ID, also once
// the first was delivered and acknowledged; a DedupeID first used with
// another ID keeps that first ID.
func TestDedupeIDAsMessageID(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{})
	res := enqueue(t, b, &queue.Message{ID: "evt", DedupeID: "evt"}, &queue.Message{ID: "evt", DedupeID: "evt"})
	if res[0] != (queue.EnqueueResult{ID: "evt"}) || res[1] != (queue.EnqueueResult{ID: "evt", Duplicate: true}) {
		t.Fatalf("one call: %+v", res)
	}
	kv, err := connect(t).KeyValue(ctx, b.Prefix()+"_DEDUPE")
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := kv.Keys(ctx); !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatalf("DEDUPE entries %v (%v), want none", keys, err)
	}
	c := claimAll(t, b, 1, 0)[0]
	if err := b.Ack(ctx, "q", c.ID, c.Token); err != nil {
		t.Fatal(err)
	}
	if res := enqueue(t, b, &queue.Message{ID: "evt", DedupeID: "evt"}); res[0] != (queue.EnqueueResult{ID: "evt", Duplicate: true}) {
		t.Fatalf("after delivery: %+v", res)
	}
	enqueue(t, b, &queue.Message{ID: "1", DedupeID: "mix"})
	c = claimAll(t, b, 1, 0)[0]
	if err := b.Ack(ctx, "q", c.ID, c.Token); err != nil {
		t.Fatal(err)
	}
	if res := enqueue(t, b, &queue.Message{ID: "mix", DedupeID: "mix"}); res[0] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
		t.Fatalf("a DedupeID first used with another id: %+v, want the first id", res)
	}
}

// TestTargetsExcludedAndDisabled: the real-clock counterpart of the
// suite's per-target check; hand-backs come back and are not attempts.
func TestTargetsExcludedAndDisabled(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{HandBackDelay: 50 * time.Millisecond})
	for _, id := range []string{"x0", "x1", "x2", "y0"} {
		enqueue(t, b, &queue.Message{ID: id, Target: id[:1]})
	}
	cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Limit: 10, PerTarget: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := []string{}
	for _, c := range cs {
		got = append(got, c.ID)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"x0", "y0"}) {
		t.Fatalf("PerTarget 1: %v", got)
	}
	if err := b.SetTarget(ctx, queue.TargetState{Queue: "q", Target: "x", Disabled: true, Reason: "410", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	noClaim(t, b, 300*time.Millisecond)
	ts, err := b.Targets(ctx, "q")
	if err != nil || len(ts) != 1 || !ts[0].Disabled || ts[0].Target != "x" {
		t.Fatalf("Targets: %+v, %v", ts, err)
	}
	// Another process sees the state through the bucket.
	b2 := reopen(t, b, natsqueue.Options{HandBackDelay: 50 * time.Millisecond})
	if err := b.SetTarget(ctx, queue.TargetState{Queue: "q", Target: "x", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	back := claimAll(t, b2, 2, 0)
	for _, c := range back {
		if c.Attempt != 1 {
			t.Fatalf("%s after hand-backs: attempt %d, want 1", c.ID, c.Attempt)
		}
	}
}

// BenchmarkQueue: go test -run '^$' -bench . -benchtime 5000x ./store/nats/natsqueue/
func BenchmarkQueue(b *testing.B) {
	queuetest.Bench(b, func(b *testing.B) queue.Backend { return newBackend(b, natsqueue.Options{}) })
}

// TestLongLeaseHeartbeat: a claim asking for a lease longer than AckWait
// is kept alive by in-progress acks while its process lives; when the
// process stops (Close, as a crash would), the server redelivers it to
// another process after AckWait, as attempt 2.
func TestLongLeaseHeartbeat(t *testing.T) {
	t.Parallel()
	opts := natsqueue.Options{AckWait: 600 * time.Millisecond}
	b1 := newBackend(t, opts)
	b2 := reopen(t, b1, opts)
	enqueue(t, b1, &queue.Message{ID: "a"})
	now := time.Now()
	cs, err := b1.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: now, LeaseUntil: now.Add(time.Hour), Limit: 1})
	if err != nil || len(cs) != 1 {
		t.Fatalf("Claim: %v, %v", cs, err)
	}
	noClaim(t, b2, 2*time.Second) // more than three AckWaits
	_ = b1.Close()
	got := claimAll(t, b2, 1, 0)[0]
	if got.ID != "a" || got.Attempt != 2 {
		t.Fatalf("after the holder stopped: %+v, want a attempt 2", got)
	}
	if err := b1.Ack(ctx, "q", "a", cs[0].Token); !errors.Is(err, natsqueue.ErrClosed) {
		t.Fatalf("Ack on a closed backend: %v", err)
	}
}

// TestDedupeWithoutEntry: when the DEDUPE entry is missing (its writer
// died after the PubAck), a duplicate still gets the first id while the
// first message is queued, and an error (never a wrong id) after.
func TestDedupeWithoutEntry(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{})
	enqueue(t, b, &queue.Message{ID: "1", DedupeID: "evt"})
	js := connect(t)
	kv, err := js.KeyValue(ctx, b.Prefix()+"_DEDUPE")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for k := range keys.Keys() {
		n++
		if err := kv.Purge(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if n != 1 {
		t.Fatalf("%d dedupe entries, want 1", n)
	}
	if res := enqueue(t, b, &queue.Message{ID: "2", DedupeID: "evt"}); res[0] != (queue.EnqueueResult{ID: "1", Duplicate: true}) {
		t.Fatalf("first message still queued: %+v", res)
	}
	c := claimAll(t, b, 1, 0)[0]
	if err := b.Ack(ctx, "q", c.ID, c.Token); err != nil {
		t.Fatal(err)
	}
	m := &queue.Message{ID: "3", DedupeID: "evt", Queue: "q", EnqueuedAt: time.Now()}
	if res, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: []*queue.Message{m}}); err == nil {
		t.Fatalf("first message gone and no entry: %+v, want an error", res)
	}
}

// TestHostileFields: ids, targets and header values with CR/LF travel
// through the server unchanged (no header injection); invalid UTF-8 is
// refused before anything is stored.
func TestHostileFields(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{})
	m := &queue.Message{ID: "id\r\nLevee-Meta: {}", Target: "t\nx", Headers: map[string][]string{"X-A": {"v\r\n\x00w"}}, Payload: []byte("\r\n")}
	enqueue(t, b, m)
	c := claimAll(t, b, 1, 0)[0]
	if c.ID != m.ID || c.Target != m.Target || c.Headers.Get("X-A") != "v\r\n\x00w" || string(c.Payload) != "\r\n" {
		t.Fatalf("claimed %+v, want %+v", c.Message, m)
	}
	bad := &queue.Message{ID: "ok", Target: "\xff", Queue: "q", EnqueuedAt: time.Now()}
	if _, err := b.Enqueue(ctx, queue.EnqueueRequest{Messages: []*queue.Message{{ID: "first", Queue: "q", EnqueuedAt: time.Now()}, bad}}); !errors.Is(err, natsqueue.ErrInvalidUTF8) {
		t.Fatalf("invalid UTF-8: %v", err)
	}
	noClaim(t, b, 200*time.Millisecond) // "first" was not stored either
}

// TestClaimWithCanceledContextCountsNothing: a claim whose context ends
// (a Worker stopping while it claims) must not turn the deliveries the
// server already made into attempts.
func TestClaimWithCanceledContextCountsNothing(t *testing.T) {
	t.Parallel()
	b := newBackend(t, natsqueue.Options{})
	enqueue(t, b, &queue.Message{ID: "a", Target: "x"})
	c := claimAll(t, b, 1, 0)[0]
	// Released uncounted, as Worker.Stop does: the next delivery is
	// NumDelivered 2 and reads the state record.
	if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: c.Token, Attempts: 0}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	// The server redelivers it once it has processed the NAK: claim with
	// the ended context until that delivery is made to such a claim.
	var cs []queue.Claimed
	poll.Until(t, 10*time.Second, func() bool {
		var err error
		cs, err = b.Claim(cctx, queue.ClaimRequest{Queue: "q", Limit: 10})
		if err != nil {
			t.Fatalf("claim with an ended context, after the fetch: %v", err)
		}
		return len(cs) > 0
	}, "the released message was not redelivered")
	if cs[0].Attempt != 1 {
		t.Fatalf("claimed with an ended context: attempt %d, want 1", cs[0].Attempt)
	}
	if err := b.Nack(ctx, queue.Nack{Queue: "q", ID: "a", Token: cs[0].Token, Attempts: 0}); err != nil {
		t.Fatal(err)
	}
	again := claimAll(t, b, 1, 0)[0]
	if again.Attempt != 1 {
		t.Fatalf("after a claim with a canceled context: attempt %d, want 1", again.Attempt)
	}
}

// TestStopWhileClaimingCountsNothing: the suite's
// StopReleasesInFlightUncounted with a worker polling every millisecond, so
// that Stop often lands while the worker's loop is claiming: the delivery
// Stop released must come back as attempt 1 every time.
func TestStopWhileClaimingCountsNothing(t *testing.T) {
	t.Parallel()
	q, err := queue.New(newBackend(t, natsqueue.Options{}), queue.Config{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan int, 16)
	w, err := q.NewWorker(queue.WorkerConfig{PollInterval: time.Millisecond, Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
		entered <- d.Attempt
		<-ctx.Done()
		return ctx.Err()
	})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(ctx, &queue.Message{}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := w.Start(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-entered:
			if a != 1 {
				t.Fatalf("round %d: attempt %d, want 1 (a stop is not an attempt)", i, a)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the message stopped in the previous round did not come back", i)
		}
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		w.Stop()
	}
}
