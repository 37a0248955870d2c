package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/resilience"
)

// A client for a flaky third party: the first attempt gets a 503 with
// Retry-After: 0, the retry carries the same generated Idempotency-Key.
func ExampleTransport() {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Println("attempt", n.Load(), "key length", len(r.Header.Get("Idempotency-Key")))
		io.WriteString(w, "charged once")
	}))
	defer srv.Close()

	exec, err := resilience.New(resilience.Settings{
		Name:    "payments",
		Retry:   resilience.RetrySettings{AutoKey: true},
		Breaker: &resilience.BreakerSettings{},
	})
	if err != nil {
		panic(err)
	}
	client := &http.Client{Transport: &resilience.Transport{Executor: exec}}
	resp, err := client.Post(srv.URL, "application/json", strings.NewReader(`{"amount":100}`))
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(b))
	// Output:
	// attempt 2 key length 32
	// 200 charged once
}

// The executor around a plain attempt function, as a client that never
// goes through an http.RoundTripper uses it.
func ExampleExecutor_Do() {
	exec, _ := resilience.New(resilience.Settings{
		Name:    "crm",
		Retry:   resilience.RetrySettings{MaxAttempts: 2, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond},
		Breaker: &resilience.BreakerSettings{ConsecutiveFailures: 2, Cooldown: time.Minute},
	})
	send := func(ctx context.Context, c *resilience.Call) (*http.Response, error) {
		fmt.Println("attempt", c.Attempt())
		return &http.Response{StatusCode: http.StatusBadGateway, Body: http.NoBody}, nil
	}
	for range 2 {
		resp, err := exec.Do(context.Background(), &resilience.Call{Method: "GET", Replayable: true, Send: send})
		if err != nil {
			var open *resilience.OpenError
			fmt.Println("open:", errors.As(err, &open), "rejected before I/O:", errors.Is(err, resilience.ErrRejected))
			continue
		}
		resp.Body.Close()
		fmt.Println("status", resp.StatusCode)
	}
	fmt.Println("breaker", exec.Parts().Breaker.State())
	// Output:
	// attempt 0
	// attempt 1
	// status 502
	// open: true rejected before I/O: true
	// breaker open
}

func ExampleParseRetryAfter() {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, v := range []string{"120", "Fri, 02 Jan 2026 03:05:05 GMT", "soon"} {
		d, ok := resilience.ParseRetryAfter(v, now)
		fmt.Println(d, ok)
	}
	// Output:
	// 2m0s true
	// 1m0s true
	// 0s false
}
