package resilience_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

// stub is a RoundTripper answering 200 at once, as a baseline.
type stub struct{}

func (stub) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
}

func okSend(context.Context, *resilience.Call) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
}

// BenchmarkExecutor is the executor's overhead per successful call with
// no failures: the attempt function allocates its response (1 alloc) and
// does nothing else.
func BenchmarkExecutor(b *testing.B) {
	for _, bc := range []struct {
		name string
		s    resilience.Settings
		enf  bool
	}{
		{"defaults", resilience.Settings{}, false},
		{"defaults,enforced-deadline", resilience.Settings{}, true},
		{"breaker+bulkhead", resilience.Settings{Breaker: &resilience.BreakerSettings{}, Bulkhead: &resilience.BulkheadSettings{}}, true},
		{"no-timeouts", resilience.Settings{Timeout: -1, AttemptTimeout: -1}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := mustNew(b, bc.s)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				c := resilience.Call{Method: "GET", Replayable: true, EnforcesDeadline: bc.enf, Send: okSend}
				resp, err := e.Do(ctx, &c)
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkTransport compares a request through resilience.Transport
// (defaults) with the same request straight to the base RoundTripper (a
// stub that answers at once, so only the adapter's cost shows).
func BenchmarkTransport(b *testing.B) {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:1/x", nil)
	for _, bc := range []struct {
		name string
		rt   http.RoundTripper
	}{
		{"base", stub{}},
		{"resilience", &resilience.Transport{Base: stub{}, Executor: mustNew(b, resilience.Settings{})}},
		{"resilience,breaker", &resilience.Transport{Base: stub{}, Executor: mustNew(b, resilience.Settings{Breaker: &resilience.BreakerSettings{}})}},
		{"resilience,caller-deadline", &resilience.Transport{Base: stub{}, Executor: mustNew(b, resilience.Settings{})}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := req
			if strings.HasSuffix(bc.name, "caller-deadline") {
				// The caller's context ends before the 5s attempt timeout
				// would: the attempt runs on it (no context derived).
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
				defer cancel()
				req = req.WithContext(ctx)
			}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := bc.rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
			}
		})
	}
}

func openBreaker(b *testing.B) *resilience.Breaker {
	br, _ := resilience.NewBreaker("x", resilience.BreakerSettings{ConsecutiveFailures: 1, Cooldown: time.Hour})
	t, _ := br.Allow(context.Background(), time.Now())
	br.Done(context.Background(), time.Now(), t, resilience.Outcome{StatusCode: 503})
	if br.State() != resilience.BreakerOpen {
		b.Fatal("not open")
	}
	return br
}

// BenchmarkBreakerOpen is an open breaker's rejection: Allow alone, and
// a whole Executor.Do rejected by it.
func BenchmarkBreakerOpen(b *testing.B) {
	b.Run("Allow", func(b *testing.B) {
		br := openBreaker(b)
		ctx := context.Background()
		now := time.Now()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := br.Allow(ctx, now); err == nil {
				b.Fatal("admitted")
			}
		}
	})
	b.Run("Do", func(b *testing.B) {
		e := mustNew(b, resilience.Settings{Breaker: &resilience.BreakerSettings{ConsecutiveFailures: 1, Cooldown: time.Hour}, Retry: resilience.RetrySettings{MaxAttempts: 1}})
		fail := func(context.Context, *resilience.Call) (*http.Response, error) {
			return &http.Response{StatusCode: 503, Body: http.NoBody}, nil
		}
		resp, _ := e.Do(context.Background(), &resilience.Call{Send: fail})
		resp.Body.Close()
		ctx := context.Background()
		c := &resilience.Call{Method: "GET", Send: fail, EnforcesDeadline: true}
		b.ReportAllocs()
		for b.Loop() {
			*c = resilience.Call{Method: "GET", Send: fail, EnforcesDeadline: true}
			if _, err := e.Do(ctx, c); err == nil {
				b.Fatal("admitted")
			}
		}
	})
}

func BenchmarkTransportNoTimeouts(b *testing.B) {
	req, _ := http.NewRequest("GET", "http://127.0.0.1:1/x", nil)
	rt := &resilience.Transport{Base: stub{}, Executor: mustNew(b, resilience.Settings{Timeout: -1, AttemptTimeout: -1})}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := rt.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}
