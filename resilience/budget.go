package resilience

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// BudgetSettings configure a retry budget. The zero value is the default.
type BudgetSettings struct {
	// Ratio is the share of retries allowed relative to logical calls in
	// the window: retries <= Ratio × calls + MinPerSecond × Window.
	// Default 0.1 (10%, as Envoy's and Finagle's retry budgets; compare
	// gRPC's retry throttling). Negative disables the budget: every call
	// may use all its attempts. At most 10.
	Ratio float64
	// MinPerSecond is the floor: this many retries per second of Window
	// are always allowed, so that a quiet upstream can still be retried.
	// Default 1. Negative means no floor.
	MinPerSecond float64
	// Window is how far back calls and retries count: a whole number of
	// seconds from 1s to 1h. Default 10s.
	Window time.Duration
}

// Validate reports the first field out of range.
func (s BudgetSettings) Validate() error {
	switch {
	case s.Ratio > 10 || math.IsNaN(s.Ratio):
		return fmt.Errorf("resilience: Budget.Ratio %v is above 10", s.Ratio)
	case math.IsNaN(s.MinPerSecond) || s.MinPerSecond > 1e6:
		return fmt.Errorf("resilience: Budget.MinPerSecond %v is out of range", s.MinPerSecond)
	case s.Window != 0 && (s.Window < time.Second || s.Window > time.Hour || s.Window%time.Second != 0):
		return fmt.Errorf("resilience: Budget.Window %v is not a whole number of seconds from 1s to 1h", s.Window)
	}
	return nil
}

// Budget is a retry budget shared by all calls to one upstream: each
// logical call deposits, each retry withdraws, so that at 100% upstream
// failure retries add at most Ratio (plus the floor) to the load instead
// of multiplying it by the attempts. It is safe for concurrent use.
type Budget struct {
	mu    sync.Mutex
	w     window // a: calls, b: retries
	ratio float64
	floor float64
	off   bool
}

// NewBudget returns a budget, or the error of s.Validate.
func NewBudget(s BudgetSettings) (*Budget, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.Window == 0 {
		s.Window = 10 * time.Second
	}
	if s.Ratio == 0 {
		s.Ratio = 0.1
	}
	if s.MinPerSecond == 0 {
		s.MinPerSecond = 1
	}
	return &Budget{
		w:     newWindow(s.Window, int(s.Window/time.Second)),
		ratio: s.Ratio,
		floor: max(s.MinPerSecond, 0) * s.Window.Seconds(),
		off:   s.Ratio < 0,
	}, nil
}

// Call records one logical call at now.
func (b *Budget) Call(now time.Time) {
	if b.off {
		return
	}
	b.mu.Lock()
	b.w.add(now.UnixNano(), 1, 0)
	b.mu.Unlock()
}

// TryRetry withdraws one retry at now and reports whether the budget
// allowed it (false: the retry must not be made).
func (b *Budget) TryRetry(now time.Time) bool {
	if b.off {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.w.advance(now.UnixNano())
	if float64(b.w.b+1) > b.ratio*float64(b.w.a)+b.floor {
		return false
	}
	b.w.add(now.UnixNano(), 0, 1)
	return true
}

// ThrottleSettings configure client-side adaptive throttling (Google SRE
// book, "Handling Overload"). The zero value is the default.
type ThrottleSettings struct {
	// K is the multiplier: attempts are rejected locally with probability
	// max(0, (requests − K·accepts) / (requests + 1)). Default 2; at
	// least 1 (lower rejects while the upstream is healthy).
	K float64
	// Window is how far back requests and accepts count, whole seconds
	// from 1s to 1h. Default 2m.
	Window time.Duration
	// IsAccepted says whether the upstream accepted an attempt. Default:
	// a response with a status below 500 other than 429.
	IsAccepted func(Outcome) bool
}

// Validate reports the first field out of range.
func (s ThrottleSettings) Validate() error {
	switch {
	case s.K != 0 && (s.K < 1 || s.K > 100 || math.IsNaN(s.K)):
		return fmt.Errorf("resilience: Throttle.K %v is out of range 1..100", s.K)
	case s.Window != 0 && (s.Window < time.Second || s.Window > time.Hour || s.Window%time.Second != 0):
		return fmt.Errorf("resilience: Throttle.Window %v is not a whole number of seconds from 1s to 1h", s.Window)
	}
	return nil
}

// Throttle is client-side adaptive throttling for one upstream: when the
// upstream rejects much of what it gets, a share of attempts is rejected
// locally (ThrottledError) without reaching it. Rejected attempts count
// as requests, so the probability keeps up. Safe for concurrent use.
type Throttle struct {
	mu       sync.Mutex
	w        window // a: requests, b: accepts
	k        float64
	accepted func(Outcome) bool
}

// NewThrottle returns a throttle, or the error of s.Validate.
func NewThrottle(s ThrottleSettings) (*Throttle, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.K == 0 {
		s.K = 2
	}
	if s.Window == 0 {
		s.Window = 2 * time.Minute
	}
	if s.IsAccepted == nil {
		s.IsAccepted = func(o Outcome) bool {
			return o.Err == nil && o.StatusCode < 500 && o.StatusCode != http.StatusTooManyRequests
		}
	}
	return &Throttle{w: newWindow(s.Window, int(s.Window/time.Second)), k: s.K, accepted: s.IsAccepted}, nil
}

// Probability returns the local rejection probability at now.
func (t *Throttle) Probability(now time.Time) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.w.advance(now.UnixNano())
	return t.p()
}

func (t *Throttle) p() float64 {
	return max(0, (float64(t.w.a)-t.k*float64(t.w.b))/(float64(t.w.a)+1))
}

// Allow counts one request at now and reports whether it may go to the
// upstream; u is a uniform random number in [0, 1). When it may not, p
// is the rejection probability.
func (t *Throttle) Allow(now time.Time, u float64) (ok bool, p float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.w.advance(now.UnixNano())
	p = t.p()
	t.w.add(now.UnixNano(), 1, 0)
	return u >= p, p
}

// Record counts the outcome of an admitted attempt.
func (t *Throttle) Record(now time.Time, o Outcome) {
	if !t.accepted(o) {
		return
	}
	t.mu.Lock()
	t.w.add(now.UnixNano(), 0, 1)
	t.mu.Unlock()
}

// Wrap makes Throttle a Policy: place it after the retry policy. It
// draws from math/rand/v2 (New draws from RetrySettings.Rand instead, so
// tests can inject it). Cancelled attempts and local rejections by inner
// policies record no outcome; a rejection emits EventThrottled.
func (t *Throttle) Wrap(env Env, next Handler) Handler {
	return t.wrap(env, next, func() float64 { return rand.Float64() })
}

func (t *Throttle) wrap(env Env, next Handler, uniform func() float64) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		if ok, p := t.Allow(env.Clock.Now(), uniform()); !ok {
			emit(ctx, env, Event{Kind: EventThrottled, Attempt: c.attempt})
			return nil, &ThrottledError{Upstream: env.Upstream, Probability: p}
		}
		resp, err := next(ctx, c)
		if ctx.Err() == nil && !isRejection(err) {
			t.Record(env.Clock.Now(), outcomeOf(resp, err))
		}
		return resp, err
	}
}
