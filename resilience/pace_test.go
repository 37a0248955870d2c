package resilience_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/resilience"
)

// TestAnnouncedZeroQuotaPausesCalls: a partner announcing
// RateLimit: "x";r=0;t=2 is not called again for 2 s.
func TestAnnouncedZeroQuotaPausesCalls(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 200, header: hdr("RateLimit", `"x";r=0;t=2`, "RateLimit-Policy", `"x";q=10;w=60`)}, {status: 200}}}
	e := mustNew(t, resilience.Settings{Name: "partner", Clock: clock, Pace: &resilience.PaceSettings{MaxWait: time.Second}})
	call := func() error {
		resp, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: sc.send})
		closeResp(resp)
		return err
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(500 * time.Millisecond)
	err := call()
	var pe *resilience.PacedError
	if !errors.As(err, &pe) || pe.Reason != resilience.PacedPause || pe.Wait != 1500*time.Millisecond || sc.count() != 1 {
		t.Fatalf("err %v after %d attempts", err, sc.count())
	}
	clock.Advance(600 * time.Millisecond) // 0.9 s left: within MaxWait, so the call waits it out
	if err := call(); err != nil || sc.count() != 2 {
		t.Fatalf("err %v, %d attempts", err, sc.count())
	}
	if s := clock.Sleeps(); len(s) != 1 || s[0] != 900*time.Millisecond {
		t.Errorf("waited %v, want [900ms]", s)
	}
}

// Test429PausesEveryCaller: two executors (two replicas) sharing one
// PauseStore both hold off after one 429 with Retry-After.
func Test429PausesEveryCaller(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	store := resilience.NewLocalPauseStore()
	sc := &script{steps: []step{{status: 429, header: hdr("Retry-After", "30")}, {status: 200}}}
	mk := func() *resilience.Executor {
		return mustNew(t, resilience.Settings{Name: "crm", Clock: clock, Retry: resilience.RetrySettings{MaxAttempts: 1}, Pace: &resilience.PaceSettings{Store: store}})
	}
	a, b := mk(), mk()
	resp, err := a.Do(context.Background(), &resilience.Call{Send: sc.send})
	closeResp(resp)
	if err != nil || resp.StatusCode != 429 {
		t.Fatal(resp, err)
	}
	clock.Advance(10 * time.Second)
	_, err = b.Do(context.Background(), &resilience.Call{Send: sc.send})
	if d, ok := resilience.RetryAfter(err, clock.Now()); !errors.Is(err, resilience.ErrPaced) || !ok || d != 20*time.Second {
		t.Fatalf("the other replica was not paused: %v", err)
	}
	clock.Advance(20 * time.Second)
	resp, err = b.Do(context.Background(), &resilience.Call{Send: sc.send})
	closeResp(resp)
	if err != nil || sc.count() != 2 {
		t.Fatalf("after the pause: %v, %d attempts", err, sc.count())
	}
}

func TestPacingSpreadsTheRemainingQuota(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 200, header: hdr("X-RateLimit-Remaining", "4", "X-RateLimit-Reset", "2")}}}
	e := mustNew(t, resilience.Settings{Clock: clock, Pace: &resilience.PaceSettings{MaxWait: 2 * time.Second}})
	for range 3 {
		resp, err := e.Do(context.Background(), &resilience.Call{Send: sc.send})
		closeResp(resp)
		if err != nil {
			t.Fatal(err)
		}
	}
	// 4 left for 2 s: one every 500 ms. The second call goes at once (the
	// slot is free), the third waits for the next one.
	if s := clock.Sleeps(); len(s) != 1 || s[0] != 500*time.Millisecond {
		t.Errorf("waits %v, want [500ms]", s)
	}
}

func TestParseQuota(t *testing.T) {
	t.Parallel()
	now := epoch
	cases := []struct {
		h    http.Header
		want resilience.Quota
		ok   bool
	}{
		{hdr("RateLimit", `"x";r=0;t=2`), resilience.Quota{0, 2 * time.Second}, true},
		{hdr("RateLimit", `"a";r=50;t=60, "b";r=3;t=1`), resilience.Quota{3, time.Second}, true},
		{hdr("RateLimit", `"d";r=7`, "RateLimit-Policy", `"d";q=100;w=3600`), resilience.Quota{7, time.Hour}, true},
		{hdr("RateLimit", `garbage;;`, "X-RateLimit-Remaining", "9", "X-RateLimit-Reset", "30"), resilience.Quota{9, 30 * time.Second}, true},
		{hdr("X-RateLimit-Remaining", "0", "X-RateLimit-Reset", "1767323105"), resilience.Quota{0, 60 * time.Second}, true}, // Unix seconds
		{hdr("X-RateLimit-Remaining", "5", "X-RateLimit-Reset", "1.5"), resilience.Quota{5, 1500 * time.Millisecond}, true},
		{hdr("RateLimit-Remaining", "2", "RateLimit-Reset", "4"), resilience.Quota{2, 4 * time.Second}, true},
		{hdr("X-RateLimit-Remaining", "-1"), resilience.Quota{}, false},
		{http.Header{}, resilience.Quota{}, false},
	}
	for i, tc := range cases {
		got, ok := resilience.ParseQuota(tc.h, now)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%d: ParseQuota(%v) = %+v, %v; want %+v, %v", i, tc.h, got, ok, tc.want, tc.ok)
		}
	}
}

func TestClientSideLimitWaitsForASlot(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 200}}}
	pol, err := ratelimit.ParsePolicy("2/s")
	if err != nil {
		t.Fatal(err)
	}
	pol.Name = "partner-quota"
	rec := &recorder{}
	e := mustNew(t, resilience.Settings{Name: "partner", Clock: clock, Observer: rec,
		Limit: &resilience.LimitSettings{Policies: []ratelimit.Policy{pol}, MaxWait: 600 * time.Millisecond}})
	do := func() error {
		resp, err := e.Do(context.Background(), &resilience.Call{Send: sc.send})
		closeResp(resp)
		return err
	}
	for range 3 { // the burst of 2 at once, then one slot 500 ms later
		if err := do(); err != nil {
			t.Fatal(err)
		}
	}
	if s := clock.Sleeps(); len(s) != 1 || s[0] != 500*time.Millisecond {
		t.Errorf("waits %v, want [500ms]", s)
	}
	e2 := mustNew(t, resilience.Settings{Name: "partner", Clock: clock, Limit: &resilience.LimitSettings{Policies: []ratelimit.Policy{pol}, MaxWait: -1}})
	_ = do
	for range 2 {
		resp, _ := e2.Do(context.Background(), &resilience.Call{Send: sc.send})
		closeResp(resp)
	}
	_, err = e2.Do(context.Background(), &resilience.Call{Send: sc.send})
	var pe *resilience.PacedError
	if !errors.As(err, &pe) || pe.Reason != resilience.PacedLimit || len(pe.Policies) != 1 || pe.Policies[0] != "partner-quota" {
		t.Fatalf("err = %v", err)
	}
}
