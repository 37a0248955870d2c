package groupcommit_test

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leveehq/levee/internal/groupcommit"
	"github.com/leveehq/levee/internal/poll"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type op struct {
	groupcommit.Slot
	in, out int
}

// Operations queued while a batch runs form the next batch, each gets its
// own result, and a lone operation runs without waiting for company.
func TestBatches(t *testing.T) {
	gate := make(chan struct{})
	var sizes []int
	first := true
	q := groupcommit.New(8, 1, func(batch []*op) {
		if first {
			first = false
			<-gate // hold the first batch while the others queue
		}
		sizes = append(sizes, len(batch))
		for _, o := range batch {
			o.out = o.in * 2
		}
	})
	ctx := context.Background()
	lone := &op{in: 1}
	done := make(chan error)
	go func() { done <- q.Do(ctx, lone) }()
	var wg sync.WaitGroup
	ops := make([]*op, 20)
	for i := range ops {
		ops[i] = &op{in: i}
	}
	for _, o := range ops {
		wg.Go(func() {
			if err := q.Do(ctx, o); err != nil {
				t.Errorf("Do: %v", err)
			}
		})
	}
	// The first batch is held: the queue fills up (its bound is 8).
	poll.Until(t, 10*time.Second, func() bool { return q.Queued() >= 8 }, "only %d operations queued", q.Queued())
	close(gate)
	wg.Wait()
	if err := <-done; err != nil || lone.out != 2 {
		t.Fatalf("lone op: %v, out %d", err, lone.out)
	}
	for _, o := range ops {
		if o.out != o.in*2 {
			t.Fatalf("op %d got %d", o.in, o.out)
		}
	}
	total := 0
	for _, n := range sizes {
		if n > 8 {
			t.Fatalf("batch of %d, bound 8", n)
		}
		total += n
	}
	if total != 21 || len(sizes) >= 21 {
		t.Fatalf("batch sizes %v: want 21 operations in fewer than 21 batches", sizes)
	}
}

func TestCanceledIsSkipped(t *testing.T) {
	started, gate := make(chan struct{}), make(chan struct{})
	var ran []int
	q := groupcommit.New(4, 1, func(batch []*op) {
		for _, o := range batch {
			if o.in == 0 {
				close(started)
				<-gate
			}
			if o.Canceled() {
				o.Skip()
				continue
			}
			ran = append(ran, o.in)
		}
	})
	firstDone := make(chan error)
	go func() { firstDone <- q.Do(context.Background(), &op{in: 0}) }()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { errc <- q.Do(ctx, &op{in: 1}) }()
	for q.Queued() == 0 {
		time.Sleep(time.Millisecond) // until op 1 waits for the next batch
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled Do = %v", err)
	}
	close(gate)
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	// The queue's goroutine exits once idle (goleak checks it at the end);
	// a later operation starts a new one.
	if err := q.Do(context.Background(), &op{in: 2}); err != nil {
		t.Fatal(err)
	}
	for _, n := range ran {
		if n == 1 {
			t.Fatal("a canceled operation ran")
		}
	}
	if !slices.Contains(ran, 2) {
		t.Fatalf("ran %v, want operation 2 run", ran)
	}
}

// With two workers, a second batch runs while the first is still running.
func TestWorkersRunConcurrently(t *testing.T) {
	var inside sync.WaitGroup
	inside.Add(2)
	both := make(chan struct{})
	go func() { inside.Wait(); close(both) }()
	q := groupcommit.New(1, 2, func(batch []*op) {
		inside.Done()
		select {
		case <-both:
		case <-time.After(10 * time.Second): // a correctness bound, not a speed assertion
			t.Error("the second batch never ran alongside the first")
		}
	})
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			if err := q.Do(context.Background(), &op{in: i}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// TestBatchesFillOnOneP: with one P, callers woken by a batch get to queue
// their next operation before the next batch is taken, so batches carry
// many operations rather than the one or two queued while the previous
// batch ran (the run function here computes, like SQLite, without
// blocking).
func TestBatchesFillOnOneP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var sink uint64
	q := groupcommit.New(128, 1, func(batch []*op) {
		for range batch {
			for i := range 2000 {
				sink += uint64(i) * 2654435761
			}
		}
	})
	const callers, each = 64, 40
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			o := &op{}
			for range each {
				if err := q.Do(context.Background(), o); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	batches, ops := q.Stats()
	if ops != callers*each {
		t.Fatalf("Stats: %d operations, want %d", ops, callers*each)
	}
	if mean := float64(ops) / float64(batches); mean < callers/4 {
		t.Fatalf("mean batch %.1f operations with %d callers on one P, want at least %d", mean, callers, callers/4)
	}
	_ = sink
}
