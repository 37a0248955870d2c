package natsqueue_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/nats/natsqueue"
)

func newOpts(ackWait time.Duration) natsqueue.Options {
	return natsqueue.Options{AckWait: ackWait, HandBackDelay: 20 * time.Millisecond}
}

// deduper is an idempotent receiver's store, in memory (queue.Deduper).
type deduper struct {
	mu        sync.Mutex
	done, run map[string]bool
	processed map[string]int
}

func (d *deduper) Begin(ctx context.Context, key string) (queue.Finish, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done[key] {
		return nil, queue.ErrProcessed
	}
	if d.run[key] {
		return nil, queue.ErrInProgress
	}
	d.run[key] = true
	return func(ctx context.Context, herr error) error {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.run, key)
		if herr == nil {
			d.done[key] = true
		}
		return nil
	}, nil
}

var quiet = slog.New(slog.DiscardHandler)

// TestCrashedConsumerExactlyOnce: 400 messages, two consumer processes
// (their own connections), one of which "crashes" halfway: its connection
// closes while it holds messages, which the server redelivers to the
// other after AckWait, with the lost attempt counted. Every message
// reaches the idempotent receiver exactly once; none is lost.
func TestCrashedConsumerExactlyOnce(t *testing.T) {
	t.Parallel()
	const n = 400
	const lease = time.Second
	b1 := newBackend(t, newOpts(lease))
	b2 := reopen(t, b1, newOpts(lease))
	q1, _ := queue.New(b1, queue.Config{Name: "q"})
	q2, _ := queue.New(b2, queue.Config{Name: "q"})
	d := &deduper{done: map[string]bool{}, run: map[string]bool{}, processed: map[string]int{}}
	var crashed atomic.Bool
	var orphans sync.Map // ids the crashed process held unfinished
	var adopted atomic.Int32
	handler := func(crash func()) queue.Handler {
		var calls atomic.Int32
		return queue.Idempotent(d, queue.HandlerFunc(func(ctx context.Context, dl *queue.Delivery) error {
			c := calls.Add(1)
			if crash != nil && (c >= 100 || crashed.Load()) {
				// Mid-delivery: this process's outcomes never reach the server.
				crashed.Store(true)
				orphans.Store(dl.ID, true)
				crash()
				<-ctx.Done()
				return ctx.Err()
			}
			if crash == nil {
				if _, ok := orphans.Load(dl.ID); ok {
					adopted.Add(1)
				}
			}
			if c%9 == 0 {
				return errors.New("transient") // a failure never marks it processed
			}
			d.mu.Lock()
			d.processed[dl.ID]++
			d.mu.Unlock()
			return nil
		}))
	}
	var crashOnce sync.Once
	w1, _ := q1.NewWorker(queue.WorkerConfig{Concurrency: 8, MaxPerTarget: 8, Lease: lease + time.Millisecond, AttemptTimeout: lease / 2,
		MaxAttempts: 100, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, PollInterval: 10 * time.Millisecond,
		Logger: quiet, Handler: handler(func() { crashOnce.Do(func() { _ = b1.Close() }) })})
	w2, _ := q2.NewWorker(queue.WorkerConfig{Concurrency: 8, MaxPerTarget: 8, Lease: lease + time.Millisecond, AttemptTimeout: lease / 2,
		MaxAttempts: 100, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, PollInterval: 10 * time.Millisecond,
		Logger: quiet, Handler: handler(nil)})
	_ = w1.Start(ctx)
	_ = w2.Start(ctx)
	t.Cleanup(w1.Stop)
	t.Cleanup(w2.Stop)
	for i := 0; i < n; i += 10 {
		var batch []*queue.Message
		for j := i; j < i+10; j++ {
			batch = append(batch, &queue.Message{ID: "m" + strconv.Itoa(j), Target: "t" + strconv.Itoa(j%3)})
			if j%7 == 0 { // a producer's retry of the same id
				batch = append(batch, &queue.Message{ID: "m" + strconv.Itoa(j), Target: "t" + strconv.Itoa(j%3)})
			}
		}
		q := q1
		if i%20 == 10 {
			q = q2
		}
		_, err := q.Enqueue(ctx, batch...)
		if errors.Is(err, natsqueue.ErrClosed) {
			// q1's process crashed: the producer moves on to q2.
			_, err = q2.Enqueue(ctx, batch...)
		}
		if err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
	}
	count := func() int { d.mu.Lock(); defer d.mu.Unlock(); return len(d.processed) }
	poll.Until(t, 60*time.Second, func() bool { return count() == n }, "processed %d of %d", count(), n)
	w2.Stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, c := range d.processed {
		if c != 1 {
			t.Fatalf("%s processed %d times", id, c)
		}
	}
	if !crashed.Load() || adopted.Load() == 0 {
		t.Fatalf("crashed %v, %d orphaned messages redelivered to the survivor: the test did not exercise a crash", crashed.Load(), adopted.Load())
	}
}
