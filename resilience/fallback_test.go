package resilience_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

func TestStaleIfError(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	body := "fresh"
	status := 200
	cc := "max-age=10"
	send := func(context.Context, *resilience.Call) (*http.Response, error) {
		return &http.Response{StatusCode: status, Header: hdr("Cache-Control", cc), Body: io.NopCloser(strings.NewReader(body))}, nil
	}
	rec := &recorder{}
	e := mustNew(t, resilience.Settings{Clock: clock, Observer: rec, Retry: resilience.RetrySettings{MaxAttempts: 1},
		Stale: &resilience.StaleSettings{MaxStale: time.Minute}})
	get := func(method string) (*http.Response, string, error) {
		resp, err := e.Do(context.Background(), &resilience.Call{Method: method, Target: "https://x/a", Send: send})
		if err != nil {
			return nil, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), nil
	}
	if _, b, err := get("GET"); err != nil || b != "fresh" {
		t.Fatal(b, err)
	}
	status, body = 503, "down"
	clock.Advance(42 * time.Second)
	resp, b, err := get("GET")
	if err != nil || b != "fresh" || resp.StatusCode != 200 || resp.Header.Get("Age") != "42" || resp.Header.Get(resilience.StaleHeader) != "true" {
		t.Fatalf("stale not served: %v %q %v", resp, b, err)
	}
	if resp, _, _ := get("POST"); resp.StatusCode != 503 {
		t.Error("stale served for POST")
	}
	clock.Advance(30 * time.Second) // 72 s: past max-age 10 + MaxStale 60
	if resp, b, _ := get("GET"); resp.StatusCode != 503 || b != "down" {
		t.Errorf("too stale a response served: %d %q", resp.StatusCode, b)
	}
	// stale-if-error in the response wins over MaxStale; no-store is not kept.
	status, body, cc = 200, "v2", "stale-if-error=5"
	get("GET")
	status, body = 500, "down"
	clock.Advance(6 * time.Second)
	if resp, _, _ := get("GET"); resp.StatusCode != 500 {
		t.Error("served past the response's own stale-if-error")
	}
	status, body, cc = 200, "secret", "no-store"
	get("GET")
	status = 502
	if resp, _, _ := get("GET"); resp.StatusCode != 502 {
		t.Error("a no-store response was served stale")
	}
}

func TestStaleCoversAnOpenBreaker(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	fail := false
	send := func(context.Context, *resilience.Call) (*http.Response, error) {
		if fail {
			return nil, errors.New("connection reset")
		}
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok"))}, nil
	}
	e := mustNew(t, resilience.Settings{Clock: clock, Retry: resilience.RetrySettings{MaxAttempts: 1}, Stale: &resilience.StaleSettings{},
		Breaker: &resilience.BreakerSettings{ConsecutiveFailures: 1}})
	for i := range 3 {
		resp, err := e.Do(context.Background(), &resilience.Call{Target: "u", Send: send})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("call %d: %v %v", i, resp, err)
		}
		closeResp(resp)
		fail = true
	}
	if e.Parts().Breaker.State() != resilience.BreakerOpen {
		t.Error("breaker not open")
	}
}

func TestSecondaryUpstream(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	secondary := &script{steps: []step{{status: 200}}}
	sec := mustNew(t, resilience.Settings{Name: "secondary", Clock: clock})
	rec := &recorder{}
	primary := &script{steps: []step{{err: dialErr}}}
	e := mustNew(t, resilience.Settings{Name: "primary", Clock: clock, Observer: rec,
		Secondary: &resilience.SecondarySettings{Executor: sec, Send: secondary.send}})
	resp, err := e.Do(context.Background(), &resilience.Call{Method: "POST", Replayable: true, Send: primary.send})
	closeResp(resp)
	if err != nil || resp.StatusCode != 200 || primary.count() != 3 || secondary.count() != 1 {
		t.Fatalf("%v %v; primary %d, secondary %d attempts", resp, err, primary.count(), secondary.count())
	}
	// A POST without a key that reached the primary (a 503) stays there.
	primary2 := &script{steps: []step{{status: 503}}}
	resp, err = e.Do(context.Background(), &resilience.Call{Method: "POST", Replayable: true, Send: primary2.send})
	closeResp(resp)
	if err != nil || resp.StatusCode != 503 || secondary.count() != 1 {
		t.Fatalf("an unkeyed POST fell back after reaching the primary: %v %v", resp, err)
	}
}
