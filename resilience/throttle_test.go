package resilience_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

// TestThrottleProbability checks max(0, (requests − K·accepts)/(requests + 1))
// on an injected clock.
func TestThrottleProbability(t *testing.T) {
	t.Parallel()
	cases := []struct {
		requests, accepts int
		k                 float64
		want              float64
	}{
		{100, 100, 2, 0},
		{100, 50, 2, 0},
		{100, 40, 2, 20.0 / 101},
		{100, 0, 2, 100.0 / 101},
		{10, 0, 1.5, 10.0 / 11},
		{100, 50, 1.5, 25.0 / 101},
	}
	for _, tc := range cases {
		th, err := resilience.NewThrottle(resilience.ThrottleSettings{K: tc.k, Window: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		now := epoch
		for i := range tc.requests {
			if ok, _ := th.Allow(now, 0.9999); !ok {
				t.Fatalf("rejected while building up (request %d)", i)
			}
			o := resilience.Outcome{StatusCode: 503}
			if i < tc.accepts {
				o.StatusCode = 200
			}
			th.Record(now, o)
		}
		if got := th.Probability(now); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("%d requests, %d accepts, K=%v: p = %v, want %v", tc.requests, tc.accepts, tc.k, got, tc.want)
		}
		if got := th.Probability(now.Add(2 * time.Minute)); got != 0 {
			t.Errorf("p = %v after the window, want 0", got)
		}
	}
}

func TestThrottleRejectsLocally(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	sc := &script{steps: []step{{status: 503}}}
	e := mustNew(t, resilience.Settings{Name: "crm", Clock: clock, Retry: resilience.RetrySettings{MaxAttempts: 1, Rand: func(int64) int64 { return 0 }},
		Throttle: &resilience.ThrottleSettings{}})
	var throttled int
	for range 100 {
		resp, err := e.Do(context.Background(), &resilience.Call{Send: sc.send})
		closeResp(resp)
		var te *resilience.ThrottledError
		if errors.As(err, &te) {
			throttled++
			if !errors.Is(err, resilience.ErrRejected) || te.Probability <= 0 {
				t.Fatalf("err = %#v", te)
			}
		}
	}
	if throttled == 0 || sc.count()+throttled != 100 {
		t.Errorf("%d throttled, %d sent", throttled, sc.count())
	}
}
