package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrStoreStalled is the store error of a decision abandoned because the
// store answered no call at all (this decision's or any other sharing the
// Breaker) for a whole Options.Timeout since the call started: the mark
// of a frozen server or a cut link, as opposed to a slow answer under
// load. It opens the Breaker at once.
var ErrStoreStalled = errors.New("ratelimit: store answered nothing within the timeout")

// errStoreBackoff is the Event.Err of requests that skipped the store
// because the Breaker is open.
var errStoreBackoff = errors.New("ratelimit: store skipped: the breaker is open after evidence that the store is down")

// BreakerOptions configure a Breaker. The zero value is a sensible
// default.
type BreakerOptions struct {
	// Failures is the number of consecutive failed decisions (errors,
	// decisions past Options.MaxWait), each within OpenFor of the
	// previous one, that opens the breaker. A refused or reset connection
	// and a stall (ErrStoreStalled) open it at once. Default 3.
	Failures int
	// OpenFor is how long the breaker stays open: requests skip the store
	// and go straight to their failure mode. Then one request at a time
	// (at most one per OpenFor) probes the store while the others keep
	// their failure mode; the first answer closes the breaker, a failed
	// probe opens it again. Default 1s; negative: never open (every
	// request tries the store).
	OpenFor time.Duration
}

// Breaker decides when a store counts as down. It is shared by every
// middleware built on one store (every route, every configuration
// reload), so that they agree, and it tracks the store's progress: the
// last time any decision was answered, which tells a slow store (answers
// keep coming) from a dead one (nothing comes back). A Breaker is safe
// for concurrent use.
type Breaker struct {
	failures atomic.Int64
	openFor  atomic.Int64 // time.Duration
	base     time.Time    // monotonic origin of lastAnswer
	// lastAnswer is the monotonic time (ns since base, +1 so 0 means
	// never) of the last successful store call.
	lastAnswer atomic.Int64
	consec     atomic.Int64
	lastFail   atomic.Int64 // Unix ns (Options.Now) of the last failure
	openUntil  atomic.Int64 // Unix ns (Options.Now); store skipped before it; 0 when closed
	probeAt    atomic.Int64 // Unix ns (Options.Now) of the last probe while open
}

// NewBreaker returns a closed Breaker.
func NewBreaker(opts BreakerOptions) *Breaker {
	b := &Breaker{base: time.Now()}
	b.Configure(opts)
	return b
}

// Configure changes the breaker's options (a configuration reload) and
// keeps its state.
func (b *Breaker) Configure(opts BreakerOptions) {
	if opts.Failures <= 0 {
		opts.Failures = 3
	}
	if opts.OpenFor == 0 {
		opts.OpenFor = time.Second
	}
	b.failures.Store(int64(opts.Failures))
	b.openFor.Store(int64(opts.OpenFor))
}

// Open reports whether the breaker is open at now: the store is skipped.
// Past OpenFor it returns false for one caller (the probe) per OpenFor,
// and true for the others, until a store call succeeds.
func (b *Breaker) Open(now time.Time) bool {
	u := b.openUntil.Load()
	if u == 0 {
		return false
	}
	t := now.UnixNano()
	if t < u {
		return true
	}
	p := b.probeAt.Load()
	if t-p >= b.openFor.Load() && b.probeAt.CompareAndSwap(p, t) {
		return false // this caller probes
	}
	return true
}

func (b *Breaker) mono() int64 { return int64(time.Since(b.base)) + 1 }

// answered records a successful store call: the store is alive.
func (b *Breaker) answered() {
	b.lastAnswer.Store(b.mono())
	if b.consec.Load() != 0 {
		b.consec.Store(0)
	}
	if b.openUntil.Load() != 0 {
		b.openUntil.Store(0) // a probe succeeded: closed
	}
}

// failed records a failed decision at now and reports whether it opened
// the breaker.
func (b *Breaker) failed(now time.Time, err error) bool {
	openFor := time.Duration(b.openFor.Load())
	if openFor < 0 {
		return false
	}
	t := now.UnixNano()
	n := b.consec.Add(1)
	if prev := b.lastFail.Swap(t); prev != 0 && t-prev > int64(openFor) {
		b.consec.Store(1) // the previous failure is too old to count
		n = 1
	}
	if errors.Is(err, ErrStoreStalled) || connectionDown(err) || n >= b.failures.Load() {
		b.openUntil.Store(now.Add(openFor).UnixNano())
		b.probeAt.Store(0)
		return true
	}
	return false
}

// connectionDown reports errors that prove the server is not there: a
// refused, reset or aborted connection, a closed pipe, or a dial that
// failed.
func connectionDown(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" && !op.Timeout()
}

// decide runs store.Decide under the timeouts of Options: the decision
// is abandoned (ErrStoreStalled) as soon as a whole timeout passes without
// any answer from the store to anyone, and in any case after maxWait. A
// store that keeps answering other decisions is slow, not down: the
// decision waits for it, up to maxWait.
//
// The store call runs on its own goroutine with its own results, because
// a client blocked reading a frozen server honours only the deadline
// (maxWait), not a cancellation: an abandoned call ends by itself at
// maxWait, and its results are dropped.
func (b *Breaker) decide(ctx context.Context, store Store, now time.Time, timeout, maxWait time.Duration,
	demands []Demand, results []Result) (Ticket, error) {
	if timeout < 0 {
		tk, err := store.Decide(ctx, now, demands, results)
		if err == nil {
			b.answered()
		}
		return tk, err
	}
	cctx, cancel := context.WithTimeout(ctx, maxWait)
	// The call gets its own copy of demands and results: an abandoned
	// call may still read and write them while the caller moves on (the
	// fallback reuses demands).
	c := &storeCall{done: make(chan struct{})}
	if len(demands) <= len(c.buf) {
		c.res, c.ds = c.buf[:len(demands)], c.dbuf[:len(demands)]
	} else {
		c.res, c.ds = make([]Result, len(demands)), make([]Demand, len(demands))
	}
	copy(c.ds, demands)
	var started atomic.Int64 // when the call began (mono); 0 while queued behind this process's own work
	go func() {
		defer cancel()
		started.Store(b.mono())
		c.tk, c.err = store.Decide(cctx, now, c.ds, c.res)
		if c.err == nil {
			b.answered() // progress is recorded as soon as it is seen
		}
		close(c.done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			if c.err != nil {
				return Ticket{}, c.err
			}
			copy(results, c.res)
			return c.tk, nil
		case <-ctx.Done():
			cancel()
			return Ticket{}, fmt.Errorf("ratelimit: decision abandoned: %w", ctx.Err())
		case <-t.C:
			// Silence counts from when the call started (a call still
			// waiting for this process's CPU says nothing about the
			// store) or from the last answer to anyone, whichever is
			// later.
			s := started.Load()
			if s == 0 {
				t.Reset(timeout)
				continue
			}
			quiet := b.mono() - max(s, b.lastAnswer.Load())
			if quiet >= int64(timeout) {
				cancel()
				return Ticket{}, ErrStoreStalled
			}
			t.Reset(timeout - time.Duration(quiet))
		}
	}
}

// storeCall is one store decision running on its own goroutine.
type storeCall struct {
	done chan struct{}
	tk   Ticket
	err  error
	res  []Result
	ds   []Demand
	buf  [4]Result
	dbuf [4]Demand
}
