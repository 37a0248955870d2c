package resilience_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

// TestBreakerCycle walks closed -> open -> half-open -> open -> half-open
// -> closed on an injected clock.
func TestBreakerCycle(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var changes []string
	b, err := resilience.NewBreaker("crm", resilience.BreakerSettings{ConsecutiveFailures: 3, Cooldown: 10 * time.Second, HalfOpenProbes: 2,
		OnStateChange: func(name string, from, to resilience.BreakerState) {
			changes = append(changes, name+":"+from.String()+">"+to.String())
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	fail, ok := resilience.Outcome{StatusCode: 503}, resilience.Outcome{StatusCode: 200}
	admit := func(o resilience.Outcome) error {
		tk, err := b.Allow(ctx, clock.Now())
		if err == nil {
			b.Done(ctx, clock.Now(), tk, o)
		}
		return err
	}
	steps := []struct {
		advance time.Duration
		outcome resilience.Outcome
		wantErr bool
		state   resilience.BreakerState
	}{
		{0, fail, false, resilience.BreakerClosed},
		{0, ok, false, resilience.BreakerClosed}, // a success resets the count
		{0, fail, false, resilience.BreakerClosed},
		{0, fail, false, resilience.BreakerClosed},
		{0, fail, false, resilience.BreakerOpen}, // third in a row
		{0, ok, true, resilience.BreakerOpen},
		{9 * time.Second, ok, true, resilience.BreakerOpen},
		{time.Second, fail, false, resilience.BreakerOpen}, // cooldown over: the probe fails
		{5 * time.Second, ok, true, resilience.BreakerOpen},
		{5 * time.Second, ok, false, resilience.BreakerHalfOpen}, // first probe succeeds
		{0, ok, false, resilience.BreakerClosed},                 // second closes
		{0, fail, false, resilience.BreakerClosed},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		err := admit(s.outcome)
		if (err != nil) != s.wantErr {
			t.Fatalf("step %d: err = %v", i, err)
		}
		if err != nil && !errors.Is(err, resilience.ErrBreakerOpen) {
			t.Fatalf("step %d: err = %v, want ErrBreakerOpen", i, err)
		}
		if got := b.State(); got != s.state {
			t.Fatalf("step %d: state %v, want %v", i, got, s.state)
		}
	}
	want := []string{"crm:closed>open", "crm:open>half_open", "crm:half_open>open", "crm:open>half_open", "crm:half_open>closed"}
	if !slices.Equal(changes, want) {
		t.Errorf("transitions %v, want %v", changes, want)
	}
}

func TestBreakerOpenErrorCarriesTheCooldown(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	b, _ := resilience.NewBreaker("bank", resilience.BreakerSettings{ConsecutiveFailures: 1, Cooldown: 30 * time.Second})
	tk, _ := b.Allow(context.Background(), clock.Now())
	b.Done(context.Background(), clock.Now(), tk, resilience.Outcome{Err: errors.New("boom")})
	clock.Advance(12 * time.Second)
	_, err := b.Allow(context.Background(), clock.Now())
	var oe *resilience.OpenError
	if !errors.As(err, &oe) || oe.Remaining(clock.Now()) != 18*time.Second || oe.Upstream != "bank" || !errors.Is(err, resilience.ErrRejected) {
		t.Fatalf("err = %v", err)
	}
	_, err2 := b.Allow(context.Background(), clock.Now())
	if err2 != err {
		t.Error("the rejections of one open period are not the same error value")
	}
}

func TestBreakerFailureRatio(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	b, _ := resilience.NewBreaker("x", resilience.BreakerSettings{ConsecutiveFailures: -1, FailureRatio: 0.5, MinCalls: 10, Window: 10 * time.Second})
	ctx := context.Background()
	for i := range 9 { // 9 calls, 5 failures: below MinCalls
		tk, err := b.Allow(ctx, clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		b.Done(ctx, clock.Now(), tk, resilience.Outcome{StatusCode: []int{200, 500}[i%2]})
	}
	if b.State() != resilience.BreakerClosed {
		t.Fatal("opened below MinCalls")
	}
	clock.Advance(11 * time.Second) // the window forgets them
	for i := range 10 {
		tk, _ := b.Allow(ctx, clock.Now())
		b.Done(ctx, clock.Now(), tk, resilience.Outcome{StatusCode: []int{200, 500}[i%2]})
	}
	if b.State() != resilience.BreakerOpen {
		t.Fatalf("state %v after 5 of 10 failing, want open", b.State())
	}
}

func TestBreakerIgnoresCancellations(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	rec := &recorder{}
	e := mustNew(t, resilience.Settings{Clock: clock, Observer: rec, Retry: resilience.RetrySettings{MaxAttempts: 1},
		Breaker: &resilience.BreakerSettings{ConsecutiveFailures: 2}})
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := e.Do(ctx, &resilience.Call{Send: func(context.Context, *resilience.Call) (*http.Response, error) {
			cancel()
			return nil, context.Canceled
		}})
		if !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	}
	if st := e.Parts().Breaker.State(); st != resilience.BreakerClosed {
		t.Fatalf("cancellations opened the breaker: %v", st)
	}
	sc := &script{steps: []step{{status: 502}}}
	for range 3 {
		resp, _ := e.Do(context.Background(), &resilience.Call{Send: sc.send})
		closeResp(resp)
	}
	if sc.count() != 2 {
		t.Errorf("%d attempts reached the upstream, want 2 (then open)", sc.count())
	}
	if got, want := rec.kinds(), []string{"breaker_transition:closed>open", "breaker_rejected"}; !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// TestOpenBreakerStopsRetries: a retry never bypasses an open breaker.
func TestOpenBreakerStopsRetries(t *testing.T) {
	t.Parallel()
	sc := &script{steps: []step{{status: 503}}}
	e := mustNew(t, resilience.Settings{Clock: newFakeClock(), Timeout: -1, Retry: resilience.RetrySettings{MaxAttempts: 5}, Budget: resilience.BudgetSettings{Ratio: -1},
		Breaker: &resilience.BreakerSettings{ConsecutiveFailures: 2}})
	_, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
	if !errors.Is(err, resilience.ErrBreakerOpen) || sc.count() != 2 {
		t.Fatalf("err %v after %d attempts; want ErrBreakerOpen after 2", err, sc.count())
	}
	// Two attempts were sent: the call was not rejected before any I/O,
	// so nothing may take it for unsent (a fallback that re-sends an
	// unkeyed write, a queue that does not count the attempt).
	var ex *resilience.ExceededError
	if errors.Is(err, resilience.ErrRejected) || !errors.As(err, &ex) || ex.Attempts != 2 {
		t.Fatalf("err %v: want an *ExceededError of 2 attempts that does not match ErrRejected", err)
	}
	if _, ok := resilience.RetryAfter(err, time.Now()); ok {
		t.Fatalf("err %v carries the breaker's Retry-After: an attempt was sent, the refusal's delay does not apply", err)
	}
}

func TestBulkheadRejectsTheNPlusFirst(t *testing.T) {
	t.Parallel()
	const n = 4
	e := mustNew(t, resilience.Settings{Name: "bank", Clock: newFakeClock(), Retry: resilience.RetrySettings{MaxAttempts: 1},
		Bulkhead: &resilience.BulkheadSettings{MaxInFlight: n, MaxWait: 50 * time.Millisecond}})
	release, entered := make(chan struct{}), make(chan struct{}, n)
	send := func(ctx context.Context, c *resilience.Call) (*http.Response, error) {
		entered <- struct{}{}
		<-release
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	}
	errs := make(chan error, n)
	for range n {
		go func() {
			resp, err := e.Do(context.Background(), &resilience.Call{Send: send})
			closeResp(resp)
			errs <- err
		}()
	}
	for range n {
		<-entered
	}
	_, err := e.Do(context.Background(), &resilience.Call{Send: send})
	var be *resilience.BulkheadError
	if !errors.As(err, &be) || be.MaxInFlight != n || be.Waited != 50*time.Millisecond || !errors.Is(err, resilience.ErrRejected) {
		t.Fatalf("err = %v", err)
	}
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := e.Parts().Bulkhead.InFlight(); got != 0 {
		t.Errorf("%d slots still taken", got)
	}
}

func TestBulkheadWaitsForASlot(t *testing.T) {
	t.Parallel()
	b, _ := resilience.NewBulkhead(resilience.BulkheadSettings{MaxInFlight: 1, MaxWait: time.Minute})
	clock := resilience.SystemClock()
	if err := b.Acquire(context.Background(), clock, "x"); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Acquire(context.Background(), clock, "x") }()
	b.Release()
	if err := <-got; err != nil {
		t.Fatalf("a waiter did not get the freed slot: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if err := b.Acquire(ctx, clock, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	b.Release()
}
