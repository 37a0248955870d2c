package load

import (
	"net/http"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// The onset analysis replays the send times through the declared limit.
func TestOnsetAgainstDeclaredLimit(t *testing.T) {
	t.Parallel()
	p, err := ratelimit.ParsePolicy("10/s burst 5")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	mk := func(codes ...uint16) []vegeta.Result {
		var rs []vegeta.Result
		for i, c := range codes {
			rs = append(rs, vegeta.Result{Code: c, Timestamp: t0.Add(time.Duration(i) * time.Millisecond), Latency: time.Millisecond})
		}
		return rs
	}
	flat := func(time.Duration) float64 { return 1000 }
	o := Options{URL: "http://x", Method: "GET", Rate: Rate{1000, time.Second}, Duration: time.Second, Limit: &p}
	for _, tc := range []struct {
		name      string
		codes     []uint16
		at        time.Duration
		admitted  int
		agreement float64
	}{
		{"honest", []uint16{200, 200, 200, 200, 200, 429, 429, 429, 429, 429}, 5 * time.Millisecond, 5, 1},
		{"never throttles", []uint16{200, 200, 200, 200, 200, 200, 200, 200, 200, 200}, -1, 10, 0.5},
		{"throttles early", []uint16{200, 200, 429, 429, 429, 429, 429, 429, 429, 429}, 2 * time.Millisecond, 2, 0.7},
	} {
		rep := build(o, mk(tc.codes...), t0, flat)
		on := rep.Onset
		if on == nil || on.At != tc.at || on.AdmittedBefore != tc.admitted || on.Predicted == nil || *on.Predicted != 5*time.Millisecond ||
			on.Agreement == nil || *on.Agreement != tc.agreement {
			t.Errorf("%s: onset %+v (predicted %v, agreement %v)", tc.name, on, deref(on.Predicted), deref(on.Agreement))
		}
		if rep.Status[200]+rep.Status[429] != 10 || rep.Bins[0].Sent != 10 {
			t.Errorf("%s: status %v bins %+v", tc.name, rep.Status, rep.Bins)
		}
	}
	// Without a limit, no prediction; without 429s, no onset.
	o.Limit = nil
	if rep := build(o, mk(200, 200), t0, flat); rep.Onset != nil {
		t.Errorf("onset without 429s or limit: %+v", rep.Onset)
	}
	if rep := build(o, mk(200, http.StatusTooManyRequests), t0, flat); rep.Onset == nil || rep.Onset.At != time.Millisecond || rep.Onset.Predicted != nil {
		t.Errorf("onset without a limit: %+v", rep.Onset)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	ds := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.9, 9}, {0.99, 10}, {1, 10}, {0, 1}} {
		if got := percentile(ds, tc.q); got != tc.want {
			t.Errorf("q %v = %v, want %v", tc.q, got, tc.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}
