package queue_test

import (
	"context"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

// countingBackend counts Claim calls.
type countingBackend struct {
	queue.Backend
	claims atomic.Int64
}

func (c *countingBackend) Claim(ctx context.Context, req queue.ClaimRequest) ([]queue.Claimed, error) {
	c.claims.Add(1)
	return c.Backend.Claim(ctx, req)
}

// TestEnqueuesForASaturatedTargetDoNotWakeClaims: while the only target
// with messages is at its share, enqueues for that target do not make the
// worker claim again (each claim would scan that backlog for nothing);
// an enqueue for another target still wakes it at once (the poll interval
// is an hour here, so only the wake-up can deliver it).
func TestEnqueuesForASaturatedTargetDoNotWakeClaims(t *testing.T) {
	sq, err := sqlitequeue.Open(filepath.Join(t.TempDir(), "q.db"), sqlitequeue.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	b := &countingBackend{Backend: sq}
	q, err := queue.New(b, queue.Config{Name: "wake"})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var slow, fast atomic.Int32
	w, err := q.NewWorker(queue.WorkerConfig{Concurrency: 4, MaxPerTarget: 1, PollInterval: time.Hour, AttemptTimeout: time.Hour,
		Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			if d.Target == "slow" {
				slow.Add(1)
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
				return nil
			}
			fast.Add(1)
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	if _, err := q.Enqueue(ctx, &queue.Message{Target: "slow"}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool { return slow.Load() == 1 }, "the slow target's first message was not delivered")
	// One more enqueue finds the target at its share: that claim comes back
	// empty. The next 100 must not claim at all.
	if _, err := q.Enqueue(ctx, &queue.Message{Target: "slow", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	before := b.claims.Load()
	for i := range 100 {
		if _, err := q.Enqueue(ctx, &queue.Message{Target: "slow", Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := b.claims.Load() - before; n > 2 {
		t.Fatalf("100 enqueues for the saturated target made the worker claim %d times, want at most 2", n)
	}
	if _, err := q.Enqueue(ctx, &queue.Message{Target: "fast"}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool { return fast.Load() == 1 }, "another target's message waited: the wake-up was lost")
	close(release)
	poll.Until(t, 30*time.Second, func() bool { return slow.Load() == 102 }, "the slow target's backlog was not delivered after it recovered: %d", slow.Load())
}

// capturingBackend records the EnqueueRequests it is given.
type capturingBackend struct {
	queue.Backend
	reqs []queue.EnqueueRequest
}

func (c *capturingBackend) Enqueue(ctx context.Context, req queue.EnqueueRequest) ([]queue.EnqueueResult, error) {
	c.reqs = append(c.reqs, req)
	return c.Backend.Enqueue(ctx, req)
}

// TestEnqueueDedupeWindow: Enqueue asks the backend to keep dedupe ids for
// the queue's DedupeWindow, EnqueueDedupe for the window it is given (a
// webhook route's retention).
func TestEnqueueDedupeWindow(t *testing.T) {
	sq, err := sqlitequeue.Open(filepath.Join(t.TempDir(), "q.db"), sqlitequeue.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sq.Close() })
	b := &capturingBackend{Backend: sq}
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	q, err := queue.New(b, queue.Config{Name: "w", DedupeWindow: time.Hour, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := q.Enqueue(ctx, &queue.Message{Target: "t", DedupeID: "a"}); err != nil {
		t.Fatal(err)
	}
	res, err := q.EnqueueDedupe(ctx, 72*time.Hour, &queue.Message{Target: "t", DedupeID: "b"}, &queue.Message{Target: "t", DedupeID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if !res[1].Duplicate || res[0].Duplicate {
		t.Fatalf("EnqueueDedupe results %+v, want the second a duplicate of the first", res)
	}
	if len(b.reqs) != 2 || !b.reqs[0].DedupeUntil.Equal(now.Add(time.Hour)) || !b.reqs[1].DedupeUntil.Equal(now.Add(72*time.Hour)) {
		t.Fatalf("DedupeUntil asked: %v, want now+1h then now+72h", []time.Time{b.reqs[0].DedupeUntil, b.reqs[len(b.reqs)-1].DedupeUntil})
	}
}
