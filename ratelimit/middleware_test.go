package ratelimit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/fakeclock"
	"github.com/leveehq/levee/ratelimit"
)

type recorder struct {
	mu  sync.Mutex
	evs []ratelimit.Event
}

func (r *recorder) add(e ratelimit.Event) { r.mu.Lock(); r.evs = append(r.evs, e); r.mu.Unlock() }

func (r *recorder) take() []ratelimit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	evs := r.evs
	r.evs = nil
	return evs
}

func outcomes(evs []ratelimit.Event) string {
	var b strings.Builder
	for i, e := range evs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(e.Policy + "=" + e.Outcome.String())
		if e.Fallback {
			b.WriteString("(fallback)")
		}
	}
	return b.String()
}

type fixture struct {
	t     *testing.T
	clock *fakeclock.Clock
	rec   *recorder
	h     http.Handler
	calls int
}

func newFixture(t *testing.T, opts ratelimit.Options) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: fakeclock.New(t0), rec: &recorder{}}
	if opts.Now == nil {
		opts.Now = f.clock.Now
	}
	opts.OnDecision = f.rec.add
	mw, err := ratelimit.Middleware(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.h = mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls++
		w.WriteHeader(http.StatusOK)
	}))
	return f
}

func (f *fixture) do(mod ...func(*http.Request)) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/orders", nil)
	for _, m := range mod {
		m(r)
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func withHeader(k, v string) func(*http.Request) { return func(r *http.Request) { r.Header.Set(k, v) } }

type problemDoc struct {
	Type     string   `json:"type"`
	Status   int      `json:"status"`
	Detail   string   `json:"detail"`
	Violated []string `json:"violated-policies"`
	Policies []string `json:"policies"`
}

func decodeProblem(t *testing.T, w *httptest.ResponseRecorder) problemDoc {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json", ct)
	}
	var p problemDoc
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMiddlewareTightestPolicyAndDenial(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "per-ip", "100/s"), Key: ratelimit.ClientIP(nil)},
		{Policy: mustPolicy(t, "per-key", "2/s"), Key: ratelimit.Header("X-Api-Key")},
		{Policy: mustPolicy(t, "daily", "1000/hour"), Key: ratelimit.Header("X-Api-Key")},
	}})
	key := withHeader("X-Api-Key", "k1")
	w := f.do(key)
	if w.Code != 200 || w.Header().Get("RateLimit-Policy") != `"per-key";q=2;w=1` || w.Header().Get("RateLimit") != `"per-key";r=1;t=1` {
		t.Fatalf("first: %d %q %q", w.Code, w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"))
	}
	if got := outcomes(f.rec.take()); got != "per-ip=allowed per-key=allowed daily=allowed" {
		t.Fatalf("events %s", got)
	}
	f.do(key)
	w = f.do(key)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("third: %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	p := decodeProblem(t, w)
	if !strings.HasSuffix(p.Type, "#rate-limited") || p.Status != 429 || len(p.Violated) != 1 || p.Violated[0] != "per-key" {
		t.Fatalf("problem %+v", p)
	}
	if w.Header().Get("RateLimit") != `"per-key";r=0;t=1` {
		t.Fatalf("denied RateLimit %q", w.Header().Get("RateLimit"))
	}
	f.rec.take()
	// Without the API key only per-ip applies.
	if w := f.do(); w.Code != 200 || w.Header().Get("RateLimit-Policy") != `"per-ip";q=100;w=1` || w.Header().Get("RateLimit") != `"per-ip";r=97;t=1` {
		t.Fatalf("no key: %d %q %q", w.Code, w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"))
	}
	if got := outcomes(f.rec.take()); got != "per-ip=allowed" {
		t.Fatalf("events %s", got)
	}
	// The denied request charged nothing: per-ip has 97 left after 3
	// admitted requests (2 with a key, 1 without), not 96.
	if f.calls != 3 {
		t.Fatalf("handler ran %d times, want 3", f.calls)
	}
}

// Retry-After is the longest wait among violated policies, rounded up to
// whole seconds: never earlier than needed, never the whole window when
// less remains.
func TestMiddlewareRetryAfter(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "hourly", "1000/hour burst 2"), Key: ratelimit.Constant("")},
		{Policy: mustPolicy(t, "slow", "1/10s burst 2"), Key: ratelimit.Constant("")},
	}})
	f.do()
	f.do()
	f.clock.Advance(1500 * time.Millisecond)
	w := f.do()
	// hourly: one unit every 3.6 s, 2.1 s to go; slow: one every 10 s,
	// 8.5 s to go. Both violated: wait 8.5 s, sent as 9.
	if w.Code != 429 || w.Header().Get("Retry-After") != "9" {
		t.Fatalf("%d Retry-After %q, want 429 and 9", w.Code, w.Header().Get("Retry-After"))
	}
	p := decodeProblem(t, w)
	if strings.Join(p.Violated, ",") != "hourly,slow" || !strings.Contains(p.Detail, "retry after 9 s") {
		t.Fatalf("problem %+v", p)
	}
	// t is the time until one more unit is available: 8.5 s, as Retry-After.
	if w.Header().Get("RateLimit") != `"slow";r=0;t=9` {
		t.Fatalf("RateLimit %q, want the policy with the longest wait", w.Header().Get("RateLimit"))
	}
	f.clock.Advance(8 * time.Second) // 1 s too early
	if w := f.do(); w.Code != 429 || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("one second early: %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	f.clock.Advance(time.Second)
	if w := f.do(); w.Code != 200 {
		t.Fatalf("after Retry-After: %d", w.Code)
	}
}

func TestMiddlewareShadow(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "shadow", "1/m"), Key: ratelimit.Constant(""), Shadow: true},
		{Policy: mustPolicy(t, "real", "100/m"), Key: ratelimit.Constant("")},
	}})
	for i := range 3 {
		w := f.do()
		if w.Code != 200 || !strings.HasPrefix(w.Header().Get("RateLimit"), `"real"`) {
			t.Fatalf("request %d: %d %q", i, w.Code, w.Header().Get("RateLimit"))
		}
	}
	if got := outcomes(f.rec.take()); got != "shadow=allowed real=allowed shadow=shadow_denied real=allowed shadow=shadow_denied real=allowed" {
		t.Fatalf("events %s", got)
	}
	only := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "shadow", "1/m"), Key: ratelimit.Constant(""), Shadow: true},
	}})
	only.do()
	if w := only.do(); w.Code != 200 || w.Header().Get("RateLimit") != "" {
		t.Fatalf("shadow only: %d RateLimit %q, want 200 and no fields", w.Code, w.Header().Get("RateLimit"))
	}
}

func TestMiddlewareCost(t *testing.T) {
	t.Parallel()
	cost := func(r *http.Request) int64 {
		if r.URL.Query().Get("bulk") != "" {
			return 50
		}
		return -3 // negative counts as 0
	}
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "units", "10/s burst 20"), Key: ratelimit.Constant(""), Cost: cost},
		{Policy: mustPolicy(t, "shadow-units", "10/s"), Key: ratelimit.Constant(""), Cost: cost, Shadow: true},
	}})
	if w := f.do(); w.Code != 200 || w.Header().Get("RateLimit") != `"units";r=20;t=0` {
		t.Fatalf("free request: %d %q", w.Code, w.Header().Get("RateLimit"))
	}
	w := f.do(func(r *http.Request) { r.URL.RawQuery = "bulk=1" })
	if w.Code != 429 || w.Header().Get("Retry-After") != "" {
		t.Fatalf("cost above burst: %d Retry-After %q, want 429 without Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if p := decodeProblem(t, w); !strings.Contains(p.Detail, "can never be admitted") || p.Violated[0] != "units" {
		t.Fatalf("problem %+v", p)
	}
	if got := outcomes(f.rec.take()); got != "units=allowed shadow-units=allowed units=denied" {
		t.Fatalf("events %s", got)
	}
}

// failingStore fails every call, as an unreachable store does.
type failingStore struct{ err error }

func (s failingStore) Decide(context.Context, time.Time, []ratelimit.Demand, []ratelimit.Result) (ratelimit.Ticket, error) {
	return ratelimit.Ticket{}, s.err
}

func (s failingStore) Features() ratelimit.Features { return ratelimit.Features{} }

func (s failingStore) Release(context.Context, []ratelimit.Demand, ratelimit.Ticket) error {
	return s.err
}

// A request whose cost fits the policy but not the fallback's burst is
// refused with a 429 while the store is down (it used to panic), and a
// shadow rule in that state only reports.
func TestMiddlewareCostAboveFallbackBurst(t *testing.T) {
	t.Parallel()
	down := failingStore{errors.New("connection refused")}
	costly := ratelimit.Rule{Policy: mustPolicy(t, "costly", "100/s"), Key: ratelimit.Constant(""),
		Cost: func(*http.Request) int64 { return 20 }, Fallback: mustPolicy(t, "", "10/s")}
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{costly}, Store: down})
	if w := f.do(); w.Code != 429 || !strings.Contains(w.Body.String(), "more than the burst of 10") {
		t.Fatalf("cost 20 over a fallback burst of 10: %d %s", w.Code, w.Body.String())
	}
	if evs := f.rec.take(); outcomes(evs) != "costly=denied" {
		t.Fatalf("events %s", outcomes(evs))
	}
	costly.Shadow = true
	f = newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{costly}, Store: down})
	if w := f.do(); w.Code != 200 {
		t.Fatalf("shadow rule over the fallback burst: %d, want the request through", w.Code)
	}
	if evs := f.rec.take(); outcomes(evs) != "costly=shadow_denied" {
		t.Fatalf("events %s", outcomes(evs))
	}
}

func TestMiddlewareStoreFailure(t *testing.T) {
	t.Parallel()
	down := &countingStore{err: fmt.Errorf("dial tcp: %w", syscall.ECONNREFUSED)}
	open := ratelimit.Rule{Policy: mustPolicy(t, "open", "100/s"), Key: ratelimit.Constant(""), Fallback: mustPolicy(t, "", "1/m burst 1")}
	closed := ratelimit.Rule{Policy: mustPolicy(t, "closed", "100/s"), Key: ratelimit.Constant(""), OnStoreError: ratelimit.FailClosed}
	shadowClosed := closed
	shadowClosed.Policy.Name, shadowClosed.Shadow = "shadow-closed", true

	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{open, shadowClosed}, Store: down})
	if w := f.do(); w.Code != 200 || w.Header().Get("RateLimit-Policy") != `"open";q=1;w=60` {
		t.Fatalf("fail_open: %d %q", w.Code, w.Header().Get("RateLimit-Policy"))
	}
	evs := f.rec.take()
	if outcomes(evs) != "open=allowed(fallback) shadow-closed=allowed(fallback)" || evs[0].Err == nil || !strings.Contains(evs[0].Err.Error(), "connection refused") {
		t.Fatalf("events %s %v", outcomes(evs), evs[0].Err)
	}
	if w := f.do(); w.Code != 429 || w.Header().Get("Retry-After") != "60" {
		t.Fatalf("fallback limit: %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	// The refused connection opened the breaker: within StoreBackoff the
	// store is not called; events still say why.
	if evs := f.rec.take(); evs[0].Err == nil || !evs[0].Fallback {
		t.Fatalf("backoff events %+v", evs)
	}
	if got := down.calls.Load(); got != 1 {
		t.Fatalf("the store was called %d times, want once (then the breaker is open)", got)
	}

	g := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{open, closed}, Store: down, UnavailableRetryAfter: 3 * time.Second})
	w := g.do()
	if w.Code != 503 || w.Header().Get("Retry-After") != "3" {
		t.Fatalf("fail_closed: %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	if p := decodeProblem(t, w); !strings.HasSuffix(p.Type, "#rate-limit-store-unavailable") || len(p.Policies) != 1 || p.Policies[0] != "closed" {
		t.Fatalf("problem %+v", p)
	}
	if got := outcomes(g.rec.take()); got != "open=error closed=error" {
		t.Fatalf("events %s", got)
	}
	if g.calls != 0 {
		t.Fatal("handler ran although a fail_closed policy could not be decided")
	}
}

// A client that goes away mid-decision gets no answer, and its canceled
// context is not counted as a store failure.
func TestMiddlewareCanceledRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "p", "1/s"), Key: ratelimit.Constant(""), OnStoreError: ratelimit.FailClosed},
	}, Store: failingStore{context.Canceled}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w := f.do(func(r *http.Request) { *r = *r.WithContext(ctx) })
	if w.Body.Len() != 0 || f.calls != 0 || len(f.rec.take()) != 0 {
		t.Fatalf("canceled request: %d %q, %d calls", w.Code, w.Body, f.calls)
	}
}

// A reload builds a new middleware over the same store: tightening a
// policy applies at once, without a free reset.
func TestMiddlewareReloadKeepsState(t *testing.T) {
	t.Parallel()
	store := ratelimit.NewLocal(ratelimit.LocalOptions{})
	clock := fakeclock.New(t0)
	build := func(spec string) http.Handler {
		mw, err := ratelimit.Middleware(ratelimit.Options{Store: store, Now: clock.Now,
			Rules: []ratelimit.Rule{{Policy: mustPolicy(t, "api", spec), Key: ratelimit.Constant("")}}})
		if err != nil {
			t.Fatal(err)
		}
		return mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	}
	serve := func(h http.Handler) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
		return w
	}
	before := build("100/s")
	for range 100 {
		serve(before)
	}
	after := build("10/s")
	// 100 units spent; at 10/s burst 10 the next one is admitted once 91
	// have drained: 9.1 s. A store keyed by the numbers would have
	// started 10/s afresh, with 10 units.
	if w := serve(after); w.Code != 429 || w.Header().Get("Retry-After") != "10" {
		t.Fatalf("after tightening: %d Retry-After=%q, want 429 and 10", w.Code, w.Header().Get("Retry-After"))
	}
	clock.Advance(9 * time.Second)
	if w := serve(after); w.Code != 429 {
		t.Fatalf("9 s later: %d, want still 429", w.Code)
	}
	clock.Advance(100 * time.Millisecond)
	if w := serve(after); w.Code != 200 || w.Header().Get("RateLimit") != `"api";r=0;t=1` {
		t.Fatalf("9.1 s later: %d %q", w.Code, w.Header().Get("RateLimit"))
	}
}

func TestMiddlewareOptionsErrors(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, "p", "1/s")
	c := mustPolicy(t, "c", "concurrency 1")
	k := ratelimit.Constant("")
	cases := []struct {
		name  string
		rules []ratelimit.Rule
		want  string
	}{
		{"unnamed", []ratelimit.Rule{{Policy: mustPolicy(t, "", "1/s"), Key: k}}, "name is empty"},
		{"duplicate", []ratelimit.Rule{{Policy: p, Key: k}, {Policy: p, Key: k}}, `"p" is used twice`},
		{"no key", []ratelimit.Rule{{Policy: p}}, "Key is nil"},
		{"fallback kind", []ratelimit.Rule{{Policy: p, Key: k, Fallback: c}}, "Fallback is a concurrency policy"},
		{"bad mode", []ratelimit.Rule{{Policy: p, Key: k, OnStoreError: 7}}, "OnStoreError"},
		{"too many", make([]ratelimit.Rule, ratelimit.MaxDemands+1), "at most 64"},
	}
	for _, tc := range cases {
		_, err := ratelimit.Middleware(ratelimit.Options{Rules: tc.rules})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestMiddlewareNoApplicableRulePassesThrough(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: mustPolicy(t, "p", "1/m"), Key: ratelimit.Header("X-Api-Key")},
	}})
	for range 3 {
		if w := f.do(); w.Code != 200 || w.Header().Get("RateLimit") != "" {
			t.Fatalf("%d %q", w.Code, w.Header().Get("RateLimit"))
		}
	}
	if n := len(f.rec.take()); n != 0 {
		t.Fatalf("%d events for requests no rule applied to", n)
	}
}
