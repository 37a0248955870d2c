package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
)

// gatedStore decides with a Local, but each call waits for a token from
// gate (or ctx's end): the test decides when, and whether, the store
// answers.
type gatedStore struct {
	local *ratelimit.Local
	gate  chan struct{}
	calls atomic.Int64
}

func (s *gatedStore) Decide(ctx context.Context, now time.Time, ds []ratelimit.Demand, rs []ratelimit.Result) (ratelimit.Ticket, error) {
	s.calls.Add(1)
	select {
	case <-s.gate:
	case <-ctx.Done():
		return ratelimit.Ticket{}, fmt.Errorf("gated: %w", ctx.Err())
	}
	return s.local.Decide(ctx, now, ds, rs)
}

func (s *gatedStore) Features() ratelimit.Features { return ratelimit.Features{} }

func (s *gatedStore) Release(ctx context.Context, ds []ratelimit.Demand, t ratelimit.Ticket) error {
	return s.local.Release(ctx, ds, t)
}

func serveOne(h http.Handler) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	return w
}

// A store that is slow but answering — one decision every 25 ms, so the
// last of 60 queued requests waits about 1.5 s, past the 1 s Timeout — is
// waited
// for: every request is decided by the store, none by the fallback, and
// the limit is exact (issue 10: one slow decision used to send every
// request to the per-replica fallback for a second).
func TestBreakerWaitsForASlowStore(t *testing.T) {
	t.Parallel()
	s := &gatedStore{local: ratelimit.NewLocal(ratelimit.LocalOptions{}), gate: make(chan struct{})}
	rec := &recorder{}
	mw, err := ratelimit.Middleware(ratelimit.Options{
		Rules: []ratelimit.Rule{{Policy: mustPolicy(t, "p", "1/m burst 5"), Key: ratelimit.Constant("")}},
		Store: s, Timeout: time.Second, MaxWait: time.Minute, OnDecision: rec.add,
		Breaker: ratelimit.NewBreaker(ratelimit.BreakerOptions{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	const n = 60
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if serveOne(h).Code == http.StatusOK {
				admitted.Add(1)
			}
		}()
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	// Answer one decision every 25 ms: always some progress within the
	// stall window of a waiting decision (40 times longer, for a loaded
	// machine).
	for fed := 0; ; fed++ {
		select {
		case s.gate <- struct{}{}:
			time.Sleep(25 * time.Millisecond)
			continue
		case <-all:
		}
		if fed != n {
			evs := rec.take()
			t.Fatalf("the store answered %d of %d decisions; the others fell back: %v", fed, n, evs[len(evs)-1].Err)
		}
		break
	}
	if got := admitted.Load(); got != 5 {
		t.Fatalf("admitted %d of %d, want exactly the burst of 5", got, n)
	}
	for _, e := range rec.take() {
		if e.Fallback || e.Err != nil {
			t.Fatalf("a decision fell back on a slow but healthy store: %+v", e)
		}
	}
}

// A store that answers nothing at all: the decision takes its failure
// mode after one Timeout (not MaxWait) and the breaker opens at once: the
// store is not called until OpenFor has passed, then one probe at a time
// tries it, and its answer closes the breaker.
func TestBreakerStalledStore(t *testing.T) {
	t.Parallel()
	s := &gatedStore{local: ratelimit.NewLocal(ratelimit.LocalOptions{}), gate: make(chan struct{})}
	f := newFixture(t, ratelimit.Options{
		Rules: []ratelimit.Rule{
			{Policy: mustPolicy(t, "open", "100/s"), Key: ratelimit.Constant("")},
		},
		Store: s, Timeout: 20 * time.Millisecond, MaxWait: time.Hour,
		Breaker: ratelimit.NewBreaker(ratelimit.BreakerOptions{OpenFor: time.Minute}),
	})
	for i := range 1 {
		done := make(chan int, 1)
		go func() { done <- f.do().Code }()
		select {
		case code := <-done:
			if code != http.StatusOK {
				t.Fatalf("stall %d: %d, want the fail-open fallback", i, code)
			}
		case <-time.After(30 * time.Second): // the no-hang bound; MaxWait is an hour
			t.Fatalf("stall %d: no answer", i)
		}
		evs := f.rec.take()
		if len(evs) != 1 || !evs[0].Fallback || !errorsIs(evs[0].Err, ratelimit.ErrStoreStalled) {
			t.Fatalf("stall %d: events %+v, want a fallback on ErrStoreStalled", i, evs)
		}
	}
	calls := s.calls.Load()
	for range 5 {
		f.do()
	}
	if got := s.calls.Load(); got != calls {
		t.Fatalf("the open breaker let %d calls through", got-calls)
	}
	f.clock.Advance(time.Minute)
	// One probe: while it waits for the store, other requests keep the
	// failure mode without calling it.
	probe := make(chan int)
	go func() { probe <- f.do().Code }()
	for s.calls.Load() != calls+1 {
		time.Sleep(time.Millisecond)
	}
	f.do()
	if got := s.calls.Load(); got != calls+1 {
		t.Fatalf("%d calls while one probe was in flight, want 1", got-calls)
	}
	s.gate <- struct{}{} // the store is back
	if code := <-probe; code != http.StatusOK {
		t.Fatalf("probe: %d", code)
	}
	f.rec.take()
	go func() { s.gate <- struct{}{} }()
	if w := f.do(); w.Code != http.StatusOK || s.calls.Load() != calls+2 {
		t.Fatalf("after the probe: %d, %d calls", w.Code, s.calls.Load()-calls)
	}
	if evs := f.rec.take(); evs[len(evs)-1].Fallback {
		t.Fatal("after a successful probe the store did not decide")
	}
}

// slowKeyStore never answers decisions on key "slow" (until ctx ends)
// and answers the others at once: a store alive but too slow for one
// request.
type slowKeyStore struct{ local *ratelimit.Local }

func (s slowKeyStore) Decide(ctx context.Context, now time.Time, ds []ratelimit.Demand, rs []ratelimit.Result) (ratelimit.Ticket, error) {
	if ds[0].Key == "slow" {
		<-ctx.Done()
		return ratelimit.Ticket{}, fmt.Errorf("slow: %w", ctx.Err())
	}
	return s.local.Decide(ctx, now, ds, rs)
}

func (s slowKeyStore) Features() ratelimit.Features { return ratelimit.Features{} }

func (s slowKeyStore) Release(ctx context.Context, ds []ratelimit.Demand, t ratelimit.Ticket) error {
	return s.local.Release(ctx, ds, t)
}

// One decision past MaxWait while the store keeps answering others gets
// the failure mode for that request alone (here fail_closed: 503), after
// MaxWait rather than Timeout, and the breaker stays closed.
func TestBreakerOneSlowDecisionIsNotAnOutage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, ratelimit.Options{
		Rules: []ratelimit.Rule{{Policy: mustPolicy(t, "closed", "1000000/s"), Key: ratelimit.Header("X-K"), OnStoreError: ratelimit.FailClosed}},
		Store: slowKeyStore{ratelimit.NewLocal(ratelimit.LocalOptions{})}, Timeout: 500 * time.Millisecond, MaxWait: 1500 * time.Millisecond,
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // other requests, answered: the store is alive
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			f.do(withHeader("X-K", "fast"))
			time.Sleep(time.Millisecond)
		}
	}()
	w := f.do(withHeader("X-K", "slow"))
	close(stop)
	wg.Wait()
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("past MaxWait: %d, want this request's fail_closed 503", w.Code)
	}
	var slowErr error
	for _, e := range f.rec.take() {
		if e.Outcome == ratelimit.OutcomeError {
			slowErr = e.Err
		}
	}
	if slowErr == nil || errorsIs(slowErr, ratelimit.ErrStoreStalled) {
		t.Fatalf("the slow request's error %v: want MaxWait's deadline, not a stall", slowErr)
	}
	if w := f.do(withHeader("X-K", "fast")); w.Code != http.StatusOK {
		t.Fatalf("the next request: %d, want the store to decide (breaker still closed)", w.Code)
	}
	if evs := f.rec.take(); evs[0].Err != nil {
		t.Fatalf("next request: %+v", evs[0])
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// A refused connection is proof the server is down: the breaker opens at
// once, without waiting for Failures.
func TestBreakerRefusedConnectionOpensAtOnce(t *testing.T) {
	t.Parallel()
	down := &countingStore{err: fmt.Errorf("dial: %w", syscall.ECONNREFUSED)}
	f := newFixture(t, ratelimit.Options{
		Rules: []ratelimit.Rule{{Policy: mustPolicy(t, "p", "100/s"), Key: ratelimit.Constant("")}},
		Store: down,
	})
	for range 5 {
		if w := f.do(); w.Code != http.StatusOK {
			t.Fatalf("%d", w.Code)
		}
	}
	if got := down.calls.Load(); got != 1 {
		t.Fatalf("store called %d times, want 1 (then the breaker is open)", got)
	}
}

type countingStore struct {
	err   error
	calls atomic.Int64
}

func (s *countingStore) Decide(context.Context, time.Time, []ratelimit.Demand, []ratelimit.Result) (ratelimit.Ticket, error) {
	s.calls.Add(1)
	return ratelimit.Ticket{}, s.err
}

func (s *countingStore) Features() ratelimit.Features { return ratelimit.Features{} }

func (s *countingStore) Release(context.Context, []ratelimit.Demand, ratelimit.Ticket) error {
	return s.err
}

// Policy.Share divides a policy among replicas so that together they
// admit about the policy: exactly its rate, its burst rounded up.
func TestPolicyShare(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		spec string
		n    int
		want string
	}{
		{"100/s burst 200", 4, "25/s burst 50"},
		{"100/s burst 200", 3, "100/3s burst 67"},
		{"1/m burst 5", 3, "1/3m burst 2"},
		{"100/s", 1, "100/s"},
		{"concurrency 10", 3, "concurrency 4"},
		{"10000/month", 3, "3334/month"},
		{"1/d", 400, "1/d"}, // 400 days is past MaxPeriod: the limit is rounded up instead
	} {
		p := mustPolicy(t, "p", c.spec).Share(c.n)
		if err := p.Validate(); err != nil || p.String() != c.want {
			t.Errorf("%q.Share(%d) = %q (%v), want %q", c.spec, c.n, p, err, c.want)
		}
	}
}
