package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/leveehq/levee/internal/problem"
)

// Rule attaches a policy to requests.
type Rule struct {
	// Policy is the limit; its Name must be unique among the rules.
	Policy Policy
	// Key partitions the policy's state; see ClientIP, Header, Route,
	// Constant, Join and ParseKey. Required.
	Key KeyFunc
	// Cost returns the units a request consumes. Default: 1. A negative
	// cost counts as 0. A cost above the burst is denied outright (429
	// without Retry-After: waiting cannot help).
	Cost func(*http.Request) int64
	// Shadow decides and counts but never denies (Outcome
	// ShadowDenied), and is left out of the response headers.
	Shadow bool
	// OnStoreError is what happens when the store cannot decide. Default
	// FailOpen.
	OnStoreError FailureMode
	// Fallback is the policy the in-process fallback enforces per replica
	// under FailOpen. Its Name is ignored (the rule's name is used); its
	// Kind must match. Zero: Policy.Share(Options.Replicas), the policy
	// divided among the replicas.
	Fallback Policy
}

// Options configure Middleware. The zero value of every field but Rules
// is a sensible default.
type Options struct {
	// Rules are the policies applied to every request, at most MaxDemands.
	Rules []Rule
	// Store decides. Default: a new Local (limits per process). Share one
	// Store (and Fallback) between the middlewares built on each
	// configuration reload: state is keyed by policy name, so a reload
	// keeps it.
	Store Store
	// Fallback decides for FailOpen rules when Store fails. Default: a new
	// Local.
	Fallback *Local
	// Now is the clock passed to stores (Redis ignores it and uses TIME).
	// Default time.Now.
	Now func() time.Time
	// Timeout bounds how long a decision waits for a store that answers
	// nothing at all: when a whole Timeout passes without the store
	// answering any decision sharing the Breaker, the decision is
	// abandoned (ErrStoreStalled) and takes its rules' failure mode. A
	// store that keeps answering others is slow, not down, and the
	// decision keeps waiting for it, up to MaxWait. Timeout also bounds
	// each Release. Default 250ms (a shorter silence is within what CPU
	// contention on a busy host produces: 50 ms sent healthy decisions to
	// the fallback); negative: no bound beyond the request's context. A store whose client ignores context deadlines cannot
	// honour it; see store/redis/redislimit.
	Timeout time.Duration
	// MaxWait bounds every decision, however busy the store: past it,
	// this one request takes its rules' failure mode (and the failure
	// counts toward opening the Breaker). Default 1s, at least Timeout.
	MaxWait time.Duration
	// Breaker decides when the store counts as down; share one between
	// the middlewares of every route and reload. Default: a new Breaker
	// with OpenFor = StoreBackoff.
	Breaker *Breaker
	// StoreBackoff is the OpenFor of the default Breaker: how long, after
	// evidence that the store is down (a refused or reset connection, or
	// BreakerOptions.Failures consecutive failures), requests skip the
	// store and go straight to the failure modes. Default 1s; negative:
	// always try. Ignored when Breaker is set.
	StoreBackoff time.Duration
	// Replicas is the number of replicas sharing the store, an estimate.
	// A rule without a Fallback falls back to its Policy divided by
	// Replicas (see Policy.Share), so that a fleet in an outage admits
	// about the shared limit rather than Replicas times it. Default 1.
	Replicas int
	// UnavailableRetryAfter is the Retry-After of the 503 sent for
	// FailClosed rules. Default 1s.
	UnavailableRetryAfter time.Duration
	// OnDecision, if set, is called synchronously once per applied rule
	// per request, for metrics and logs.
	OnDecision func(Event)
}

// DefaultTimeout is the default of Options.Timeout.
const DefaultTimeout = 250 * time.Millisecond

// Outcome is what one rule decided for one request.
type Outcome uint8

const (
	// OutcomeAllowed: the policy admits the request.
	OutcomeAllowed Outcome = iota + 1
	// OutcomeDenied: the policy denies the request (429).
	OutcomeDenied
	// OutcomeShadowDenied: a shadow policy would have denied it.
	OutcomeShadowDenied
	// OutcomeError: the store failed and the rule fails closed (503).
	OutcomeError
)

// String returns "allowed", "denied", "shadow_denied" or "error".
func (o Outcome) String() string {
	switch o {
	case OutcomeAllowed:
		return "allowed"
	case OutcomeDenied:
		return "denied"
	case OutcomeShadowDenied:
		return "shadow_denied"
	case OutcomeError:
		return "error"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Event reports one rule's decision for one request.
type Event struct {
	// Request is the request decided.
	Request *http.Request
	// Policy is the rule's policy name.
	Policy string
	// Outcome is what the rule decided.
	Outcome Outcome
	// Fallback reports that the store failed and the in-process fallback
	// decided (FailOpen).
	Fallback bool
	// Err is the store error, when Fallback or Outcome is OutcomeError.
	Err error
	// Latency is the time spent deciding the request, store call and
	// fallback included.
	Latency time.Duration
}

type middleware struct {
	rules         []Rule
	store         Store
	local         bool // store is a *Local: no timeout needed
	fallback      *Local
	now           func() time.Time
	timeout       time.Duration
	maxWait       time.Duration
	breaker       *Breaker
	unavailRetry  time.Duration
	onDecision    func(Event)
	fallbackRules []Policy
}

// Middleware returns net/http middleware enforcing opts.Rules on every
// request:
//
//   - each rule whose Key applies contributes a demand, and all of them are
//     decided by one Store.Decide: atomically, in one round trip for
//     Redis; a request denied by any non-shadow policy charges none;
//   - denied: 429 application/problem+json (type rate-limited) naming the
//     violated policies in "violated-policies", with Retry-After in whole
//     seconds rounded up from the longest wait any of them needs;
//   - every decided response, allowed or denied, carries RateLimit-Policy
//     and RateLimit for the tightest non-shadow policy (the violated one
//     with the longest wait, else the one with the fewest units left);
//   - concurrency slots are released when the handler returns or panics;
//   - the store failing (silent for Timeout, refusing connections, past
//     MaxWait, an error, or the Breaker open): FailClosed rules answer 503
//     (type rate-limit-store-unavailable) with Retry-After; if none
//     applies, the request is decided by Fallback instead. A store that is
//     slow but answering is waited for, up to MaxWait.
//
// It returns an error naming the rule and field if opts are invalid.
func Middleware(opts Options) (func(http.Handler) http.Handler, error) {
	m, err := newMiddleware(opts)
	if err != nil {
		return nil, err
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { m.serve(w, r, next) })
	}, nil
}

func newMiddleware(opts Options) (*middleware, error) {
	if len(opts.Rules) > MaxDemands {
		return nil, fmt.Errorf("ratelimit: %d rules; at most %d", len(opts.Rules), MaxDemands)
	}
	m := &middleware{
		rules: append([]Rule(nil), opts.Rules...), store: opts.Store, fallback: opts.Fallback, now: opts.Now,
		timeout: opts.Timeout, maxWait: opts.MaxWait, breaker: opts.Breaker, unavailRetry: opts.UnavailableRetryAfter,
		onDecision: opts.OnDecision,
	}
	if opts.Replicas < 0 {
		return nil, fmt.Errorf("ratelimit: Replicas %d is negative", opts.Replicas)
	}
	seen := make(map[string]bool, len(m.rules))
	for i := range m.rules {
		ru := &m.rules[i]
		if err := ru.Policy.Validate(); err != nil {
			return nil, fmt.Errorf("ratelimit: rule %d: %w", i, err)
		}
		name := ru.Policy.Name
		if seen[name] {
			return nil, fmt.Errorf("ratelimit: rule %d: policy name %q is used twice", i, name)
		}
		seen[name] = true
		if ru.Key == nil {
			return nil, fmt.Errorf("ratelimit: rule %d (%q): Key is nil", i, name)
		}
		if ru.OnStoreError != FailOpen && ru.OnStoreError != FailClosed {
			return nil, fmt.Errorf("ratelimit: rule %d (%q): OnStoreError %v is unknown", i, name, ru.OnStoreError)
		}
		fb := ru.Fallback
		if fb == (Policy{}) {
			fb = ru.Policy.Share(opts.Replicas)
		}
		fb.Name = name
		if err := fb.Validate(); err != nil {
			return nil, fmt.Errorf("ratelimit: rule %d (%q): Fallback: %w", i, name, err)
		}
		if fb.Kind != ru.Policy.Kind {
			return nil, fmt.Errorf("ratelimit: rule %d (%q): Fallback is a %v policy, Policy a %v policy", i, name, fb.Kind, ru.Policy.Kind)
		}
		m.fallbackRules = append(m.fallbackRules, fb)
	}
	if m.store == nil {
		m.store = NewLocal(LocalOptions{})
	}
	m.local = m.store.Features().InProcess
	if m.fallback == nil {
		m.fallback = NewLocal(LocalOptions{})
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.timeout == 0 {
		m.timeout = DefaultTimeout
	}
	if m.maxWait <= 0 {
		m.maxWait = time.Second
	}
	m.maxWait = max(m.maxWait, m.timeout)
	if m.breaker == nil {
		m.breaker = NewBreaker(BreakerOptions{OpenFor: opts.StoreBackoff})
	}
	if m.unavailRetry <= 0 {
		m.unavailRetry = time.Second
	}
	return m, nil
}

// failClosed answers 503 when the store could not decide and one of the
// request's non-shadow policies fails closed, reporting whether it did.
func (m *middleware) failClosed(w http.ResponseWriter, r *http.Request, demands []Demand, ruleOf []int, err error, start time.Time) bool {
	var closed []string
	for i := range demands {
		if !demands[i].Shadow && m.rules[ruleOf[i]].OnStoreError == FailClosed {
			closed = append(closed, demands[i].Policy.Name)
		}
	}
	if len(closed) == 0 {
		return false
	}
	lat := time.Since(start)
	for i := range demands {
		m.emit(Event{Request: r, Policy: demands[i].Policy.Name, Outcome: OutcomeError, Err: err, Latency: lat})
	}
	problem.Write(w, problem.Problem{Type: problem.RateLimitStoreUnavailable, Status: http.StatusServiceUnavailable,
		Title:      "Rate limit store unavailable",
		Detail:     fmt.Sprintf("the rate limit store could not decide and %s %s fail closed", plural(len(closed), "policy", "policies"), quoteList(closed)),
		Extra:      map[string]any{"policies": closed},
		RetryAfter: m.unavailRetry})
	return true
}

// fallbackDemands turns the demands into their fallback policies' (in
// place). The fallback's policies may have a smaller burst than a
// request's cost: the same check as for the store's policies, so stop
// reports that the request was answered.
func (m *middleware) fallbackDemands(w http.ResponseWriter, r *http.Request, demands []Demand, ruleOf []int, start time.Time) (kept []Demand, keptRules []int, stop bool) {
	kept, keptRules = demands[:0], ruleOf[:0]
	for i := range demands {
		d := demands[i]
		d.Policy = m.fallbackRules[ruleOf[i]]
		if m.overBurst(w, r, d, ruleOf[i], false, start) {
			if d.Shadow {
				continue
			}
			return nil, nil, true
		}
		kept, keptRules = append(kept, d), append(keptRules, ruleOf[i])
	}
	return kept, keptRules, false
}

// answer reports every demand's outcome, sets the RateLimit fields of the
// tightest policy, and answers 429 when the request is not admitted; it
// reports whether the request may go on.
func (m *middleware) answer(w http.ResponseWriter, r *http.Request, demands []Demand, results []Result, fallback bool, cause error, start time.Time) bool {
	admitted := Admitted(demands, results)
	lat := time.Since(start)
	var violated []string
	var retry time.Duration
	best := -1
	for i := range demands {
		res := &results[i]
		ev := Event{Request: r, Policy: demands[i].Policy.Name, Outcome: OutcomeAllowed, Fallback: fallback, Err: cause, Latency: lat}
		switch {
		case res.Allowed:
		case demands[i].Shadow:
			ev.Outcome = OutcomeShadowDenied
		default:
			ev.Outcome = OutcomeDenied
			violated = append(violated, demands[i].Policy.Name)
			retry = max(retry, res.RetryAfter)
		}
		m.emit(ev)
		if demands[i].Shadow {
			continue
		}
		if best < 0 || tighter(admitted, res, &results[best]) {
			best = i
		}
	}
	if best >= 0 {
		SetHeaders(w.Header(), demands[best].Policy, results[best])
	}
	if !admitted {
		problem.Write(w, problem.Problem{Type: problem.RateLimited, Status: http.StatusTooManyRequests,
			Title:      "Too many requests",
			Detail:     fmt.Sprintf("rate limit exceeded for %s %s; retry after %d s", plural(len(violated), "policy", "policies"), quoteList(violated), problem.RetryAfterSeconds(retry)),
			Extra:      map[string]any{problem.ViolatedPolicies: violated},
			RetryAfter: retry})
		return false
	}
	return true
}

// overBurst handles a rate or calendar demand whose cost exceeds its
// policy's burst (or quota), which no wait can ever admit: a shadow
// demand is reported and should be dropped, any other is answered 429,
// with the RateLimit fields of the policy's current state (read without
// charging; from the fallback when the store is skipped or fails) and no
// Retry-After. It reports whether d was such a demand. rule is d's rule
// index; fromStore says whether d.Policy is the store's (else the
// fallback's).
func (m *middleware) overBurst(w http.ResponseWriter, r *http.Request, d Demand, rule int, fromStore bool, start time.Time) bool {
	if d.Policy.Kind == KindConcurrency || d.Cost <= d.Policy.burst() {
		return false
	}
	if d.Shadow {
		m.emit(Event{Request: r, Policy: d.Policy.Name, Outcome: OutcomeShadowDenied, Latency: time.Since(start)})
		return true
	}
	p, res := m.peek(r, d, rule, fromStore)
	SetHeaders(w.Header(), p, res)
	m.emit(Event{Request: r, Policy: d.Policy.Name, Outcome: OutcomeDenied, Latency: time.Since(start)})
	problem.Write(w, problem.Problem{Type: problem.RateLimited, Status: http.StatusTooManyRequests,
		Title: "Too many requests",
		Detail: fmt.Sprintf("this request costs %d units, more than the burst of %d allowed by policy %q (%s): it can never be admitted",
			d.Cost, d.Policy.burst(), d.Policy.Name, d.Policy),
		Extra: map[string]any{problem.ViolatedPolicies: []string{d.Policy.Name}}})
	return true
}

// peek reads the state of d's policy without charging it (a demand of
// cost 0), from the store when fromStore and it answers, else from the
// fallback with the rule's fallback policy.
func (m *middleware) peek(r *http.Request, d Demand, rule int, fromStore bool) (Policy, Result) {
	d.Cost = 0
	var res [1]Result
	now := m.now()
	if fromStore {
		var err error
		switch {
		case m.local:
			_, err = m.store.Decide(r.Context(), now, []Demand{d}, res[:])
		case m.breaker.Open(now):
			err = errStoreBackoff
		default:
			_, err = m.breaker.decide(r.Context(), m.store, now, m.timeout, m.maxWait, []Demand{d}, res[:])
		}
		if err == nil {
			return d.Policy, res[0]
		}
		d.Policy = m.fallbackRules[rule]
	}
	_, _ = m.fallback.Decide(r.Context(), now, []Demand{d}, res[:]) // a Local fails only on invalid demands
	return d.Policy, res[0]
}

func (m *middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	start := time.Now()
	demands := make([]Demand, 0, len(m.rules))
	var ruleBuf [MaxDemands]int
	ruleOf := ruleBuf[:0]
	for i := range m.rules {
		ru := &m.rules[i]
		key, ok := ru.Key(r)
		if !ok {
			continue
		}
		cost := int64(1)
		if ru.Cost != nil {
			cost = max(ru.Cost(r), 0)
		}
		d := Demand{Policy: ru.Policy, Key: key, Cost: cost, Shadow: ru.Shadow}
		if m.overBurst(w, r, d, i, true, start) {
			if d.Shadow {
				continue
			}
			return
		}
		demands = append(demands, d)
		ruleOf = append(ruleOf, i)
	}
	if len(demands) == 0 {
		next.ServeHTTP(w, r)
		return
	}

	results := make([]Result, len(demands))
	now := m.now()
	store := m.store
	var (
		tk       Ticket
		err      error
		cause    error // the store failure, when the fallback decided
		fallback bool
	)
	switch {
	case m.local:
		tk, err = store.Decide(r.Context(), now, demands, results)
	case m.breaker.Open(now):
		err = errStoreBackoff
	default:
		tk, err = m.breaker.decide(r.Context(), store, now, m.timeout, m.maxWait, demands, results)
		if err != nil && r.Context().Err() != nil {
			return // the client went away; nothing to answer, not a store failure
		}
		if err != nil && !errors.Is(err, ErrInvalidDemand) && !errors.Is(err, ErrInvalidPolicy) {
			m.breaker.failed(now, err)
		}
	}
	if err != nil {
		if m.failClosed(w, r, demands, ruleOf, err, start) {
			return
		}
		fallback, cause = true, err
		var stop bool
		demands, ruleOf, stop = m.fallbackDemands(w, r, demands, ruleOf, start)
		if stop {
			return
		}
		results = results[:len(demands)]
		if len(demands) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		store = m.fallback
		if tk, err = m.fallback.Decide(r.Context(), now, demands, results); err != nil {
			// Only invalid demands fail a Local, which newMiddleware rules out.
			panic("ratelimit: fallback decision failed: " + err.Error())
		}
	}
	if !m.answer(w, r, demands, results, fallback, cause, start) {
		return
	}
	if tk.Holds() {
		defer func() {
			ctx, cancel := m.storeContext(context.WithoutCancel(r.Context()))
			if store.Release(ctx, demands, tk) == nil && store != Store(m.fallback) {
				m.breaker.answered()
			} // a lost release is reclaimed by the store's lease
			cancel()
		}()
	}
	next.ServeHTTP(w, r)
}

func (m *middleware) storeContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if m.local || m.timeout < 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, m.timeout)
}

// tighter reports whether a should be advertised rather than b: when
// denied, the violated policy with the longest wait; when admitted, the
// one with the fewest units left, then the longest reset.
func tighter(admitted bool, a, b *Result) bool {
	if !admitted {
		if a.Allowed != b.Allowed {
			return !a.Allowed
		}
		return a.RetryAfter > b.RetryAfter
	}
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return a.ResetAfter > b.ResetAfter
}

func (m *middleware) emit(e Event) {
	if m.onDecision != nil {
		m.onDecision(e)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}
