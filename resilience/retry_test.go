package resilience_test

import (
	"context"
	"crypto/x509"
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

var dialErr = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}

func TestRetryDecisions(t *testing.T) {
	t.Parallel()
	s503 := step{status: 503}
	ok := step{status: 200}
	cases := []struct {
		name     string
		method   string
		key      string
		autoKey  bool
		unreplay bool
		steps    []step
		attempts int
		status   int
		errIs    error
	}{
		{name: "GET 503 then 200", steps: []step{s503, s503, ok}, attempts: 3, status: 200},
		{name: "GET exhausted returns the last response", steps: []step{s503}, attempts: 3, status: 503},
		{name: "GET 408/429/502/504 retried", steps: []step{{status: 408}, {status: 429}, {status: 502}, {status: 504}, ok}, attempts: 3, status: 502},
		{name: "POST without a key: once", method: "POST", steps: []step{s503}, attempts: 1, status: 503},
		{name: "POST with a key: retried", method: "POST", key: "k1", steps: []step{s503, ok}, attempts: 2, status: 200},
		{name: "POST AutoKey: retried", method: "POST", autoKey: true, steps: []step{s503, ok}, attempts: 2, status: 200},
		{name: "PATCH without a key: once", method: "PATCH", steps: []step{{status: 502}}, attempts: 1, status: 502},
		{name: "PUT is idempotent", method: "PUT", steps: []step{s503, ok}, attempts: 2, status: 200},
		{name: "POST connect error: nothing was sent, retried", method: "POST", steps: []step{{err: dialErr}, ok}, attempts: 2, status: 200},
		{name: "POST transport error without a key: once", method: "POST", steps: []step{{err: errors.New("connection reset")}}, attempts: 1, errIs: nil},
		{name: "400 once", steps: []step{{status: 400}}, attempts: 1, status: 400},
		{name: "404 once", steps: []step{{status: 404}}, attempts: 1, status: 404},
		{name: "409 once", steps: []step{{status: 409}}, attempts: 1, status: 409},
		{name: "501 once", steps: []step{{status: 501}}, attempts: 1, status: 501},
		{name: "307 once", method: "POST", key: "k", steps: []step{{status: 307}}, attempts: 1, status: 307},
		{name: "Stripe-Should-Retry false", steps: []step{{status: 503, header: hdr("Stripe-Should-Retry", "false")}}, attempts: 1, status: 503},
		{name: "X-Should-Retry false", steps: []step{{status: 429, header: hdr("X-Should-Retry", "false")}}, attempts: 1, status: 429},
		{name: "Stripe-Should-Retry true on 409", method: "POST", key: "k", steps: []step{{status: 409, header: hdr("Stripe-Should-Retry", "true")}, ok}, attempts: 2, status: 200},
		{name: "certificate error once", steps: []step{{err: x509.UnknownAuthorityError{}}}, attempts: 1},
		{name: "not replayable: once", unreplay: true, steps: []step{s503}, attempts: 1, status: 503},
		{name: "connect errors exhausted", steps: []step{{err: dialErr}}, attempts: 3, errIs: resilience.ErrExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := &script{steps: tc.steps}
			e := mustNew(t, resilience.Settings{Name: "t", Clock: newFakeClock(), Retry: resilience.RetrySettings{AutoKey: tc.autoKey}})
			resp, err := e.Do(context.Background(), &resilience.Call{Method: tc.method, Key: tc.key, Replayable: !tc.unreplay, Send: sc.send})
			defer closeResp(resp)
			if got := sc.count(); got != tc.attempts {
				t.Errorf("attempts = %d, want %d", got, tc.attempts)
			}
			if tc.status != 0 && (err != nil || resp.StatusCode != tc.status) {
				t.Fatalf("got %v, %v; want status %d", resp, err, tc.status)
			}
			if tc.errIs != nil && !errors.Is(err, tc.errIs) {
				t.Fatalf("err = %v, want %v", err, tc.errIs)
			}
			keys := map[string]bool{}
			for i, a := range sc.attempts {
				if a.n != i {
					t.Errorf("attempt %d has resend count %d", i, a.n)
				}
				keys[a.key] = true
			}
			if len(keys) != 1 {
				t.Errorf("keys across attempts: %v, want one", keys)
			}
			if tc.autoKey && sc.attempts[0].key == "" || tc.key != "" && sc.attempts[0].key != tc.key {
				t.Errorf("key = %q", sc.attempts[0].key)
			}
		})
	}
}

func TestExceededErrorCarriesTheLastError(t *testing.T) {
	t.Parallel()
	sc := &script{steps: []step{{err: dialErr}}}
	e := mustNew(t, resilience.Settings{Clock: newFakeClock()})
	_, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
	var ee *resilience.ExceededError
	var op *net.OpError
	if !errors.As(err, &ee) || ee.Attempts != 3 || !errors.As(err, &op) || op != dialErr {
		t.Fatalf("err = %#v", err)
	}
}

func TestRetryAfterIsHonouredExactly(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"2", epoch.Add(2 * time.Second).Format(http.TimeFormat)} {
		clock := newFakeClock()
		sc := &script{steps: []step{{status: 503, header: hdr("Retry-After", v)}, {status: 200}}}
		e := mustNew(t, resilience.Settings{Clock: clock, Retry: resilience.RetrySettings{Rand: func(int64) int64 { return 0 }}})
		resp, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
		closeResp(resp)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("Retry-After %q: %v %v", v, resp, err)
		}
		if got := clock.Sleeps(); !slices.Equal(got, []time.Duration{2 * time.Second}) {
			t.Errorf("Retry-After %q: slept %v, want [2s]", v, got)
		}
	}
}

func TestRetryAfterInvalidFallsBackToBackoff(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 503, header: hdr("Retry-After", "soon")}, {status: 200}}}
	e := mustNew(t, resilience.Settings{Clock: clock, Retry: resilience.RetrySettings{BaseDelay: time.Second, Rand: func(n int64) int64 { return n - 1 }}})
	resp, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
	closeResp(resp)
	if err != nil {
		t.Fatal(err)
	}
	if got := clock.Sleeps(); !slices.Equal(got, []time.Duration{time.Second}) {
		t.Errorf("slept %v, want the computed backoff [1s]", got)
	}
}

// TestRegressionRetryAfter3600MustNotSleepAnHour: a popular retry library
// slept for an hour on Retry-After: 3600; above the cap the call fails
// fast with the server's value in the error.
func TestRegressionRetryAfter3600MustNotSleepAnHour(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 429, header: hdr("Retry-After", "3600")}}}
	e := mustNew(t, resilience.Settings{Name: "crm", Clock: clock, Timeout: -1})
	_, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
	var ra *resilience.RetryAfterError
	if !errors.As(err, &ra) || ra.RetryAfter != time.Hour || ra.Max != 20*time.Second || ra.Last.StatusCode != 429 || !errors.Is(err, resilience.ErrRetryAfterTooLong) {
		t.Fatalf("err = %#v", err)
	}
	if n := len(clock.Sleeps()); n != 0 || sc.count() != 1 {
		t.Errorf("slept %d times, %d attempts; want fail fast", n, sc.count())
	}
	if d, ok := resilience.RetryAfter(err, clock.Now()); !ok || d != time.Hour {
		t.Errorf("RetryAfter(err) = %v, %v", d, ok)
	}
}

func TestRetryAfterBeyondTheDeadlineFailsFast(t *testing.T) {
	t.Parallel()
	sc := &script{steps: []step{{status: 503, header: hdr("Retry-After", "10")}}}
	e := mustNew(t, resilience.Settings{Clock: newFakeClock(), Timeout: 5 * time.Second, AttemptTimeout: time.Second, Retry: resilience.RetrySettings{MaxDelay: time.Second}})
	_, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
	var ra *resilience.RetryAfterError
	if !errors.As(err, &ra) || ra.Max != 5*time.Second {
		t.Fatalf("err = %v", err)
	}
}

// TestFullJitterIsUniform draws many backoffs from a seeded source and
// checks they spread uniformly over [0, min(cap, base·2^(n−1))].
func TestFullJitterIsUniform(t *testing.T) {
	t.Parallel()
	rnd := rand.New(rand.NewPCG(1, 2))
	const samples = 40000
	base, maxDelay := 100*time.Millisecond, 10*time.Second
	for _, n := range []int{1, 3, 9} {
		ceil := min(maxDelay, base<<(n-1))
		var deciles [10]int
		var sum float64
		for range samples {
			d := resilience.Backoff(n, base, maxDelay, rnd.Int64N)
			if d < 0 || d > ceil {
				t.Fatalf("retry %d: %v outside [0, %v]", n, d, ceil)
			}
			sum += float64(d)
			deciles[min(int(10*float64(d)/float64(ceil)), 9)]++
		}
		if mean := sum / samples / float64(ceil); math.Abs(mean-0.5) > 0.01 {
			t.Errorf("retry %d: mean %.3f of the ceiling, want 0.5", n, mean)
		}
		for i, c := range deciles {
			if f := float64(c) / samples; math.Abs(f-0.1) > 0.01 {
				t.Errorf("retry %d: decile %d holds %.3f, want 0.1", n, i, f)
			}
		}
	}
	if d := resilience.Backoff(80, time.Second, 3*time.Second, func(n int64) int64 { return n - 1 }); d != 3*time.Second {
		t.Errorf("Backoff(80) = %v, want the cap", d)
	}
}

func TestBackoffThroughTheExecutor(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 503}}}
	e := mustNew(t, resilience.Settings{Clock: clock, Timeout: -1, Retry: resilience.RetrySettings{MaxAttempts: 5, BaseDelay: time.Second, MaxDelay: 3 * time.Second,
		Rand: func(n int64) int64 { return n - 1 }}, Budget: resilience.BudgetSettings{Ratio: -1}})
	resp, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
	closeResp(resp)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}
	if got := clock.Sleeps(); !slices.Equal(got, want) {
		t.Errorf("slept %v, want %v", got, want)
	}
}

func TestCancelDuringBackoffReturnsAtOnce(t *testing.T) {
	t.Parallel()
	sc := &script{steps: []step{{status: 503}}}
	e := mustNew(t, resilience.Settings{Timeout: -1, AttemptTimeout: -1, Retry: resilience.RetrySettings{BaseDelay: time.Hour, MaxDelay: time.Hour,
		Rand: func(n int64) int64 { return n - 1 }}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		resp, err := e.Do(ctx, &resilience.Call{Replayable: true, Send: sc.send})
		closeResp(resp)
		done <- err
	}()
	for sc.count() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do did not return after cancel during an hour-long backoff")
	}
}

// TestRegressionRetriesMustNotAmplifyAnOutage: retries at several layers
// turned one failure into 27; the budget keeps retries near 10%.
func TestRegressionRetriesMustNotAmplifyAnOutage(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 503}}}
	rec := &recorder{}
	e := mustNew(t, resilience.Settings{Clock: clock, Observer: rec, Timeout: -1, Retry: resilience.RetrySettings{MaxAttempts: 4, BaseDelay: time.Nanosecond, MaxDelay: time.Nanosecond}})
	const calls = 1000
	var budgetErrs int
	for range calls {
		resp, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
		closeResp(resp)
		var be *resilience.BudgetError
		if errors.As(err, &be) {
			budgetErrs++
			if be.Last.StatusCode != 503 || !errors.Is(err, resilience.ErrBudgetExhausted) {
				t.Fatalf("err = %#v", be)
			}
		}
	}
	// 10% of 1000 calls plus the floor of 1/s over the 10 s window.
	retries := sc.count() - calls
	if retries > 110 || retries < 100 {
		t.Errorf("%d retries for %d calls at 100%% failure; want 100..110 (without a budget: %d)", retries, calls, 3*calls)
	}
	if budgetErrs < calls-110 {
		t.Errorf("%d budget errors", budgetErrs)
	}
}

func TestAttemptTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	var attempts int
	send := func(ctx context.Context, c *resilience.Call) (*http.Response, error) {
		attempts++
		<-ctx.Done()
		return nil, ctx.Err()
	}
	e := mustNew(t, resilience.Settings{AttemptTimeout: 20 * time.Millisecond, Timeout: 10 * time.Second, Retry: resilience.RetrySettings{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}})
	_, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: send})
	if attempts != 3 || !errors.Is(err, resilience.ErrAttemptTimeout) || !errors.Is(err, resilience.ErrExceeded) {
		t.Fatalf("attempts %d, err %v", attempts, err)
	}
}

func TestEnforcedDeadlineIsTheAttempts(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var deadlines []time.Duration
	send := func(ctx context.Context, c *resilience.Call) (*http.Response, error) {
		if _, ok := ctx.Deadline(); ok {
			t.Error("EnforcesDeadline: the attempt's context has a deadline")
		}
		deadlines = append(deadlines, c.Deadline().Sub(clock.Now()))
		clock.Advance(2 * time.Second) // the upstream hangs past the deadline
		return nil, errors.New("i/o timeout")
	}
	e := mustNew(t, resilience.Settings{Clock: clock, AttemptTimeout: time.Second, Timeout: 10 * time.Second,
		Retry: resilience.RetrySettings{MaxAttempts: 2, MaxDelay: time.Second}})
	_, err := e.Do(context.Background(), &resilience.Call{Replayable: true, EnforcesDeadline: true, Send: send})
	if !errors.Is(err, resilience.ErrAttemptTimeout) || len(deadlines) != 2 || deadlines[0] != time.Second {
		t.Fatalf("err %v, deadlines %v", err, deadlines)
	}
}

func TestSettingsValidateNamesTheField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s    resilience.Settings
		want string
	}{
		{resilience.Settings{Retry: resilience.RetrySettings{Statuses: []int{404}}}, "Retry.Statuses"},
		{resilience.Settings{Retry: resilience.RetrySettings{Statuses: []int{501}}}, "Retry.Statuses"},
		{resilience.Settings{Retry: resilience.RetrySettings{MaxAttempts: 10}}, "Retry.MaxAttempts"},
		{resilience.Settings{Retry: resilience.RetrySettings{MaxAttempts: -1}}, "Retry.MaxAttempts"},
		{resilience.Settings{Retry: resilience.RetrySettings{KeyHeader: "bad header"}}, "Retry.KeyHeader"},
		{resilience.Settings{Budget: resilience.BudgetSettings{Ratio: 11}}, "Budget.Ratio"},
		{resilience.Settings{Budget: resilience.BudgetSettings{Window: 1500 * time.Millisecond}}, "Budget.Window"},
		{resilience.Settings{Breaker: &resilience.BreakerSettings{FailureRatio: 2}}, "Breaker.FailureRatio"},
		{resilience.Settings{Breaker: &resilience.BreakerSettings{HalfOpenProbes: -1}}, "Breaker.HalfOpenProbes"},
		{resilience.Settings{Bulkhead: &resilience.BulkheadSettings{MaxInFlight: -1}}, "Bulkhead.MaxInFlight"},
		{resilience.Settings{Limit: &resilience.LimitSettings{}}, "Limit.Policies"},
		{resilience.Settings{AttemptTimeout: time.Minute}, "AttemptTimeout"},
		{resilience.Settings{Secondary: &resilience.SecondarySettings{}}, "Secondary.Executor"},
	} {
		err := tc.s.Validate()
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
		}
		if _, err := resilience.New(tc.s); err == nil {
			t.Errorf("New accepted settings Validate refuses (%s)", tc.want)
		}
	}
	if err := (resilience.Settings{}).Validate(); err != nil {
		t.Errorf("the zero Settings are invalid: %v", err)
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub)))
}
