package resilience

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/leveehq/levee/ratelimit"
)

// LimitSettings configure a client-side rate limit toward a third
// party's quota, decided by a ratelimit.Store: ratelimit.Local for one
// process, store/redis/redislimit to share one quota among every replica. The
// zero value of each optional field is the default.
type LimitSettings struct {
	// Store decides the demands. Default: a new ratelimit.Local (this
	// process only).
	Store ratelimit.Store
	// Policies are the third party's limits ("100/s burst 100",
	// "5000/day", "concurrency 10"), all charged together, one unit per
	// attempt. Required: 1 to ratelimit.MaxDemands valid policies.
	Policies []ratelimit.Policy
	// Key partitions the state (one API key's quota, say). Default: the
	// upstream name.
	Key string
	// MaxWait is how long an attempt may wait for a slot: when the store
	// says one frees within MaxWait the attempt waits for it instead of
	// failing; beyond, it fails with *PacedError (Reason PacedLimit).
	// Default 1s; negative: never wait.
	MaxWait time.Duration
	// FailClosed makes a store error fail the attempt (wrapped). Default
	// false: a store error admits the attempt unlimited.
	FailClosed bool
}

// Validate reports the first field out of range, naming it.
func (s LimitSettings) Validate() error {
	if len(s.Policies) == 0 || len(s.Policies) > ratelimit.MaxDemands {
		return fmt.Errorf("resilience: Limit.Policies: %d policies; want 1 to %d", len(s.Policies), ratelimit.MaxDemands)
	}
	for i, p := range s.Policies {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("resilience: Limit.Policies[%d]: %w", i, err)
		}
	}
	return nil
}

// Limit is a client-side rate limit toward one upstream. Safe for
// concurrent use.
type Limit struct {
	store      ratelimit.Store
	policies   []ratelimit.Policy
	key        string
	maxWait    time.Duration
	failClosed bool
}

// NewLimit returns a limit, or the error of s.Validate.
func NewLimit(s LimitSettings) (*Limit, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.Store == nil {
		s.Store = ratelimit.NewLocal(ratelimit.LocalOptions{})
	}
	if s.MaxWait == 0 {
		s.MaxWait = time.Second
	}
	return &Limit{store: s.Store, policies: s.Policies, key: s.Key, maxWait: max(s.MaxWait, 0), failClosed: s.FailClosed}, nil
}

func (l *Limit) demands(upstream string) []ratelimit.Demand {
	key := l.key
	if key == "" {
		key = upstream
	}
	ds := make([]ratelimit.Demand, len(l.policies))
	for i, p := range l.policies {
		ds[i] = ratelimit.Demand{Policy: p, Key: key, Cost: 1}
	}
	return ds
}

// Wrap makes the limit a Policy: place it after the retry policy, so
// every attempt (retries included) is charged.
func (l *Limit) Wrap(env Env, next Handler) Handler {
	demands := l.demands(env.Upstream)
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		results := make([]ratelimit.Result, len(demands))
		var waited time.Duration
		for {
			t, err := l.store.Decide(ctx, env.Clock.Now(), demands, results)
			if err != nil {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("resilience: %q: %w", env.Upstream, context.Cause(ctx))
				}
				if l.failClosed || errors.Is(err, ratelimit.ErrInvalidDemand) {
					return nil, fmt.Errorf("resilience: %q: client-side limit: %w", env.Upstream, err)
				}
				return next(ctx, c) // fail open
			}
			lerr := ratelimit.Check(demands, results)
			if lerr == nil {
				if waited > 0 {
					emit(ctx, env, Event{Kind: EventWait, Reason: PacedLimit, Delay: waited, Attempt: c.attempt})
				}
				if t.Holds() {
					defer func() { _ = l.store.Release(context.WithoutCancel(ctx), demands, t) }()
				}
				return next(ctx, c)
			}
			var le *ratelimit.LimitedError
			errors.As(lerr, &le)
			wait := max(le.RetryAfter, time.Millisecond)
			if waited+wait > l.maxWait {
				emit(ctx, env, Event{Kind: EventPaced, Reason: PacedLimit, Delay: wait, Attempt: c.attempt})
				return nil, &PacedError{Upstream: env.Upstream, Reason: PacedLimit, Wait: wait, MaxWait: l.maxWait, Policies: le.Policies}
			}
			if err := sleep(ctx, env.Clock, wait); err != nil {
				return nil, fmt.Errorf("resilience: %q: waiting for the client-side limit: %w", env.Upstream, err)
			}
			waited += wait
		}
	}
}
