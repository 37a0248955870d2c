package resilience

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/ratelimit"
)

// PauseStore holds per-upstream pauses, possibly shared by replicas
// (store/redis/redisresilience), so that one 429 pauses every caller everywhere.
// now is the caller's clock; a store with its own clock ignores it.
type PauseStore interface {
	// Pause makes upstream paused for d from now. It extends a pause in
	// force, never shortens it.
	Pause(ctx context.Context, now time.Time, upstream string, d time.Duration) error
	// Paused returns how long upstream stays paused; 0 when it is not.
	Paused(ctx context.Context, now time.Time, upstream string) (time.Duration, error)
}

// LocalPauseStore is the in-process PauseStore. Safe for concurrent use.
type LocalPauseStore struct {
	mu sync.Mutex
	m  map[string]int64 // Unix ns the pause ends
}

// NewLocalPauseStore returns an empty in-process store.
func NewLocalPauseStore() *LocalPauseStore { return &LocalPauseStore{m: make(map[string]int64)} }

// Pause implements PauseStore.
func (s *LocalPauseStore) Pause(_ context.Context, now time.Time, upstream string, d time.Duration) error {
	until := now.Add(d).UnixNano()
	s.mu.Lock()
	if until > s.m[upstream] {
		s.m[upstream] = until
	}
	s.mu.Unlock()
	return nil
}

// Paused implements PauseStore.
func (s *LocalPauseStore) Paused(_ context.Context, now time.Time, upstream string) (time.Duration, error) {
	s.mu.Lock()
	until, ok := s.m[upstream]
	if ok && until <= now.UnixNano() {
		delete(s.m, upstream)
	}
	s.mu.Unlock()
	return time.Duration(max(until-now.UnixNano(), 0)), nil
}

// PaceSettings configure pausing and pacing toward an upstream. The zero
// value is the default.
type PaceSettings struct {
	// Store holds pauses. Default: in-process (NewLocalPauseStore); use
	// the Redis store so a 429 pauses every replica.
	Store PauseStore
	// MaxWait is how long an attempt may wait for a pause to end or for
	// its paced slot; beyond, it fails at once with *PacedError.
	// Default 1s; negative: never wait.
	MaxWait time.Duration
	// MaxPause caps a pause (a 429's Retry-After, an announced reset).
	// Default 5m.
	MaxPause time.Duration
	// IgnoreQuotaHeaders turns off reading the upstream's RateLimit /
	// RateLimit-Policy and X-RateLimit-Remaining / X-RateLimit-Reset
	// fields; only 429 + Retry-After then pauses.
	IgnoreQuotaHeaders bool
}

// Validate reports the first field out of range, naming it.
func (s PaceSettings) Validate() error {
	if s.MaxPause < 0 {
		return fmt.Errorf("resilience: Pace.MaxPause %v is negative", s.MaxPause)
	}
	return nil
}

// Pacer pauses every caller of one upstream when it answers 429 with
// Retry-After, or announces that no quota remains (RateLimit r=0 with t,
// X-RateLimit-Remaining: 0 with a reset), and paces attempts to stay
// under an announced remaining quota: with r units left for t, attempts
// are spaced t/r apart in this process. Safe for concurrent use.
type Pacer struct {
	store    PauseStore
	maxWait  time.Duration
	maxPause time.Duration
	headers  bool

	pausedUntil atomic.Int64 // Unix ns; a local cache of the last pause seen

	mu       sync.Mutex
	interval int64 // ns between attempts, 0: no pacing
	validTo  int64 // Unix ns the interval applies until
	next     int64 // Unix ns of the next free slot
}

// NewPacer returns a pacer, or the error of s.Validate.
func NewPacer(s PaceSettings) (*Pacer, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.Store == nil {
		s.Store = NewLocalPauseStore()
	}
	if s.MaxWait == 0 {
		s.MaxWait = time.Second
	}
	if s.MaxPause == 0 {
		s.MaxPause = 5 * time.Minute
	}
	return &Pacer{store: s.Store, maxWait: max(s.MaxWait, 0), maxPause: s.MaxPause, headers: !s.IgnoreQuotaHeaders}, nil
}

// reserve returns the wait for a paced slot at now (ns), taking the slot
// only if the wait is within maxWait.
func (p *Pacer) reserve(now int64) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.interval == 0 || now >= p.validTo {
		return 0, true
	}
	slot := max(p.next, now)
	wait := time.Duration(slot - now)
	if wait > p.maxWait {
		return wait, false
	}
	p.next = slot + p.interval
	return wait, true
}

func (p *Pacer) setPacing(now int64, remaining int64, reset time.Duration) {
	p.mu.Lock()
	p.interval = int64(reset) / remaining
	p.validTo = now + int64(reset)
	p.mu.Unlock()
}

func (p *Pacer) pause(ctx context.Context, env Env, now time.Time, d time.Duration, reason string) {
	d = min(d, p.maxPause)
	if d <= 0 {
		return
	}
	if until := now.Add(d).UnixNano(); until > p.pausedUntil.Load() {
		p.pausedUntil.Store(until)
	}
	_ = p.store.Pause(context.WithoutCancel(ctx), now, env.Upstream, d)
	emit(ctx, env, Event{Kind: EventPause, Reason: reason, Delay: d})
}

// Wrap makes the pacer a Policy: place it after the retry policy.
func (p *Pacer) Wrap(env Env, next Handler) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		now := env.Clock.Now()
		var paused time.Duration
		if until := p.pausedUntil.Load(); until > now.UnixNano() {
			paused = time.Duration(until - now.UnixNano())
		} else if d, err := p.store.Paused(ctx, now, env.Upstream); err == nil && d > 0 {
			paused = d
			p.pausedUntil.Store(now.Add(d).UnixNano())
		}
		if paused > 0 {
			if paused > p.maxWait {
				emit(ctx, env, Event{Kind: EventPaced, Reason: PacedPause, Delay: paused, Attempt: c.attempt})
				return nil, &PacedError{Upstream: env.Upstream, Reason: PacedPause, Wait: paused, MaxWait: p.maxWait}
			}
			emit(ctx, env, Event{Kind: EventWait, Reason: PacedPause, Delay: paused, Attempt: c.attempt})
			if err := sleep(ctx, env.Clock, paused); err != nil {
				return nil, fmt.Errorf("resilience: %q: paused: %w", env.Upstream, err)
			}
			now = env.Clock.Now()
		}
		if wait, ok := p.reserve(now.UnixNano()); !ok {
			emit(ctx, env, Event{Kind: EventPaced, Reason: PacedPacing, Delay: wait, Attempt: c.attempt})
			return nil, &PacedError{Upstream: env.Upstream, Reason: PacedPacing, Wait: wait, MaxWait: p.maxWait}
		} else if wait > 0 {
			emit(ctx, env, Event{Kind: EventWait, Reason: PacedPacing, Delay: wait, Attempt: c.attempt})
			if err := sleep(ctx, env.Clock, wait); err != nil {
				return nil, fmt.Errorf("resilience: %q: pacing: %w", env.Upstream, err)
			}
		}
		resp, err := next(ctx, c)
		if err != nil || resp == nil {
			return resp, err
		}
		now = env.Clock.Now()
		if resp.StatusCode == http.StatusTooManyRequests {
			if ra, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), now); ok {
				p.pause(ctx, env, now, ra, "retry_after")
				return resp, nil
			}
		}
		if p.headers {
			if q, ok := ParseQuota(resp.Header, now); ok && q.Reset > 0 {
				if q.Remaining == 0 {
					p.pause(ctx, env, now, q.Reset, "ratelimit_header")
				} else {
					p.setPacing(now.UnixNano(), q.Remaining, q.Reset)
				}
			}
		}
		return resp, nil
	}
}

// Quota is what an upstream announced about its remaining quota.
type Quota struct {
	// Remaining is the units left (the most restrictive policy's).
	Remaining int64
	// Reset is how long until the quota resets; 0 when unknown.
	Reset time.Duration
}

// ParseQuota reads the quota an upstream announced in its response
// header, in order of preference:
//
//   - RateLimit (draft-ietf-httpapi-ratelimit-headers, structured
//     fields, e.g. `"default";r=0;t=2`), taking the member with the
//     fewest remaining units; a member without t takes the window w of
//     its RateLimit-Policy, if announced;
//   - RateLimit-Remaining / RateLimit-Reset (earlier drafts);
//   - X-RateLimit-Remaining / X-RateLimit-Reset, where a reset above
//     10^9 is a Unix time in seconds (GitHub's form) and otherwise a delay
//     in seconds (decimals allowed).
//
// It reports false when none is present or parseable; a field that fails
// to parse is ignored entirely (RFC 8941), and the next source is tried.
func ParseQuota(h http.Header, now time.Time) (Quota, bool) {
	if vs := h.Values(ratelimit.HeaderState); len(vs) > 0 {
		if states, err := ratelimit.ParseStateField(strings.Join(vs, ", ")); err == nil && len(states) > 0 {
			best := states[0]
			for _, s := range states[1:] {
				if s.Remaining < best.Remaining {
					best = s
				}
			}
			q := Quota{Remaining: best.Remaining, Reset: max(best.Reset, 0)}
			if best.Reset < 0 {
				if pols, err := ratelimit.ParsePolicyField(strings.Join(h.Values(ratelimit.HeaderPolicy), ", ")); err == nil {
					for _, p := range pols {
						if p.Name == best.Name {
							q.Reset = p.Window
						}
					}
				}
			}
			return q, true
		}
	}
	for _, pair := range [...][2]string{{"Ratelimit-Remaining", "Ratelimit-Reset"}, {"X-Ratelimit-Remaining", "X-Ratelimit-Reset"}} {
		rem, ok := parseCount(h.Get(pair[0]))
		if !ok {
			continue
		}
		q := Quota{Remaining: rem}
		if r, ok := parseReset(h.Get(pair[1]), now); ok {
			q.Reset = r
		}
		return q, true
	}
	return Quota{}, false
}

func parseCount(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 18 {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// parseReset reads a reset as delay seconds (decimals allowed) or, above
// 10^9, Unix seconds.
func parseReset(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 24 {
		return 0, false
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f != f || f > 1e12 {
		return 0, false
	}
	if f > 1e9 {
		d := time.Unix(int64(f), 0).Sub(now)
		return max(d, 0), true
	}
	return min(time.Duration(f*float64(time.Second)), ratelimit.MaxPeriod), true
}
