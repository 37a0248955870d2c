// Package groupcommit runs concurrent operations in batches on one
// goroutine: the stores' group commit (store/sqlite, store/postgres).
//
// A Queue's goroutine takes the first queued operation, adds whatever else
// has queued up to a bound, and hands the batch to the run function, which
// executes it (typically as one transaction or one statement) and records
// each operation's outcome in the operation itself. Operations that arrive
// while a batch runs form the next batch, so under load one commit serves
// many callers, and an operation arriving at an idle queue runs at once:
// nothing ever waits for a timer or for other operations.
package groupcommit

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is returned by Do after Stop.
var ErrClosed = errors.New("groupcommit: queue is stopped")

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

// Queue batches operations of type T for its goroutine.
type Queue[T Op] struct {
	ops     chan T
	quit    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

// Start returns a Queue whose goroutine runs batches of at most max
// operations with run, in arrival order. run is called from that goroutine
// only; it must record every operation's outcome in the operation (or Skip
// it) before returning. Stop ends the goroutine.
func Start[T Op](max int, run func(batch []T)) *Queue[T] {
	q := &Queue[T]{ops: make(chan T, max), quit: make(chan struct{}), stopped: make(chan struct{})}
	go q.loop(max, run)
	return q
}

func (q *Queue[T]) loop(max int, run func([]T)) {
	defer close(q.stopped)
	batch := make([]T, 0, max)
	for {
		select {
		case op := <-q.ops:
			batch = append(batch[:0], op)
		case <-q.quit:
			for {
				select {
				case op := <-q.ops:
					s := op.GroupSlot()
					s.skipped = true
					s.ready <- struct{}{}
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < max {
			select {
			case op := <-q.ops:
				batch = append(batch, op)
			default:
				break fill
			}
		}
		run(batch)
		for _, op := range batch {
			op.GroupSlot().ready <- struct{}{}
		}
		clear(batch) // drop references to operations handed back
	}
}

// Do queues op and waits until its batch has run. It returns nil when op
// was executed (its outcome is in op, and op may be reused), ctx's error
// if ctx ended first (op may still execute later, as with any store whose
// answer is lost; do not reuse it), or ErrClosed if the queue stopped.
func (q *Queue[T]) Do(ctx context.Context, op T) error {
	s := op.GroupSlot()
	if s.ready == nil {
		s.ready = make(chan struct{}, 1)
	}
	s.done, s.skipped = ctx.Done(), false
	select {
	case q.ops <- op:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.quit:
		return ErrClosed
	}
	select {
	case <-s.ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.stopped:
		select {
		case <-s.ready:
		default:
			return ErrClosed
		}
	}
	if s.skipped {
		if err := ctx.Err(); err != nil {
			return err
		}
		return ErrClosed
	}
	return nil
}

// Queued returns how many operations wait for a batch (at most the
// bound), for diagnostics and tests.
func (q *Queue[T]) Queued() int { return len(q.ops) }

// Stop ends the goroutine after the batch it is running, and waits for it.
// Queued operations, and every later Do, get ErrClosed. It is idempotent.
func (q *Queue[T]) Stop() {
	q.once.Do(func() { close(q.quit) })
	<-q.stopped
}
