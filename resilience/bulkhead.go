package resilience

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// BulkheadSettings configure a bulkhead. The zero value is the default.
type BulkheadSettings struct {
	// MaxInFlight is the most attempts in flight at once toward the
	// upstream. Default 64; at most 1,000,000.
	MaxInFlight int
	// MaxWait is how long an attempt waits for a free slot before it is
	// rejected with *BulkheadError. Default 0: no wait (reject at once);
	// negative is invalid.
	MaxWait time.Duration
}

// Validate reports the first field out of range, naming it.
func (s BulkheadSettings) Validate() error {
	switch {
	case s.MaxInFlight < 0 || s.MaxInFlight > 1_000_000:
		return fmt.Errorf("resilience: Bulkhead.MaxInFlight %d is out of range 1..1000000", s.MaxInFlight)
	case s.MaxWait < 0:
		return fmt.Errorf("resilience: Bulkhead.MaxWait %v is negative", s.MaxWait)
	}
	return nil
}

// Bulkhead bounds the attempts in flight toward one upstream, so that a
// slow upstream cannot take every goroutine and connection of the
// process. A slot is held from admission until the attempt's response
// headers (or error) are in; reading the body does not hold it. Safe for
// concurrent use.
type Bulkhead struct {
	sem     chan struct{}
	maxWait time.Duration
}

// NewBulkhead returns a bulkhead, or the error of s.Validate.
func NewBulkhead(s BulkheadSettings) (*Bulkhead, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.MaxInFlight == 0 {
		s.MaxInFlight = 64
	}
	return &Bulkhead{sem: make(chan struct{}, s.MaxInFlight), maxWait: s.MaxWait}, nil
}

// InFlight returns the slots taken now.
func (b *Bulkhead) InFlight() int { return len(b.sem) }

// Acquire takes a slot, waiting up to MaxWait on clock. It returns a
// *BulkheadError (naming upstream) when none frees in time, or the
// cause of ctx's end, at once, when ctx ends first.
func (b *Bulkhead) Acquire(ctx context.Context, clock Clock, upstream string) error {
	select {
	case b.sem <- struct{}{}:
		return nil
	default:
	}
	if b.maxWait <= 0 {
		return &BulkheadError{Upstream: upstream, MaxInFlight: cap(b.sem)}
	}
	start := clock.Now()
	t := clock.NewTimer(b.maxWait)
	defer t.Stop()
	select {
	case b.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("resilience: %q: waiting for a bulkhead slot: %w", upstream, context.Cause(ctx))
	case <-t.C():
		return &BulkheadError{Upstream: upstream, MaxInFlight: cap(b.sem), Waited: clock.Now().Sub(start)}
	}
}

// Release gives a slot back.
func (b *Bulkhead) Release() { <-b.sem }

// Wrap makes the bulkhead a Policy: place it after the retry policy and
// the breaker. A rejection emits EventBulkheadRejected.
func (b *Bulkhead) Wrap(env Env, next Handler) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		if err := b.Acquire(ctx, env.Clock, env.Upstream); err != nil {
			if isRejection(err) {
				emit(ctx, env, Event{Kind: EventBulkheadRejected, Attempt: c.attempt})
			}
			return nil, err
		}
		defer b.Release()
		return next(ctx, c)
	}
}
