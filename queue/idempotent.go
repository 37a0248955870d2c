package queue

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Errors a Deduper returns from Begin.
var (
	// ErrProcessed: the message was processed already; it is acknowledged
	// without running the handler.
	ErrProcessed = errors.New("queue: message already processed")
	// ErrInProgress: another consumer is processing the message right now;
	// the delivery is retried later.
	ErrInProgress = errors.New("queue: message being processed by another consumer")
	// ErrOutcomeUnknown: an earlier run of the message reached the
	// downstream and its result was lost (the idempotency engine's
	// unknown-outcome rule); it must not run again automatically, so the
	// message goes to the DLQ as a Permanent failure for an operator to
	// resolve.
	ErrOutcomeUnknown = errors.New("queue: outcome of an earlier run unknown")
)

// Deduper remembers which messages were processed, for an idempotent
// consumer. It is the consumer's side of levee's idempotency engine (the
// gateway wires one over idempotency.Engine and its stores); any durable
// implementation with the same contract works.
type Deduper interface {
	// Begin claims key for processing. It returns ErrProcessed when key
	// was processed (Finish was called with a nil error), ErrInProgress
	// when another holder's claim is live, ErrOutcomeUnknown when an
	// earlier run's outcome is unknown, another error when the store
	// failed (the delivery is then retried), and otherwise a Finish the
	// caller must call exactly once with the handler's result: nil marks
	// key processed; an error releases the claim so that a redelivery runs
	// the handler again. A claim whose holder never calls Finish must
	// lapse (a lease), so that a crashed consumer's message is processed
	// by the next.
	Begin(ctx context.Context, key string) (Finish, error)
}

// Finish ends a Deduper claim with the handler's result; its error means
// the result may not have been recorded.
type Finish func(ctx context.Context, handlerErr error) error

// InProgressDelay is how long Idempotent defers (Defer: not an attempt) a
// message another consumer is processing.
const InProgressDelay = time.Second

// Idempotent wraps h so that each message id (per queue) is processed at
// most once by a successful handler run, however many times it is
// delivered: a message whose id was processed is acknowledged without
// calling h; a handler failure never marks it processed, so the redelivery
// runs h again. A failure to record success is returned as the delivery's
// error: the message is redelivered, and the Deduper decides whether the
// recorded outcome is known (then ErrProcessed) or not.
func Idempotent(d Deduper, h Handler) Handler {
	return HandlerFunc(func(ctx context.Context, m *Delivery) error {
		finish, err := d.Begin(ctx, m.Queue+"/"+m.ID)
		switch {
		case errors.Is(err, ErrProcessed):
			return nil
		case errors.Is(err, ErrInProgress):
			// Not attempted here: another consumer holds it.
			return Defer(InProgressDelay, err)
		case errors.Is(err, ErrOutcomeUnknown):
			return Permanent(err)
		case err != nil:
			return fmt.Errorf("queue: dedupe: %w", err)
		}
		herr := call(ctx, h, m)
		if ferr := finish(context.WithoutCancel(ctx), herr); ferr != nil {
			if herr != nil {
				return herr
			}
			return fmt.Errorf("queue: dedupe: recording success: %w", ferr)
		}
		return herr
	})
}
