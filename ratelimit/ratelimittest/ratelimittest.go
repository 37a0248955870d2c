// Package ratelimittest is the conformance suite every ratelimit.Store
// runs. A store's test calls Run with a Harness; the suite checks the
// Store contract (GCRA results, exact Retry-After, concurrency slots,
// all-or-nothing charging across policies, shadow demands, state kept
// across a policy's change of numbers, validation) and the middleware's
// behaviour on top of the store.
package ratelimittest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/fakeclock"
	"github.com/leveehq/levee/ratelimit"
)

// Harness tells the suite how to reach a store.
type Harness struct {
	// NewStore returns a store for one test. Stores from different calls
	// may share a backend: the suite gives every test its own policy
	// names. Clean up with t.Cleanup.
	//
	// A store whose Features().CallerClock is true (ratelimit.Local)
	// decides with the time passed to Decide: the suite then drives a fake
	// clock per test and checks exact values. Otherwise the store has its
	// own clock (Redis TIME): the suite passes time.Now, waits in real
	// time (a few seconds in all), and allows for the milliseconds that
	// pass between calls.
	NewStore func(t testing.TB) ratelimit.Store
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	run := newRunID()
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"BurstThenDeny", testBurstThenDeny},
		{"ConcurrentFreshKeyAdmitsExactlyBurst", testConcurrentFreshKey},
		{"CostAndRemaining", testCost},
		{"CostAboveBurstRefused", testCostAboveBurst},
		{"DeniedRequestChargesNoPolicy", testDeniedChargesNone},
		{"DeniedRequestTakesNoConcurrencySlot", testDeniedTakesNoSlot},
		{"ConcurrentMultiPolicyAllOrNothing", testConcurrentMulti},
		{"Shadow", testShadow},
		{"RetryAfterIsExact", testRetryAfterExact},
		{"ReloadKeepsState", testReloadKeepsState},
		{"KeysAndNamesIndependent", testIndependent},
		{"Concurrency", testConcurrency},
		{"ConcurrencyUnderContention", testConcurrencyContention},
		{"ManyPolicies", testManyPolicies},
		{"InvalidDemands", testInvalid},
		{"AdmittedWithinBurstPlusRate", testBound},
		{"CalendarQuota", testCalendar},
		{"CalendarAcrossMonthBoundary", testCalendarMonthBoundary},
		{"CalendarAcrossDST", testCalendarDST},
		{"HTTP/DeniedIs429WithHeaders", testHTTPDenied},
		{"HTTP/ConcurrencyReleasedOnPanic", testHTTPPanicRelease},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := &env{h: h, prefix: run + "-" + strconv.Itoa(i), store: h.NewStore(t)}
			if e.store.Features().CallerClock {
				e.clock = fakeclock.New(t0)
			}
			tc.fn(t, e)
		})
	}
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// env is one test's store, clock and names.
type env struct {
	h      Harness
	prefix string
	store  ratelimit.Store
	clock  *fakeclock.Clock // nil: real time
}

func (e *env) now() time.Time {
	if e.clock != nil {
		return e.clock.Now()
	}
	return time.Now()
}

func (e *env) advance(d time.Duration) {
	if e.clock != nil {
		e.clock.Advance(d)
		return
	}
	time.Sleep(d)
}

func (e *env) real() bool { return e.clock == nil }

// setClock moves the fake clock forward to t.
func (e *env) setClock(t time.Time) { e.clock.Advance(t.Sub(e.clock.Now())) }

// policy parses spec and names it uniquely for this test.
func (e *env) policy(t testing.TB, name, spec string) ratelimit.Policy {
	t.Helper()
	p, err := ratelimit.ParsePolicy(spec)
	if err != nil {
		t.Fatal(err)
	}
	p.Name = e.prefix + "-" + name
	return p
}

func (e *env) decide(t testing.TB, ds ...ratelimit.Demand) ([]ratelimit.Result, ratelimit.Ticket) {
	t.Helper()
	rs := make([]ratelimit.Result, len(ds))
	tk, err := e.store.Decide(context.Background(), e.now(), ds, rs)
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	return rs, tk
}

func (e *env) one(t testing.TB, p ratelimit.Policy, key string, cost int64) ratelimit.Result {
	t.Helper()
	rs, _ := e.decide(t, ratelimit.Demand{Policy: p, Key: key, Cost: cost})
	return rs[0]
}

func d(p ratelimit.Policy, key string) ratelimit.Demand {
	return ratelimit.Demand{Policy: p, Key: key, Cost: 1}
}

// slack is how much real time may pass between two calls of one test.
const slack = 500 * time.Millisecond

// between checks lo ≤ got ≤ hi.
func between(t testing.TB, what string, got, lo, hi time.Duration) {
	t.Helper()
	if got < lo || got > hi {
		t.Fatalf("%s = %v, want within [%v, %v]", what, got, lo, hi)
	}
}

// approx checks got is want exactly on a fake clock, and within
// [want-slack, want] on a real one (time only passes, shrinking waits).
func (e *env) approx(t testing.TB, what string, got, want time.Duration) {
	t.Helper()
	if e.real() {
		between(t, what, got, want-slack, want)
		return
	}
	if got != want {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

func wantResult(t testing.TB, what string, r ratelimit.Result, allowed bool, remaining int64) {
	t.Helper()
	if r.Allowed != allowed || r.Remaining != remaining {
		t.Fatalf("%s: got allowed=%v remaining=%d, want allowed=%v remaining=%d (%+v)", what, r.Allowed, r.Remaining, allowed, remaining, r)
	}
	if r.Allowed && r.RetryAfter != 0 {
		t.Fatalf("%s: allowed with RetryAfter %v", what, r.RetryAfter)
	}
	if !r.Allowed && r.RetryAfter <= 0 {
		t.Fatalf("%s: denied without a positive RetryAfter: %+v", what, r)
	}
}

func testBurstThenDeny(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 5")
	for i := int64(1); i <= 5; i++ {
		r := e.one(t, p, "k", 1)
		wantResult(t, fmt.Sprintf("request %d", i), r, true, 5-i)
		e.approx(t, fmt.Sprintf("request %d ResetAfter", i), r.ResetAfter, time.Duration(i)*time.Minute)
	}
	r := e.one(t, p, "k", 1)
	wantResult(t, "request 6", r, false, 0)
	e.approx(t, "RetryAfter", r.RetryAfter, time.Minute)
	e.approx(t, "ResetAfter", r.ResetAfter, 5*time.Minute)
}

func testConcurrentFreshKey(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 5")
	var admitted atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 200)
	for range 200 {
		wg.Go(func() {
			<-start
			rs := make([]ratelimit.Result, 1)
			if _, err := e.store.Decide(context.Background(), e.now(), []ratelimit.Demand{d(p, "fresh")}, rs); err != nil {
				errs <- err
				return
			}
			if rs[0].Allowed {
				admitted.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := admitted.Load(); n != 5 {
		t.Fatalf("200 concurrent requests with burst 5 admitted %d, want exactly 5", n)
	}
}

func testCost(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 5")
	wantResult(t, "cost 3", e.one(t, p, "k", 3), true, 2)
	r := e.one(t, p, "k", 3)
	wantResult(t, "second cost 3", r, false, 2)
	e.approx(t, "RetryAfter of cost 3 with 2 left", r.RetryAfter, time.Minute)
	wantResult(t, "cost 2", e.one(t, p, "k", 2), true, 0)
	wantResult(t, "cost 0 (a check)", e.one(t, p, "k", 0), true, 0)
	r = e.one(t, p, "k", 1)
	wantResult(t, "exhausted", r, false, 0)
	e.approx(t, "RetryAfter when exhausted", r.RetryAfter, time.Minute)
}

func testCostAboveBurst(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 5")
	rs := make([]ratelimit.Result, 1)
	_, err := e.store.Decide(context.Background(), e.now(), []ratelimit.Demand{{Policy: p, Key: "k", Cost: 6}}, rs)
	if !errors.Is(err, ratelimit.ErrCostExceedsBurst) || !errors.Is(err, ratelimit.ErrInvalidDemand) {
		t.Fatalf("cost 6 with burst 5: err = %v, want ErrCostExceedsBurst and ErrInvalidDemand", err)
	}
	wantResult(t, "after the refused demand", e.one(t, p, "k", 5), true, 0)
}

func testDeniedChargesNone(t *testing.T, e *env) {
	a := e.policy(t, "a", "1/m burst 10")
	b := e.policy(t, "b", "1/m burst 1")
	rs, _ := e.decide(t, d(a, "k"), d(b, "k"))
	wantResult(t, "first a", rs[0], true, 9)
	wantResult(t, "first b", rs[1], true, 0)
	if !ratelimit.Admitted([]ratelimit.Demand{d(a, "k"), d(b, "k")}, rs) {
		t.Fatal("first request not admitted")
	}
	// b denies: a must not be charged.
	for i := range 3 {
		rs, _ = e.decide(t, d(a, "k"), d(b, "k"))
		wantResult(t, fmt.Sprintf("denied request %d: a", i), rs[0], true, 9)
		wantResult(t, fmt.Sprintf("denied request %d: b", i), rs[1], false, 0)
		err := ratelimit.Check([]ratelimit.Demand{d(a, "k"), d(b, "k")}, rs)
		var le *ratelimit.LimitedError
		if !errors.As(err, &le) || !errors.Is(err, ratelimit.ErrLimited) || len(le.Policies) != 1 || le.Policies[0] != b.Name {
			t.Fatalf("Check = %v, want a LimitedError naming %q", err, b.Name)
		}
	}
	// Order must not matter either.
	rs, _ = e.decide(t, d(b, "k"), d(a, "k"))
	wantResult(t, "reversed: b", rs[0], false, 0)
	wantResult(t, "reversed: a", rs[1], true, 9)
	wantResult(t, "a alone", e.one(t, a, "k", 1), true, 8)
}

// Decisions on overlapping policies, listed in opposite orders, racing:
// no deadlock, and exactly the admitted requests are charged to both.
func testConcurrentMulti(t *testing.T, e *env) {
	a := e.policy(t, "a", "1/m burst 50")
	b := e.policy(t, "b", "1/m burst 30")
	var admitted atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 200 {
		wg.Go(func() {
			ds := []ratelimit.Demand{d(a, "k"), d(b, "k")}
			if g%2 == 1 {
				ds[0], ds[1] = ds[1], ds[0]
			}
			rs := make([]ratelimit.Result, 2)
			<-start
			if _, err := e.store.Decide(context.Background(), e.now(), ds, rs); err != nil {
				t.Error(err)
				return
			}
			if ratelimit.Admitted(ds, rs) {
				admitted.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if n := admitted.Load(); n != 30 {
		t.Fatalf("admitted %d, want exactly 30 (b's burst)", n)
	}
	wantResult(t, "a after the race", e.one(t, a, "k", 1), true, 19)
}

func testDeniedTakesNoSlot(t *testing.T, e *env) {
	c := e.policy(t, "c", "concurrency 1")
	b := e.policy(t, "b", "1/m burst 1")
	wantResult(t, "exhaust b", e.one(t, b, "k", 1), true, 0)
	rs, tk := e.decide(t, d(c, "k"), d(b, "k"))
	wantResult(t, "c beside a denying b", rs[0], true, 1)
	wantResult(t, "b", rs[1], false, 0)
	if tk.Holds() {
		t.Fatalf("denied decision holds slots: %+v", tk)
	}
	rs, tk = e.decide(t, d(c, "k"))
	wantResult(t, "c alone", rs[0], true, 0)
	if tk.Held != 1 {
		t.Fatalf("ticket %+v, want Held=1", tk)
	}
	if err := e.store.Release(context.Background(), []ratelimit.Demand{d(c, "k")}, tk); err != nil {
		t.Fatal(err)
	}
}

func testShadow(t *testing.T, e *env) {
	s := e.policy(t, "s", "1/m burst 1")
	en := e.policy(t, "e", "1/m burst 5")
	ds := []ratelimit.Demand{{Policy: s, Key: "k", Cost: 1, Shadow: true}, d(en, "k")}
	rs, _ := e.decide(t, ds...)
	wantResult(t, "first: shadow", rs[0], true, 0)
	wantResult(t, "first: enforced", rs[1], true, 4)
	rs, _ = e.decide(t, ds...)
	wantResult(t, "second: shadow would deny", rs[0], false, 0)
	wantResult(t, "second: enforced is charged", rs[1], true, 3)
	if !ratelimit.Admitted(ds, rs) || ratelimit.Check(ds, rs) != nil {
		t.Fatal("a shadow denial denied the request")
	}
	e.approx(t, "shadow RetryAfter", rs[0].RetryAfter, time.Minute)
	// The shadow policy was not charged by the request it would have
	// denied: its wait did not grow.
	rs, _ = e.decide(t, ds...)
	e.approx(t, "shadow RetryAfter after another request", rs[0].RetryAfter, time.Minute)
	wantResult(t, "third: enforced", rs[1], true, 2)
	// A shadow demand is still never charged when the request is denied.
	x := e.policy(t, "x", "1/m burst 1")
	s2 := e.policy(t, "s2", "1/m burst 5")
	wantResult(t, "exhaust x", e.one(t, x, "k", 1), true, 0)
	ds = []ratelimit.Demand{{Policy: s2, Key: "k", Cost: 1, Shadow: true}, d(x, "k")}
	rs, _ = e.decide(t, ds...)
	wantResult(t, "denied request: shadow", rs[0], true, 5)
	if ratelimit.Admitted(ds, rs) {
		t.Fatal("request admitted although x is exhausted")
	}
}

// Waiting Retry-After (whole seconds, rounded up) gets admitted; waiting
// one second less does not.
func testRetryAfterExact(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/2s")
	wantResult(t, "first", e.one(t, p, "k", 1), true, 0)
	r := e.one(t, p, "k", 1)
	wantResult(t, "second", r, false, 0)
	e.approx(t, "RetryAfter", r.RetryAfter, 2*time.Second)
	secs := time.Duration((r.RetryAfter+time.Second-1)/time.Second) * time.Second
	if secs != 2*time.Second {
		t.Fatalf("Retry-After rounds to %v, want 2s", secs)
	}
	e.advance(secs - time.Second)
	r = e.one(t, p, "k", 1)
	wantResult(t, "after Retry-After minus one second", r, false, 0)
	e.advance(time.Second)
	wantResult(t, "after Retry-After", e.one(t, p, "k", 1), true, 0)
}

// State is keyed by policy name, not numbers, and counts units: changing
// a policy on reload takes effect at once and keeps what was spent, with
// no free reset.
func testReloadKeepsState(t *testing.T, e *env) {
	old := e.policy(t, "p", "100/s")
	wantResult(t, "spend the whole burst", e.one(t, old, "k", 100), true, 0)
	tight := old
	tight.Limit, tight.Burst = 10, 10 // 10/s, same name
	r := e.one(t, tight, "k", 1)
	wantResult(t, "after the reload", r, false, 0)
	// 100 units owed at 10/s with a burst of 10: the next unit is
	// admitted when 91 have drained, 9.1 s later. A store keeping a time
	// debt would admit it after 100 ms; one keyed by the numbers at once.
	e.approx(t, "RetryAfter after the reload", r.RetryAfter, 9100*time.Millisecond)
	renamed := e.policy(t, "q", "10/s")
	wantResult(t, "a new name starts fresh", e.one(t, renamed, "k", 1), true, 9)
	if !e.real() {
		// Loosening keeps the count too: 100 of 1000 spent, so this
		// request leaves 899.
		loose := old
		loose.Limit, loose.Burst = 1000, 1000
		r := e.one(t, loose, "k", 1)
		wantResult(t, "loosened", r, true, 899)
	}
}

func testIndependent(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 1")
	wantResult(t, "k1", e.one(t, p, "k1", 1), true, 0)
	wantResult(t, "k1 again", e.one(t, p, "k1", 1), false, 0)
	wantResult(t, "k2", e.one(t, p, "k2", 1), true, 0)
	keys := []string{"", " ", "{", "}", "{x}", "a:b", "a", "ü", strings.Repeat("x", 4096), "\x00\xff", "1.2.3.4", "2001:db8::/64"}
	for _, k := range keys {
		wantResult(t, fmt.Sprintf("key %.20q", k), e.one(t, p, k, 1), true, 0)
	}
	for _, k := range keys {
		wantResult(t, fmt.Sprintf("key %.20q again", k), e.one(t, p, k, 1), false, 0)
	}
	// (name "x:y", key "z") and (name "x", key "y:z") are different states.
	a := e.policy(t, "x:y", "1/m burst 1")
	b := e.policy(t, "x", "1/m burst 1")
	wantResult(t, "name x:y key z", e.one(t, a, "z", 1), true, 0)
	wantResult(t, "name x key y:z", e.one(t, b, "y:z", 1), true, 0)
	// A rate and a concurrency policy of the same name do not collide.
	c := b
	c.Kind, c.Limit, c.Period, c.Burst = ratelimit.KindConcurrency, 1, 0, 0
	rs, tk := e.decide(t, d(c, "y:z"))
	wantResult(t, "concurrency policy named like a rate policy", rs[0], true, 0)
	_ = e.store.Release(context.Background(), []ratelimit.Demand{d(c, "y:z")}, tk)
}

func testConcurrency(t *testing.T, e *env) {
	c := e.policy(t, "c", "concurrency 2")
	ds := []ratelimit.Demand{d(c, "k")}
	rs1, tk1 := e.decide(t, ds...)
	wantResult(t, "first", rs1[0], true, 1)
	rs2, tk2 := e.decide(t, ds...)
	wantResult(t, "second", rs2[0], true, 0)
	rs3, tk3 := e.decide(t, ds...)
	wantResult(t, "third", rs3[0], false, 0)
	if rs3[0].RetryAfter != ratelimit.ConcurrencyRetryAfter || tk3.Holds() {
		t.Fatalf("third: %+v ticket %+v", rs3[0], tk3)
	}
	if !tk1.Holds() || !tk2.Holds() || tk1.ID == tk2.ID {
		t.Fatalf("tickets %+v %+v: want distinct tickets holding a slot", tk1, tk2)
	}
	if err := e.store.Release(context.Background(), ds, tk1); err != nil {
		t.Fatal(err)
	}
	rs3, tk3 = e.decide(t, ds...)
	wantResult(t, "after a release", rs3[0], true, 0)
	for _, tk := range []ratelimit.Ticket{tk2, tk3} {
		if err := e.store.Release(context.Background(), ds, tk); err != nil {
			t.Fatal(err)
		}
	}
	rs, tk := e.decide(t, ds...)
	wantResult(t, "all released", rs[0], true, 1)
	_ = e.store.Release(context.Background(), ds, tk)
}

func testConcurrencyContention(t *testing.T, e *env) {
	c := e.policy(t, "c", "concurrency 10")
	ds := []ratelimit.Demand{d(c, "k")}
	var mu sync.Mutex
	var held []ratelimit.Ticket
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 50 {
		wg.Go(func() {
			<-start
			rs := make([]ratelimit.Result, 1)
			tk, err := e.store.Decide(context.Background(), e.now(), ds, rs)
			if err != nil {
				t.Error(err)
				return
			}
			if rs[0].Allowed {
				mu.Lock()
				held = append(held, tk)
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	if len(held) != 10 {
		t.Fatalf("50 concurrent acquisitions of concurrency 10 admitted %d", len(held))
	}
	for _, tk := range held {
		wg.Go(func() {
			if err := e.store.Release(context.Background(), ds, tk); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	rs, tk := e.decide(t, ds...)
	wantResult(t, "after releasing all", rs[0], true, 9)
	_ = e.store.Release(context.Background(), ds, tk)
}

func testManyPolicies(t *testing.T, e *env) {
	for _, n := range []int{8, 20} {
		ds := make([]ratelimit.Demand, n)
		for i := range ds {
			ds[i] = d(e.policy(t, fmt.Sprintf("n%d-%d", n, i), "1/m burst 3"), "k")
		}
		ds[n-1].Policy = e.policy(t, fmt.Sprintf("n%d-last", n), "1/m burst 1")
		rs, _ := e.decide(t, ds...)
		for i := range rs {
			if !rs[i].Allowed {
				t.Fatalf("%d policies: demand %d denied on first use", n, i)
			}
		}
		rs, _ = e.decide(t, ds...)
		if ratelimit.Admitted(ds, rs) {
			t.Fatalf("%d policies: admitted although the last is exhausted", n)
		}
		for i := range n - 1 {
			wantResult(t, fmt.Sprintf("%d policies: demand %d of a denied request", n, i), rs[i], true, 2)
		}
	}
}

func testInvalid(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 1")
	ctx := context.Background()
	cases := []struct {
		name    string
		ds      []ratelimit.Demand
		results int
		want    error
	}{
		{"none", nil, 0, ratelimit.ErrInvalidDemand},
		{"results length", []ratelimit.Demand{d(p, "k")}, 2, ratelimit.ErrInvalidDemand},
		{"duplicate", []ratelimit.Demand{d(p, "k"), d(p, "k")}, 2, ratelimit.ErrInvalidDemand},
		{"negative cost", []ratelimit.Demand{{Policy: p, Key: "k", Cost: -1}}, 1, ratelimit.ErrInvalidDemand},
		{"no name", []ratelimit.Demand{{Policy: ratelimit.Policy{Limit: 1, Period: time.Second}, Key: "k", Cost: 1}}, 1, ratelimit.ErrInvalidPolicy},
		{"zero limit", []ratelimit.Demand{{Policy: ratelimit.Policy{Name: p.Name, Period: time.Second}, Key: "k", Cost: 1}}, 1, ratelimit.ErrInvalidPolicy},
		{"too many", make([]ratelimit.Demand, ratelimit.MaxDemands+1), ratelimit.MaxDemands + 1, ratelimit.ErrInvalidDemand},
	}
	for _, c := range cases {
		_, err := e.store.Decide(ctx, e.now(), c.ds, make([]ratelimit.Result, c.results))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	wantResult(t, "nothing was charged", e.one(t, p, "k", 1), true, 0)
}

// For any interval of length L, admitted ≤ burst + rate·L. On a fake
// clock the suite checks every window of a random schedule; on a real
// clock, the whole run of several hammering goroutines.
func testBound(t *testing.T, e *env) {
	p := e.policy(t, "p", "20/s burst 5")
	if !e.real() {
		// Local's own tests check every window of random schedules; here
		// a steady over-rate stream checks the long-run rate.
		n := 0
		for range 2000 { // 2000 requests, one per ms: 2 s at 1000/s
			if e.one(t, p, "k", 1).Allowed {
				n++
			}
			e.advance(time.Millisecond)
		}
		// The last request is at 1.999 s: at most 5 + 20·1.999 = 44.98.
		if n != 44 {
			t.Fatalf("admitted %d of a 1000/s stream over 1.999 s at 20/s burst 5, want 44", n)
		}
		return
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	deadline := begin.Add(700 * time.Millisecond)
	for range 4 {
		wg.Go(func() {
			rs := make([]ratelimit.Result, 1)
			for time.Now().Before(deadline) {
				if _, err := e.store.Decide(context.Background(), e.now(), []ratelimit.Demand{d(p, "k")}, rs); err != nil {
					t.Error(err)
					return
				}
				if rs[0].Allowed {
					n.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	limit := 5 + 20*elapsed.Seconds()
	if got := float64(n.Load()); got > limit || got < 5 {
		t.Fatalf("admitted %v in %v at 20/s burst 5, want 5 ≤ n ≤ %.1f", got, elapsed, limit)
	}
}

func testHTTPDenied(t *testing.T, e *env) {
	p := e.policy(t, "p", "1/m burst 2")
	mw, err := ratelimit.Middleware(ratelimit.Options{
		Rules: []ratelimit.Rule{{Policy: p, Key: ratelimit.Header("X-Api-Key"), Cost: func(r *http.Request) int64 {
			if r.Header.Get("X-Cost") != "" {
				return 3 // above the burst of 2
			}
			return 1
		}}},
		Store: e.store, Now: e.now, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	get := func(hdr ...string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/x", nil)
		r.Header.Set("X-Api-Key", "key-1")
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	// q is the burst and w the time it takes to come back; t is the time
	// until one more unit is available (one emission interval here).
	wantPolicy := `"` + p.Name + `";q=2;w=120`
	for i, want := range []string{`;r=1;t=60`, `;r=0;t=60`} {
		w := get()
		if w.Code != http.StatusNoContent || w.Header().Get("RateLimit-Policy") != wantPolicy || w.Header().Get("RateLimit") != `"`+p.Name+`"`+want {
			t.Fatalf("request %d: %d RateLimit-Policy=%q RateLimit=%q, want 204 %q %q", i, w.Code,
				w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"), wantPolicy, `"`+p.Name+`"`+want)
		}
	}
	w := get()
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "60" ||
		w.Header().Get("Content-Type") != "application/problem+json" || !strings.Contains(w.Body.String(), `"violated-policies":["`+p.Name+`"]`) ||
		w.Header().Get("RateLimit") != `"`+p.Name+`";r=0;t=60` || w.Header().Get("RateLimit-Policy") != wantPolicy {
		t.Fatalf("denied: %d Retry-After=%q RateLimit=%q body %s", w.Code, w.Header().Get("Retry-After"), w.Header().Get("RateLimit"), w.Body)
	}
	// A cost above the burst can never be admitted: 429 without
	// Retry-After, but with the fields like every other response, and
	// nothing charged.
	w = get("X-Cost", "3")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "" ||
		w.Header().Get("RateLimit-Policy") != wantPolicy || w.Header().Get("RateLimit") != `"`+p.Name+`";r=0;t=60` {
		t.Fatalf("cost above the burst: %d Retry-After=%q RateLimit-Policy=%q RateLimit=%q", w.Code,
			w.Header().Get("Retry-After"), w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"))
	}
}

func testHTTPPanicRelease(t *testing.T, e *env) {
	c := e.policy(t, "c", "concurrency 1")
	mw, err := ratelimit.Middleware(ratelimit.Options{
		Rules: []ratelimit.Rule{{Policy: c, Key: ratelimit.Constant("all")}},
		Store: e.store, Now: e.now, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	inside := make(chan struct{})
	proceed := make(chan struct{})
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
		if r.URL.Path == "/slow" {
			close(inside)
			<-proceed
		}
		w.WriteHeader(http.StatusOK)
	}))
	serve := func(path string) (code int, panicked bool) {
		defer func() {
			if recover() != nil {
				panicked = true
			}
		}()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		return w.Code, false
	}
	done := make(chan int)
	go func() { code, _ := serve("/slow"); done <- code }()
	<-inside
	if code, _ := serve("/fast"); code != http.StatusTooManyRequests {
		t.Fatalf("second request while the first is in flight: %d, want 429", code)
	}
	close(proceed)
	if code := <-done; code != http.StatusOK {
		t.Fatalf("slow request: %d", code)
	}
	if _, panicked := serve("/panic"); !panicked {
		t.Fatal("handler panic was swallowed")
	}
	if code, _ := serve("/fast"); code != http.StatusOK {
		t.Fatalf("after a panicking request: %d, want 200 (its slot released)", code)
	}
}

// A calendar quota admits Limit units per period, atomically with the
// request's other policies: a request denied by another policy charges the
// quota nothing, and a denial waits until the period ends.
func testCalendar(t *testing.T, e *env) {
	q := e.policy(t, "q", "3/day calendar")
	rate := e.policy(t, "r", "1/m burst 2")
	if _, end := q.Window(e.now()); e.real() && end.Sub(e.now()) < time.Minute {
		t.Skip("too close to midnight UTC for a real-clock run")
	}
	before := e.now()
	rs, _ := e.decide(t, d(q, "k"), d(rate, "k"))
	wantResult(t, "first", rs[0], true, 2)
	_, end := q.Window(before)
	e.approx(t, "ResetAfter", rs[0].ResetAfter, end.Sub(before))
	if rs[0].Window != 24*time.Hour {
		t.Fatalf("Window = %v, want 24h (UTC)", rs[0].Window)
	}
	rs, _ = e.decide(t, d(q, "k"), d(rate, "k"))
	wantResult(t, "second", rs[0], true, 1)
	// The rate policy denies the third request: the quota is not charged.
	rs, _ = e.decide(t, d(q, "k"), d(rate, "k"))
	if rs[1].Allowed || !rs[0].Allowed || rs[0].Remaining != 1 {
		t.Fatalf("third: %+v, want the rate denial and the quota untouched (1 left)", rs)
	}
	wantResult(t, "quota alone", e.one(t, q, "k", 1), true, 0)
	before = e.now()
	r := e.one(t, q, "k", 1)
	wantResult(t, "over the quota", r, false, 0)
	_, end = q.Window(before)
	e.approx(t, "RetryAfter", r.RetryAfter, end.Sub(before))
	wantResult(t, "another key", e.one(t, q, "k2", 3), true, 0)
	var errCost error
	_, errCost = e.store.Decide(context.Background(), e.now(), []ratelimit.Demand{{Policy: q, Key: "k3", Cost: 4}}, make([]ratelimit.Result, 1))
	if !errors.Is(errCost, ratelimit.ErrCostExceedsBurst) {
		t.Fatalf("cost above the quota: %v, want ErrCostExceedsBurst", errCost)
	}
}

// On a fake clock: the quota resets exactly at local midnight on the 1st,
// in the policy's time zone, and a February is 28 days long.
func testCalendarMonthBoundary(t *testing.T, e *env) {
	if e.real() {
		t.Skip("needs a store that decides with the time passed in; the Redis script's boundary switch is tested on its own")
	}
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	if err != nil {
		t.Fatal(err)
	}
	q := e.policy(t, "m", "2/month")
	q.Location = tokyo
	// 2030-01-31 23:59:59 in Tokyo is 14:59:59 UTC.
	e.setClock(time.Date(2030, 1, 31, 23, 59, 59, 0, tokyo))
	wantResult(t, "January", e.one(t, q, "k", 2), true, 0)
	r := e.one(t, q, "k", 1)
	wantResult(t, "January, over", r, false, 0)
	if r.RetryAfter != time.Second || r.Window != 31*24*time.Hour {
		t.Fatalf("January: RetryAfter %v Window %v, want 1s and 31 days", r.RetryAfter, r.Window)
	}
	e.advance(time.Second - time.Nanosecond)
	wantResult(t, "one nanosecond early", e.one(t, q, "k", 1), false, 0)
	e.advance(time.Nanosecond)
	r = e.one(t, q, "k", 1)
	wantResult(t, "February", r, true, 1)
	if r.Window != 28*24*time.Hour || r.ResetAfter != 28*24*time.Hour {
		t.Fatalf("February: Window %v ResetAfter %v, want 28 days", r.Window, r.ResetAfter)
	}
}

// On a fake clock: a calendar day in New York is 23 hours long when DST
// starts and 25 when it ends, and the quota resets at local midnight.
func testCalendarDST(t *testing.T, e *env) {
	if e.real() {
		t.Skip("needs a store that decides with the time passed in")
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		day  time.Time
		want time.Duration
	}{
		{time.Date(2030, 3, 10, 0, 30, 0, 0, ny), 23 * time.Hour}, // DST starts at 02:00
		{time.Date(2030, 11, 3, 0, 30, 0, 0, ny), 25 * time.Hour}, // DST ends at 02:00
	} {
		q := e.policy(t, "dst"+c.day.Format("0102"), "1/day calendar")
		q.Location = ny
		e.setClock(c.day)
		wantResult(t, "first", e.one(t, q, "k", 1), true, 0)
		r := e.one(t, q, "k", 1)
		left := c.want - 30*time.Minute
		if r.Allowed || r.RetryAfter != left || r.Window != c.want {
			t.Fatalf("%v: %+v, want denied for %v in a %v day", c.day, r, left, c.want)
		}
		e.setClock(time.Date(c.day.Year(), c.day.Month(), c.day.Day()+1, 0, 0, 0, 0, ny))
		wantResult(t, "next day", e.one(t, q, "k", 1), true, 0)
	}
}
