package metrics_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/resilience/metrics"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	obs, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil {
		t.Error("a second Observer registered on the same registry")
	}
	e, err := resilience.New(resilience.Settings{Name: "crm", Observer: obs,
		Retry:   resilience.RetrySettings{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond},
		Breaker: &resilience.BreakerSettings{ConsecutiveFailures: 3}})
	if err != nil {
		t.Fatal(err)
	}
	send := func(context.Context, *resilience.Call) (*http.Response, error) {
		return &http.Response{StatusCode: 503, Body: http.NoBody, Header: http.Header{}}, nil
	}
	for range 2 {
		resp, err := e.Do(context.Background(), &resilience.Call{Replayable: true, Send: send})
		if err == nil {
			resp.Body.Close()
		}
	}
	want := `
# HELP levee_resilience_attempts_total Attempts sent upstream, by outcome (status class or error).
# TYPE levee_resilience_attempts_total counter
levee_resilience_attempts_total{outcome="5xx",upstream="crm"} 3
# HELP levee_resilience_breaker_rejections_total Attempts rejected by an open circuit breaker.
# TYPE levee_resilience_breaker_rejections_total counter
levee_resilience_breaker_rejections_total{upstream="crm"} 1
# HELP levee_resilience_breaker_state Circuit breaker state as this process sees it: 0 closed, 1 half-open, 2 open.
# TYPE levee_resilience_breaker_state gauge
levee_resilience_breaker_state{upstream="crm"} 2
# HELP levee_resilience_breaker_transitions_total Circuit breaker transitions.
# TYPE levee_resilience_breaker_transitions_total counter
levee_resilience_breaker_transitions_total{from="closed",to="open",upstream="crm"} 1
# HELP levee_resilience_retries_total Retries, by reason.
# TYPE levee_resilience_retries_total counter
levee_resilience_retries_total{reason="status_503",upstream="crm"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "levee_resilience_attempts_total", "levee_resilience_breaker_rejections_total",
		"levee_resilience_breaker_state", "levee_resilience_breaker_transitions_total", "levee_resilience_retries_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "levee_resilience_attempt_duration_seconds"); n != 1 {
		t.Errorf("%d duration series", n)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) != 0 {
		t.Errorf("promlint: %v %+v", err, problems)
	}
}
