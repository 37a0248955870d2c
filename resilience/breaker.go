package resilience

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is a circuit breaker's state. Its numeric value is the
// levee_resilience_breaker_state gauge.
type BreakerState uint8

// Breaker states.
const (
	// BreakerClosed admits every attempt and counts failures.
	BreakerClosed BreakerState = iota
	// BreakerHalfOpen admits HalfOpenProbes attempts at a time after the
	// cooldown; that many successes close it, one failure opens it again.
	BreakerHalfOpen
	// BreakerOpen rejects every attempt, without I/O, until the cooldown
	// ends.
	BreakerOpen
)

// String returns "closed", "half_open" or "open".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half_open"
	case BreakerOpen:
		return "open"
	}
	return "BreakerState(" + strconv.Itoa(int(s)) + ")"
}

// BreakerSettings configure a circuit breaker. The zero value is the
// default: open after 5 consecutive failures, for 30 s, then one probe.
type BreakerSettings struct {
	// ConsecutiveFailures trips the breaker after that many failures in a
	// row. Default 5; negative disables this trigger (then FailureRatio
	// must be set).
	ConsecutiveFailures int
	// FailureRatio, when above 0, also trips the breaker when failures
	// are at least this share of the attempts in Window, once there are
	// at least MinCalls of them. Default 0 (off); at most 1.
	FailureRatio float64
	// Window is the FailureRatio window, counted in 10 buckets. Default
	// 10s; from 1s to 1h.
	Window time.Duration
	// MinCalls is the fewest attempts in Window for FailureRatio to trip.
	// Default 20.
	MinCalls int
	// Cooldown is how long the breaker stays open before admitting
	// probes. Default 30s; at least 1ms.
	Cooldown time.Duration
	// HalfOpenProbes is how many probes a half-open breaker admits at a
	// time, and how many successes close it. Default 1; at most 1000.
	HalfOpenProbes int
	// IsFailure says whether an attempt's outcome counts as a failure.
	// Default: an error (other than a cancellation or a local rejection)
	// or a 5xx status other than 501. Cancelled attempts never count.
	IsFailure func(Outcome) bool
	// OnStateChange, if set, is called after each transition this
	// process sees, with the breaker's name. It must not block.
	OnStateChange func(name string, from, to BreakerState)
	// Store, if set, holds the state so that every replica sharing it
	// sees the same breaker (store/redis/redisresilience). Nil: in-process.
	Store BreakerStore
	// Sync bounds how stale a replica's view of a shared closed breaker
	// may get: a closed breaker consults Store at most this often on the
	// admission path (every outcome is recorded in the Store and returns
	// the current state anyway). Default 1s. Unused without Store.
	Sync time.Duration
}

// Validate reports the first field out of range, naming it.
func (s BreakerSettings) Validate() error {
	switch {
	case s.ConsecutiveFailures < 0 && s.FailureRatio <= 0:
		return errors.New("resilience: Breaker.ConsecutiveFailures is disabled and FailureRatio unset: nothing would trip the breaker")
	case s.ConsecutiveFailures > 1_000_000:
		return fmt.Errorf("resilience: Breaker.ConsecutiveFailures %d is above 1000000", s.ConsecutiveFailures)
	case s.FailureRatio < 0 || s.FailureRatio > 1 || math.IsNaN(s.FailureRatio):
		return fmt.Errorf("resilience: Breaker.FailureRatio %v is out of range 0..1", s.FailureRatio)
	case s.Window != 0 && (s.Window < time.Second || s.Window > time.Hour):
		return fmt.Errorf("resilience: Breaker.Window %v is out of range 1s..1h", s.Window)
	case s.MinCalls < 0 || s.MinCalls > 1_000_000:
		return fmt.Errorf("resilience: Breaker.MinCalls %d is out of range 1..1000000", s.MinCalls)
	case s.Cooldown != 0 && (s.Cooldown < time.Millisecond || s.Cooldown > 24*time.Hour):
		return fmt.Errorf("resilience: Breaker.Cooldown %v is out of range 1ms..24h", s.Cooldown)
	case s.HalfOpenProbes < 0 || s.HalfOpenProbes > 1000:
		return fmt.Errorf("resilience: Breaker.HalfOpenProbes %d is out of range 1..1000", s.HalfOpenProbes)
	case s.Sync < 0:
		return fmt.Errorf("resilience: Breaker.Sync %v is negative", s.Sync)
	}
	return nil
}

// BreakerConfig is the numeric part of BreakerSettings, defaults applied,
// as a BreakerStore needs it.
type BreakerConfig struct {
	ConsecutiveFailures int // 0: trigger off
	FailureRatio        float64
	Window              time.Duration
	MinCalls            int
	Cooldown            time.Duration
	HalfOpenProbes      int
}

// BreakerView is a breaker's state as a BreakerStore reports it.
type BreakerView struct {
	// State is the state after the operation.
	State BreakerState
	// Gen identifies the state period; it changes on every transition,
	// so an outcome of an attempt admitted in an older period is ignored.
	Gen uint64
	// Remaining is the cooldown left when State is BreakerOpen.
	Remaining time.Duration
	// Admitted reports (Acquire only) that the attempt may go.
	Admitted bool
	// Probe reports (Acquire only) that the admitted attempt took a
	// half-open probe slot.
	Probe bool
}

// BreakerRecord is one attempt's end, reported to a BreakerStore.
type BreakerRecord struct {
	// Gen is the BreakerView.Gen the attempt was admitted in.
	Gen uint64
	// Probe is the BreakerView.Probe it was admitted with.
	Probe bool
	// Failure reports that the attempt failed.
	Failure bool
	// Ignore reports that the attempt did not count (cancelled, or
	// rejected further down the chain): only its probe slot is given back.
	Ignore bool
}

// BreakerStore holds breaker state, possibly shared by replicas. now is
// the caller's clock; a store with its own clock (Redis TIME) ignores
// it. Errors leave the state unchanged; the breaker then admits the
// attempt (it fails open to the upstream, never closed on a store
// outage) and records nothing.
type BreakerStore interface {
	// Acquire admits or rejects one attempt on breaker name, moving an
	// open breaker whose cooldown is over to half-open.
	Acquire(ctx context.Context, now time.Time, name string, cfg BreakerConfig) (BreakerView, error)
	// Record reports the end of an attempt that Acquire admitted (or that
	// the breaker admitted from its cached closed view, with Gen the
	// cached generation).
	Record(ctx context.Context, now time.Time, name string, cfg BreakerConfig, r BreakerRecord) (BreakerView, error)
}

// BreakerTicket is an admission of Breaker.Allow, to pass to Done.
type BreakerTicket struct {
	gen   uint64
	probe bool
	skip  bool // the store failed: record nothing
}

// Breaker is a circuit breaker for one upstream. Its open-state check is
// lock-free: while open (cooldown not over), Allow returns the same
// *OpenError with no I/O and no allocation. Safe for concurrent use.
type Breaker struct {
	name      string
	cfg       BreakerConfig
	isFailure func(Outcome) bool
	onChange  func(string, BreakerState, BreakerState)
	store     BreakerStore
	shared    bool
	sync      int64 // ns

	// The cached view: authoritative for the in-process store.
	state    atomic.Uint32
	gen      atomic.Uint64
	until    atomic.Int64 // Unix ns the cooldown ends (open)
	syncedAt atomic.Int64 // Unix ns of the last Store answer
	openErr  atomic.Pointer[OpenError]
	viewMu   sync.Mutex // orders view updates (and their transition reports)
}

// NewBreaker returns a breaker named name (the upstream), or the error of
// s.Validate.
func NewBreaker(name string, s BreakerSettings) (*Breaker, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	cfg := BreakerConfig{ConsecutiveFailures: s.ConsecutiveFailures, FailureRatio: s.FailureRatio, Window: s.Window,
		MinCalls: s.MinCalls, Cooldown: s.Cooldown, HalfOpenProbes: s.HalfOpenProbes}
	switch {
	case cfg.ConsecutiveFailures == 0:
		cfg.ConsecutiveFailures = 5
	case cfg.ConsecutiveFailures < 0:
		cfg.ConsecutiveFailures = 0
	}
	if cfg.Window == 0 {
		cfg.Window = 10 * time.Second
	}
	if cfg.MinCalls == 0 {
		cfg.MinCalls = 20
	}
	if cfg.Cooldown == 0 {
		cfg.Cooldown = 30 * time.Second
	}
	if cfg.HalfOpenProbes == 0 {
		cfg.HalfOpenProbes = 1
	}
	if s.IsFailure == nil {
		s.IsFailure = DefaultIsFailure
	}
	if s.Sync == 0 {
		s.Sync = time.Second
	}
	b := &Breaker{name: name, cfg: cfg, isFailure: s.IsFailure, onChange: s.OnStateChange, store: s.Store, sync: int64(s.Sync)}
	if b.store == nil {
		b.store = NewLocalBreakerStore()
	} else {
		b.shared = true
	}
	return b, nil
}

// DefaultIsFailure is BreakerSettings.IsFailure's default: an error other
// than a cancellation or a local rejection, or a 5xx status other than
// 501 Not Implemented.
func DefaultIsFailure(o Outcome) bool {
	if o.Err != nil {
		return !errors.Is(o.Err, context.Canceled) && !isRejection(o.Err)
	}
	return o.StatusCode >= 500 && o.StatusCode != http.StatusNotImplemented
}

// Name returns the breaker's name.
func (b *Breaker) Name() string { return b.name }

// State returns the state as this process last saw it.
func (b *Breaker) State() BreakerState { return BreakerState(b.state.Load()) }

// Allow asks to admit one attempt at now. It returns a ticket to pass to
// Done, or *OpenError while the breaker is open (or half-open with every
// probe slot taken). An open breaker answers from memory; a shared
// breaker consults its Store when its view is stale (Sync) or the
// cooldown is over; a Store error admits the attempt.
func (b *Breaker) Allow(ctx context.Context, now time.Time) (BreakerTicket, error) {
	t, _, err := b.allow(ctx, now)
	return t, err
}

type transition struct {
	from, to BreakerState
	changed  bool
}

func (b *Breaker) allow(ctx context.Context, now time.Time) (BreakerTicket, []transition, error) {
	ns := now.UnixNano()
	switch BreakerState(b.state.Load()) {
	case BreakerOpen:
		if ns < b.until.Load() {
			return BreakerTicket{}, nil, b.openErr.Load()
		}
	case BreakerClosed:
		if b.shared && ns-b.syncedAt.Load() < b.sync {
			return BreakerTicket{gen: b.gen.Load()}, nil, nil
		}
	}
	v, err := b.store.Acquire(ctx, now, b.name, b.cfg)
	if err != nil {
		return BreakerTicket{skip: true}, nil, nil
	}
	trs := b.update(now, v)
	if !v.Admitted {
		return BreakerTicket{}, trs, b.rejection(now, v)
	}
	return BreakerTicket{gen: v.Gen, probe: v.Probe}, trs, nil
}

// rejection returns the error for a rejected admission in view v.
func (b *Breaker) rejection(now time.Time, v BreakerView) error {
	if e := b.openErr.Load(); e != nil && v.State == BreakerOpen && b.gen.Load() == v.Gen {
		return e
	}
	return &OpenError{Upstream: b.name, Until: now.Add(v.Remaining)}
}

// Done reports the end of an attempt Allow admitted, with its outcome;
// err (if not nil) is the attempt's error when it was cancelled or
// rejected further on, which does not count. A Store error is ignored.
func (b *Breaker) Done(ctx context.Context, now time.Time, t BreakerTicket, o Outcome) {
	b.done(ctx, now, t, BreakerRecord{Gen: t.gen, Probe: t.probe, Failure: b.isFailure(o)})
}

// Release gives back an admission whose attempt did not happen or must
// not count (cancelled by the caller, rejected by a later policy).
func (b *Breaker) Release(ctx context.Context, now time.Time, t BreakerTicket) {
	b.done(ctx, now, t, BreakerRecord{Gen: t.gen, Probe: t.probe, Ignore: true})
}

func (b *Breaker) done(ctx context.Context, now time.Time, t BreakerTicket, r BreakerRecord) []transition {
	if t.skip || (r.Ignore && !r.Probe) {
		return nil
	}
	v, err := b.store.Record(ctx, now, b.name, b.cfg, r)
	if err != nil {
		return nil
	}
	return b.update(now, v)
}

// update installs view v as the cached state and reports the transition
// it implies, calling OnStateChange.
func (b *Breaker) update(now time.Time, v BreakerView) []transition {
	b.viewMu.Lock()
	from := BreakerState(b.state.Load())
	oldGen := b.gen.Load()
	if v.Gen < oldGen { // an answer older than the view: keep the view
		b.viewMu.Unlock()
		return nil
	}
	if v.State == BreakerOpen && (oldGen != v.Gen || from != BreakerOpen || b.openErr.Load() == nil) {
		until := now.Add(v.Remaining)
		b.openErr.Store(&OpenError{Upstream: b.name, Until: until})
		b.until.Store(until.UnixNano())
	}
	b.gen.Store(v.Gen)
	b.state.Store(uint32(v.State))
	b.syncedAt.Store(now.UnixNano())
	b.viewMu.Unlock()
	if from == v.State {
		return nil
	}
	if b.onChange != nil {
		b.onChange(b.name, from, v.State)
	}
	return []transition{{from: from, to: v.State, changed: true}}
}

// Wrap makes the breaker a Policy: place it after the retry policy so
// that it sees each attempt. Rejections emit EventBreakerRejected;
// transitions emit EventBreakerTransition.
func (b *Breaker) Wrap(env Env, next Handler) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		now := c.start // the first attempt starts with the call: spare a clock read
		if c.attempt > 0 {
			now = env.Clock.Now()
		}
		t, trs, err := b.allow(ctx, now)
		b.report(ctx, env, trs)
		if err != nil {
			emit(ctx, env, Event{Kind: EventBreakerRejected, Attempt: c.attempt})
			return nil, err
		}
		resp, err := next(ctx, c)
		r := BreakerRecord{Gen: t.gen, Probe: t.probe}
		if ctx.Err() != nil || isRejection(err) {
			r.Ignore = true
		} else {
			r.Failure = b.isFailure(outcomeOf(resp, err))
		}
		b.report(ctx, env, b.done(ctx, env.Clock.Now(), t, r))
		return resp, err
	}
}

func (b *Breaker) report(ctx context.Context, env Env, trs []transition) {
	for _, tr := range trs {
		emit(ctx, env, Event{Kind: EventBreakerTransition, From: tr.from, To: tr.to})
	}
}

// LocalBreakerStore is the in-process BreakerStore: the default of a
// Breaker without Store. Safe for concurrent use.
type LocalBreakerStore struct {
	mu sync.Mutex
	m  map[string]*localBreaker
}

type localBreaker struct {
	state       BreakerState
	gen         uint64
	consecutive int
	w           window // a: attempts, b: failures
	until       int64  // ns
	probesOut   int
	probesOK    int
}

// NewLocalBreakerStore returns an empty in-process store.
func NewLocalBreakerStore() *LocalBreakerStore {
	return &LocalBreakerStore{m: make(map[string]*localBreaker)}
}

func (s *LocalBreakerStore) get(name string, cfg BreakerConfig) *localBreaker {
	lb := s.m[name]
	if lb == nil {
		lb = &localBreaker{gen: 1, w: newWindow(cfg.Window, 10)}
		s.m[name] = lb
	}
	return lb
}

func (lb *localBreaker) view(now int64) BreakerView {
	v := BreakerView{State: lb.state, Gen: lb.gen}
	if lb.state == BreakerOpen {
		v.Remaining = time.Duration(max(lb.until-now, 0))
	}
	return v
}

func (lb *localBreaker) set(st BreakerState, now int64, cfg BreakerConfig) {
	lb.state = st
	lb.gen++
	lb.consecutive, lb.probesOut, lb.probesOK = 0, 0, 0
	lb.w.reset()
	if st == BreakerOpen {
		lb.until = now + int64(cfg.Cooldown)
	}
}

// Acquire implements BreakerStore.
func (s *LocalBreakerStore) Acquire(_ context.Context, now time.Time, name string, cfg BreakerConfig) (BreakerView, error) {
	ns := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	lb := s.get(name, cfg)
	if lb.state == BreakerOpen && ns >= lb.until {
		lb.set(BreakerHalfOpen, ns, cfg)
	}
	v := lb.view(ns)
	switch lb.state {
	case BreakerClosed:
		v.Admitted = true
	case BreakerHalfOpen:
		if lb.probesOut < cfg.HalfOpenProbes-lb.probesOK {
			lb.probesOut++
			v.Admitted, v.Probe = true, true
		}
	}
	return v, nil
}

// Record implements BreakerStore.
func (s *LocalBreakerStore) Record(_ context.Context, now time.Time, name string, cfg BreakerConfig, r BreakerRecord) (BreakerView, error) {
	ns := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	lb := s.get(name, cfg)
	if r.Gen != lb.gen {
		return lb.view(ns), nil
	}
	switch lb.state {
	case BreakerClosed:
		if r.Ignore {
			break
		}
		if r.Failure {
			lb.consecutive++
			lb.w.add(ns, 1, 1)
		} else {
			lb.consecutive = 0
			lb.w.add(ns, 1, 0)
		}
		if (cfg.ConsecutiveFailures > 0 && lb.consecutive >= cfg.ConsecutiveFailures) ||
			(cfg.FailureRatio > 0 && lb.w.a >= int64(cfg.MinCalls) && float64(lb.w.b) >= cfg.FailureRatio*float64(lb.w.a)) {
			lb.set(BreakerOpen, ns, cfg)
		}
	case BreakerHalfOpen:
		if !r.Probe {
			break
		}
		lb.probesOut--
		switch {
		case r.Ignore:
		case r.Failure:
			lb.set(BreakerOpen, ns, cfg)
		default:
			lb.probesOK++
			if lb.probesOK >= cfg.HalfOpenProbes {
				lb.set(BreakerClosed, ns, cfg)
			}
		}
	}
	return lb.view(ns), nil
}
