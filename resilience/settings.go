package resilience

import (
	"fmt"
	"net/http"
	"time"
)

// Settings configure the standard chain for one upstream (see New). The
// zero value is a usable default: a 30 s overall timeout, 5 s per
// attempt, 3 attempts with full-jitter backoff, Retry-After capped at
// 20 s, a 10% retry budget; optional policies (nil) are off.
type Settings struct {
	// Name names the upstream in errors, events and metrics, and keys
	// shared state (breaker, pauses). Default "default".
	Name string
	// Timeout bounds the whole call (every attempt and wait). Default
	// 30s; negative: only the caller's context bounds it.
	Timeout time.Duration
	// AttemptTimeout bounds each attempt, reading the body included
	// (unless Call.EnforcesDeadline). Default 5s; negative: only the
	// overall deadline.
	AttemptTimeout time.Duration
	// Retry configures retries.
	Retry RetrySettings
	// Budget configures the retry budget (Ratio < 0 turns it off).
	Budget BudgetSettings
	// Throttle, if set, turns on client-side adaptive throttling.
	Throttle *ThrottleSettings
	// Breaker, if set, puts a circuit breaker on the upstream.
	Breaker *BreakerSettings
	// Bulkhead, if set, bounds the attempts in flight.
	Bulkhead *BulkheadSettings
	// Pace, if set, pauses every caller on a 429 with Retry-After and
	// paces to the upstream's announced quota.
	Pace *PaceSettings
	// Limit, if set, applies a client-side rate limit (the third party's
	// quota, shared through a ratelimit.Store).
	Limit *LimitSettings
	// Stale, if set, serves the last good response of a safe method when
	// the upstream fails (stale-if-error).
	Stale *StaleSettings
	// Secondary, if set, re-runs a failed call on a secondary upstream.
	Secondary *SecondarySettings
	// Clock is the time source. Default SystemClock().
	Clock Clock
	// Observer receives attempts and events (resilience/tracing,
	// resilience/metrics, or Observers of both). Default: none.
	Observer Observer
}

func (s Settings) timeouts() (overall, attempt time.Duration) {
	overall, attempt = s.Timeout, s.AttemptTimeout
	if overall == 0 {
		overall = 30 * time.Second
	}
	if attempt == 0 {
		attempt = 5 * time.Second
	}
	return overall, attempt
}

// Validate reports the first invalid field, naming it: each part's own
// Validate, and a retry policy whose attempts and computed backoff can
// outlast the overall Timeout (MaxAttempts × AttemptTimeout +
// (MaxAttempts − 1) × MaxDelay > Timeout).
func (s Settings) Validate() error {
	overall, attempt := s.timeouts()
	if err := s.Retry.Validate(); err != nil {
		return err
	}
	if err := s.Budget.Validate(); err != nil {
		return err
	}
	if overall > 0 && attempt > overall {
		return fmt.Errorf("resilience: AttemptTimeout %v is above Timeout %v", attempt, overall)
	}
	if r := s.Retry.withDefaults(); overall > 0 && attempt > 0 {
		n := time.Duration(r.MaxAttempts)
		if worst := n*attempt + (n-1)*r.MaxDelay; worst > overall {
			return fmt.Errorf("resilience: Retry.MaxAttempts %d × AttemptTimeout %v + %d × Retry.MaxDelay %v = %v exceeds Timeout %v",
				r.MaxAttempts, attempt, r.MaxAttempts-1, r.MaxDelay, worst, overall)
		}
	}
	type validator interface{ Validate() error }
	for _, v := range []struct {
		set bool
		v   validator
	}{
		{s.Throttle != nil, ptrOr(s.Throttle)},
		{s.Breaker != nil, ptrOr(s.Breaker)},
		{s.Bulkhead != nil, ptrOr(s.Bulkhead)},
		{s.Pace != nil, ptrOr(s.Pace)},
		{s.Limit != nil, ptrOr(s.Limit)},
		{s.Stale != nil, ptrOr(s.Stale)},
		{s.Secondary != nil, ptrOr(s.Secondary)},
	} {
		if v.set {
			if err := v.v.Validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

func ptrOr[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// New validates s and returns an executor running the standard chain,
// outermost first:
//
//	Stale → Secondary → Retry (AutoKey, Budget) → Throttle → Breaker →
//	Pace → Limit → Bulkhead → AttemptTimeout → (Observer) → Send
//
// The overall Timeout covers everything. Policies before Retry run once
// per call and see its final outcome; those after it run once per
// attempt, so every retry is itself admitted by the throttle, the
// breaker, the pause, the quota and the bulkhead (a retry can never
// bypass an open breaker), and the per-attempt timeout bounds each try.
// The cheap, I/O-free rejections come first (throttle, open breaker);
// the shared quota is charged only for an attempt that the breaker let
// through; a bulkhead slot is held only while the attempt is in flight.
// It fails with the first error of s.Validate.
func New(s Settings) (*Executor, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	overall, attempt := s.timeouts()
	env := Env{Upstream: s.Name, Clock: s.Clock, Observer: s.Observer, Timeout: overall}
	if env.Upstream == "" {
		env.Upstream = "default"
	}
	r := s.Retry.withDefaults()
	budget, err := NewBudget(s.Budget)
	if err != nil {
		return nil, err
	}
	var (
		chain []Policy
		parts Parts
	)
	parts.Budget = budget
	if s.Stale != nil {
		if parts.Stale, err = NewStale(*s.Stale); err != nil {
			return nil, err
		}
		chain = append(chain, parts.Stale)
	}
	if s.Secondary != nil {
		chain = append(chain, Secondary(*s.Secondary))
	}
	chain = append(chain, Retry(r, budget))
	if s.Throttle != nil {
		if parts.Throttle, err = NewThrottle(*s.Throttle); err != nil {
			return nil, err
		}
		th, rnd := parts.Throttle, r.Rand
		chain = append(chain, PolicyFunc(func(env Env, next Handler) Handler {
			return th.wrap(env, next, func() float64 { return float64(rnd(1<<53)) / (1 << 53) })
		}))
	}
	if s.Breaker != nil {
		if parts.Breaker, err = NewBreaker(env.Upstream, *s.Breaker); err != nil {
			return nil, err
		}
		chain = append(chain, parts.Breaker)
	}
	if s.Pace != nil {
		if parts.Pacer, err = NewPacer(*s.Pace); err != nil {
			return nil, err
		}
		chain = append(chain, parts.Pacer)
	}
	if s.Limit != nil {
		if parts.Limit, err = NewLimit(*s.Limit); err != nil {
			return nil, err
		}
		chain = append(chain, parts.Limit)
	}
	if s.Bulkhead != nil {
		if parts.Bulkhead, err = NewBulkhead(*s.Bulkhead); err != nil {
			return nil, err
		}
		chain = append(chain, parts.Bulkhead)
	}
	chain = append(chain, AttemptTimeout(max(attempt, 0)))
	e := NewExecutor(env, chain...)
	e.keyHeader = http.CanonicalHeaderKey(r.KeyHeader) // Transport looks it up in the map directly
	e.parts = parts
	e.needsTarget = s.Stale != nil
	return e, nil
}

// Parts are the stateful policies of an executor built by New (nil when
// off), for inspection: a breaker's state, a bulkhead's load.
type Parts struct {
	Budget   *Budget
	Throttle *Throttle
	Breaker  *Breaker
	Pacer    *Pacer
	Limit    *Limit
	Bulkhead *Bulkhead
	Stale    *Stale
}

// Parts returns the executor's stateful policies (zero for an executor
// from NewExecutor).
func (e *Executor) Parts() Parts { return e.parts }

// NeedsTarget reports whether the chain reads Call.Target (a
// stale-if-error cache is on), so callers can skip computing it.
func (e *Executor) NeedsTarget() bool { return e.needsTarget }
