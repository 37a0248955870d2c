package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/dynamodb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the gateway's Prometheus collectors, all prefixed levee_,
// registered on their own registry (no global state).
type Metrics struct {
	Registry *prometheus.Registry

	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	upstream        *prometheus.HistogramVec
	inFlight        prometheus.Gauge
	idempotency     *prometheus.CounterVec
	unknownOutcomes *prometheus.CounterVec
	storeOps        *prometheus.HistogramVec
	storeErrors     *prometheus.CounterVec
	storeThrottled  *prometheus.CounterVec
	configReloads   *prometheus.CounterVec
	upstreamErrors  *prometheus.CounterVec
	configTimestamp prometheus.Gauge
	rlDecisions     *prometheus.CounterVec
	rlStoreErrors   *prometheus.CounterVec
	rlFallbacks     *prometheus.CounterVec
	rlLatency       prometheus.Histogram
	connections     *prometheus.CounterVec
	clientErrors    *prometheus.CounterVec
}

// latency buckets from 0.5 ms to 30 s.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// NewMetrics creates and registers the gateway's collectors.
func NewMetrics(version string) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_http_requests_total",
			Help: "Requests served, by route, method, status code and idempotency outcome (none when the route has no idempotency or the method is not covered).",
		}, []string{"route", "method", "code", "idempotency"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "levee_http_request_duration_seconds", Help: "Time from request to response, by route.", Buckets: latencyBuckets,
		}, []string{"route"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "levee_upstream_request_duration_seconds", Help: "Time spent on the upstream exchange (headers received), by route.", Buckets: latencyBuckets,
		}, []string{"route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levee_http_requests_in_flight", Help: "Requests being served now.",
		}),
		idempotency: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_idempotency_outcomes_total",
			Help: "Idempotency outcomes by route: executed, replayed, conflict, mismatch, released, unknown, held, store_error, fail_open, not_recorded, invalid, canceled, passthrough.",
		}, []string{"route", "outcome"}),
		unknownOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_idempotency_unknown_outcomes_total",
			Help: "Requests that reached the upstream whole and whose answer was lost (timeout, connection lost, response cut): each holds its key until an operator resolves it (levee keys), by route.",
		}, []string{"route"}),
		storeOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "levee_store_operation_duration_seconds", Help: "Idempotency store operation latency by operation.", Buckets: latencyBuckets,
		}, []string{"op"}),
		storeThrottled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_store_throttled_total", Help: "Idempotency store operations the store throttled after the SDK's retries (DynamoDB), by operation and the AWS error code; they also count in levee_store_errors_total.",
		}, []string{"op", "reason"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_store_errors_total", Help: "Idempotency store operations that failed (not counting fencing or not-found answers), by operation.",
		}, []string{"op"}),
		configReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_config_reloads_total", Help: "Config reload attempts by result (success, failure).",
		}, []string{"result"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_upstream_errors_total", Help: "Upstream exchanges that failed without a response, by route and kind (timeout, unavailable).",
		}, []string{"route", "kind"}),
		configTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levee_config_last_reload_success_timestamp_seconds", Help: "When the running config was loaded.",
		}),
	}
	m.rlDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levee_ratelimit_decisions_total", Help: "Rate-limit decisions by policy and result (allowed, denied, shadow_denied, error).",
	}, []string{"policy", "result"})
	m.rlStoreErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levee_ratelimit_store_errors_total", Help: "Rate-limit decisions where the store failed or was skipped after a failure, by policy.",
	}, []string{"policy"})
	m.rlFallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levee_ratelimit_fallbacks_total", Help: "Rate-limit decisions made by the in-process fallback (fail_open) because the store failed, by policy.",
	}, []string{"policy"})
	m.rlLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "levee_ratelimit_decision_duration_seconds", Help: "Time to decide a request's rate limits, store call included (observed once per applied policy).", Buckets: latencyBuckets,
	})
	reg.MustRegister(m.rlDecisions, m.rlStoreErrors, m.rlFallbacks, m.rlLatency)
	m.connections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levee_http_connections_total",
		Help: "Client connections on the proxy listener by server: levee (accepted by levee's HTTP/1.1 front server) and net/http (served by Go's server: every connection with server.engine net/http; with the levee engine, those the front server handed off because a request was outside its HTTP/1.1 subset).",
	}, []string{"server"})
	for _, s := range []string{EngineLevee, EngineNetHTTP} {
		m.connections.WithLabelValues(s)
	}
	reg.MustRegister(m.connections)
	m.clientErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "levee_client_errors_total",
		Help: "Requests that failed on the client's side, by route (_edge: refused by the HTTP layer before routing) and kind: body_timeout (the body stalled: 408), gone (the client left before an answer: none sent), or the problem type the HTTP layer answered with.",
	}, []string{"route", "kind"})
	reg.MustRegister(m.clientErrors)
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "levee_build_info", Help: "Build information."}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(m.requests, m.duration, m.upstream, m.inFlight, m.idempotency, m.unknownOutcomes, m.storeOps, m.storeErrors, m.storeThrottled,
		m.configReloads, m.upstreamErrors, m.configTimestamp, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"success", "failure"} {
		m.configReloads.WithLabelValues(r)
	}
	return m
}

// instrumentedStore records latency and errors of every store call.
type instrumentedStore struct {
	idempotency.Store
	m *Metrics
}

func (s instrumentedStore) observe(op string, start time.Time, err error) {
	s.m.storeOps.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, idempotency.ErrFenced) && !errors.Is(err, idempotency.ErrNotFound) {
		s.m.storeErrors.WithLabelValues(op).Inc()
		var te *dynamodb.ThrottledError
		if errors.As(err, &te) {
			s.m.storeThrottled.WithLabelValues(op, te.Reason).Inc()
		}
	}
}

func (s instrumentedStore) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	start := time.Now()
	res, err := s.Store.Claim(ctx, req)
	s.observe("claim", start, err)
	return res, err
}

func (s instrumentedStore) Renew(ctx context.Context, key string, token uint64, now, leaseUntil, expiresAt time.Time) error {
	start := time.Now()
	err := s.Store.Renew(ctx, key, token, now, leaseUntil, expiresAt)
	s.observe("renew", start, err)
	return err
}

func (s instrumentedStore) Complete(ctx context.Context, key string, token uint64, resp idempotency.Response, now, expiresAt time.Time) error {
	start := time.Now()
	err := s.Store.Complete(ctx, key, token, resp, now, expiresAt)
	s.observe("complete", start, err)
	return err
}

func (s instrumentedStore) Release(ctx context.Context, key string, token uint64) error {
	start := time.Now()
	err := s.Store.Release(ctx, key, token)
	s.observe("release", start, err)
	return err
}

func (s instrumentedStore) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	start := time.Now()
	rec, err := s.Store.Lookup(ctx, key, now)
	s.observe("lookup", start, err)
	return rec, err
}
