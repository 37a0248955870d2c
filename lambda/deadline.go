package lambda

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leveehq/levee/idempotency"
)

// DefaultDeadlineMargin is Config.DeadlineMargin's default.
const DefaultDeadlineMargin = 500 * time.Millisecond

// ErrDeadline means the invocation reached Config.DeadlineMargin before
// its deadline while the handler was still running: the handler was given
// up on and its key held with an unknown outcome. Errors matching it also
// match idempotency.ErrOutcomeUnknown; they are *DeadlineError values.
var ErrDeadline = errors.New("lambda: the invocation deadline arrived while the handler ran")

// DeadlineError is returned (matching ErrDeadline and
// idempotency.ErrOutcomeUnknown) when a handler was still running at the
// invocation's margin, or the invocation's ctx ended under it: its outcome
// is unknown and its key is held. With NotStarted, the margin had already
// passed when the handler was due to start: nothing ran, the error does
// not match idempotency.ErrOutcomeUnknown, and the key is released.
type DeadlineError struct {
	// Deadline is the invocation's deadline.
	Deadline time.Time
	// Margin is how long before Deadline the handler was given up on.
	Margin time.Duration
	// NotStarted reports that the handler never ran.
	NotStarted bool
	// Cause is the invocation ctx's error when it ended before the margin
	// (the caller canceled it), nil at the margin.
	Cause error
}

// Error says whether the handler was given up on or never started.
func (e *DeadlineError) Error() string {
	dl := e.Deadline.UTC().Format(time.RFC3339Nano)
	switch {
	case e.NotStarted:
		return fmt.Sprintf("%v: less than %v before the deadline %s; the handler did not start", ErrDeadline, e.Margin, dl)
	case e.Cause != nil:
		return fmt.Sprintf("%v: the invocation ended (%v) while the handler ran; its outcome is unknown and its key is held", ErrDeadline, e.Cause)
	}
	return fmt.Sprintf("%v: still running %v before the deadline %s; its outcome is unknown and its key is held", ErrDeadline, e.Margin, dl)
}

// Is makes errors.Is match ErrDeadline, and idempotency.ErrOutcomeUnknown
// unless NotStarted.
func (e *DeadlineError) Is(target error) bool {
	return target == ErrDeadline || (target == idempotency.ErrOutcomeUnknown && !e.NotStarted)
}

// Unwrap returns Cause.
func (e *DeadlineError) Unwrap() error { return e.Cause }

// Config is what every handler of this package needs: the idempotency
// store and engine options, and the deadline rule. The zero value of
// every field but Store is a sensible default.
type Config struct {
	// Store holds the idempotency records (store/dynamodb on AWS;
	// store/memory in tests). Required.
	Store idempotency.Store
	// Options configure the engine (retention, clock, OnEvent, FailOpen,
	// InFlightWait...). Lease and RenewEvery apply only to invocations
	// whose ctx has no deadline: under the Lambda runtime the lease ends
	// at the invocation's deadline and needs no renewal.
	Options idempotency.Options
	// DeadlineMargin is how long before the invocation's deadline a
	// handler still running is given up on and its key held in
	// idempotency.StateUnknown (see the package doc). It is capped at half
	// the time the invocation has left when it starts. Default
	// DefaultDeadlineMargin (500ms); negative disables the rule (a handler
	// cut off by the deadline then leaves a claim that lapses at the
	// deadline, and its retry runs again).
	DeadlineMargin time.Duration
}

func (c *Config) validate(who string) error {
	if c.Store == nil {
		return fmt.Errorf("lambda: %s: Config.Store is nil", who)
	}
	return nil
}

// invocation is one invocation's engine and deadline rule.
type invocation struct {
	engine   *idempotency.Engine
	deadline time.Time // zero: no deadline
	guardAt  time.Time // zero: no guard
	margin   time.Duration
}

// begin returns the engine for the invocation whose ctx is given: with a
// deadline, its claims' leases end at it (no renewal), and guardAt is the
// margin before it.
func (c *Config) begin(ctx context.Context) invocation {
	dl, ok := ctx.Deadline()
	if !ok {
		return invocation{engine: idempotency.New(c.Store, c.Options)}
	}
	opts := c.Options
	remaining := time.Until(dl)
	if remaining < time.Millisecond {
		remaining = time.Millisecond // the engine reads Lease <= 0 as its default
	}
	opts.Lease = remaining
	opts.RenewEvery = -1
	inv := invocation{engine: idempotency.New(c.Store, opts), deadline: dl}
	margin := c.DeadlineMargin
	if margin == 0 {
		margin = DefaultDeadlineMargin
	}
	if margin > 0 {
		margin = min(margin, remaining/2)
		inv.guardAt = dl.Add(-margin)
		inv.margin = margin
	}
	return inv
}

// run calls fn with a ctx that ends at the guard, and returns its result;
// or, if the guard arrives first, returns a *DeadlineError at once and
// leaves fn running on its own (the runtime ends it with the invocation).
// A panic in fn is re-raised on the caller's goroutine.
func run[T any](ctx context.Context, inv *invocation, fn func(context.Context) (T, error)) (T, error) {
	if inv.guardAt.IsZero() {
		return fn(ctx)
	}
	if !time.Now().Before(inv.guardAt) {
		var zero T
		return zero, &DeadlineError{Deadline: inv.deadline, Margin: inv.margin, NotStarted: true}
	}
	gctx, cancel := context.WithDeadline(ctx, inv.guardAt)
	type result struct {
		v     T
		err   error
		panic any
		ok    bool
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if !r.ok {
				r.panic = recover()
				if r.panic == nil {
					r.panic = errors.New("lambda: handler called runtime.Goexit")
				}
			}
			done <- r
		}()
		r.v, r.err = fn(gctx)
		r.ok = true
	}()
	var r result
	select {
	case r = <-done:
	case <-gctx.Done():
		select {
		case r = <-done: // finished at the same moment: keep its result
		default:
			// The guard arrived (or ctx ended): give the handler up. Its
			// ctx is canceled so it can stop; its result is discarded.
			cause := ctx.Err() // nil at the margin; set if the caller ended ctx first
			cancel()
			var zero T
			return zero, &DeadlineError{Deadline: inv.deadline, Margin: inv.margin, Cause: cause}
		}
	}
	cancel()
	if !r.ok {
		panic(r.panic)
	}
	return r.v, r.err
}
