// Package groupcommit runs concurrent operations in batches on one
// goroutine: the stores' group commit (store/sqlite, store/postgres).
//
// A Queue's goroutine takes the queued operations, up to a bound, and hands
// the batch to the run function, which
// executes it (typically as one transaction or one statement) and records
// each operation's outcome in the operation itself. Operations that arrive
// while a batch runs form the next batch, so under load one commit serves
// many callers, and an operation arriving at an idle queue runs at once:
// nothing ever waits for a timer or for other operations.
package groupcommit

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
)

// Slot is the bookkeeping an operation carries; embed it in the operation
// type (see Op).
type Slot struct {
	done    <-chan struct{} // the caller's ctx.Done()
	skipped bool
	ready   chan struct{} // buffered (1): the queue never blocks on it
}

// Canceled reports whether the operation's caller has gone (its context
// ended). The run function should then skip it (Skip) rather than execute it.
func (s *Slot) Canceled() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Skip records that the run function did not execute the operation; Do
// then returns the caller's context error.
func (s *Slot) Skip() { s.skipped = true }

// Skipped reports whether Skip was called.
func (s *Slot) Skipped() bool { return s.skipped }

// Reset prepares the slot for reuse of its operation (keeping its channel).
func (s *Slot) Reset() { s.done, s.skipped = nil, false }

// Op is an operation type: a pointer to a struct embedding Slot.
type Op interface{ GroupSlot() *Slot }

// GroupSlot returns s itself; it makes every type embedding a Slot an Op.
func (s *Slot) GroupSlot() *Slot { return s }

// Queue batches operations of type T. It holds no goroutine while idle:
// the first operation to arrive at an idle queue starts one, which runs
// batches until nothing is queued and then exits. The zero value is not
// usable; call New.
type Queue[T Op] struct {
	max, workers int
	run          func([]T)

	mu      sync.Mutex
	pending []T
	running int

	batches, ops atomic.Int64
}

// Stats returns how many batches have run and how many operations they
// carried in all (ops/batches is the mean batch size), for diagnostics,
// benchmarks and tests.
func (q *Queue[T]) Stats() (batches, ops int64) { return q.batches.Load(), q.ops.Load() }

// New returns a Queue that runs batches of at most size operations with
// run, in arrival order, on at most workers goroutines at a time (at least
// one). With one worker, run is never called concurrently (SQLite's single
// writer); with more, a new batch starts while others are still running
// (PostgreSQL, whose server runs statements in parallel). run must record
// every operation's outcome in the operation (or Skip it) before
// returning.
func New[T Op](size, workers int, run func(batch []T)) *Queue[T] {
	return &Queue[T]{max: size, workers: max(1, workers), run: run}
}

func (q *Queue[T]) loop() {
	batch := make([]T, 0, q.max)
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running--
			q.mu.Unlock()
			return
		}
		n := min(len(q.pending), q.max)
		batch = append(batch[:0], q.pending[:n]...)
		clear(q.pending[:n])
		q.pending = q.pending[n:]
		if len(q.pending) == 0 {
			q.pending = q.pending[:0:0] // let a burst's backing array go
		}
		q.mu.Unlock()
		q.batches.Add(1)
		q.ops.Add(int64(n))
		q.run(batch)
		for _, op := range batch {
			op.GroupSlot().ready <- struct{}{}
		}
		clear(batch) // drop references to operations handed back
		// Let the callers just woken run before the next batch is taken:
		// most queue their next operation at once (a claim's caller its
		// completion, say). Without this yield, the loop would take the
		// one or two operations queued so far, and callers that share a P
		// with it (GOMAXPROCS=1, or a busy machine) would never get to
		// add theirs: batches of two under a load of hundreds. A yield
		// with nothing else runnable returns at once.
		runtime.Gosched()
	}
}

// Do queues op and waits until its batch has run. It returns nil when op
// was executed (its outcome is in op, and op may be reused), or ctx's
// error if ctx ended first or the run function skipped op because of it
// (op may still execute later, as with any store whose answer is lost; do
// not reuse it).
func (q *Queue[T]) Do(ctx context.Context, op T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s := op.GroupSlot()
	if s.ready == nil {
		s.ready = make(chan struct{}, 1)
	}
	s.done, s.skipped = ctx.Done(), false
	q.mu.Lock()
	q.pending = append(q.pending, op)
	if q.running < q.workers {
		q.running++
		go q.loop()
	}
	q.mu.Unlock()
	select {
	case <-s.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.skipped {
		return ctx.Err()
	}
	return nil
}

// Queued returns how many operations wait for a batch, for diagnostics
// and tests.
func (q *Queue[T]) Queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}
