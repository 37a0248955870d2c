// Package metrics is a resilience.Observer that exports Prometheus
// metrics, registered on the Registerer the caller gives (the package
// forces no registry). All names start with levee_resilience_; times are
// in seconds; counters end in _total. Labels: upstream everywhere, plus
// the ones listed.
//
//	levee_resilience_attempts_total{upstream,outcome}       attempts sent; outcome 2xx..5xx or error
//	levee_resilience_attempt_duration_seconds{upstream}     time to response headers (or error)
//	levee_resilience_retries_total{upstream,reason}         retries by reason (status_503, connect, timeout, ...)
//	levee_resilience_budget_exhausted_total{upstream}       retries refused by the retry budget
//	levee_resilience_retry_after_exceeded_total{upstream}   calls failed fast on a Retry-After above the cap
//	levee_resilience_throttled_total{upstream}              attempts rejected by adaptive throttling
//	levee_resilience_breaker_state{upstream}                0 closed, 1 half-open, 2 open
//	levee_resilience_breaker_transitions_total{upstream,from,to}
//	levee_resilience_breaker_rejections_total{upstream}     attempts rejected by an open breaker
//	levee_resilience_bulkhead_rejections_total{upstream}
//	levee_resilience_pauses_total{upstream,reason}          pauses started (retry_after, ratelimit_header)
//	levee_resilience_pause_seconds_total{upstream,reason}   their announced length
//	levee_resilience_wait_seconds_total{upstream,reason}    time attempts waited for a slot (limit, pause, pacing)
//	levee_resilience_paced_rejections_total{upstream,reason} attempts refused because the wait exceeded its bound
//	levee_resilience_stale_served_total{upstream}           stale-if-error responses served
//	levee_resilience_secondary_total{upstream}              calls that fell back to the secondary
//	levee_resilience_fallbacks_total{upstream,kind}         fallbacks by kind: stale, secondary, queue
package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leveehq/levee/resilience"
)

// Observer holds the collectors. Safe for concurrent use.
type Observer struct {
	attempts          *prometheus.CounterVec
	duration          *prometheus.HistogramVec
	retries           *prometheus.CounterVec
	budget            *prometheus.CounterVec
	retryAfter        *prometheus.CounterVec
	throttled         *prometheus.CounterVec
	breakerState      *prometheus.GaugeVec
	breakerTrans      *prometheus.CounterVec
	breakerRejections *prometheus.CounterVec
	bulkhead          *prometheus.CounterVec
	pauses            *prometheus.CounterVec
	pauseSeconds      *prometheus.CounterVec
	waitSeconds       *prometheus.CounterVec
	paced             *prometheus.CounterVec
	stale             *prometheus.CounterVec
	secondary         *prometheus.CounterVec
	fallbacks         *prometheus.CounterVec
}

var _ resilience.Observer = (*Observer)(nil)

// Buckets are the attempt duration histogram's buckets, in seconds.
var Buckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// New returns an Observer whose collectors are registered on reg. It
// fails with the registration error (for example, a second Observer on
// the same registry: share one Observer among executors instead).
func New(reg prometheus.Registerer) (*Observer, error) {
	up := []string{"upstream"}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "levee_resilience_" + name, Help: help}, append(up, labels...))
	}
	o := &Observer{
		attempts: counter("attempts_total", "Attempts sent upstream, by outcome (status class or error).", "outcome"),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "levee_resilience_attempt_duration_seconds",
			Help: "Time from sending an attempt to its response headers or error.", Buckets: Buckets}, up),
		retries:    counter("retries_total", "Retries, by reason.", "reason"),
		budget:     counter("budget_exhausted_total", "Retries refused by the retry budget."),
		retryAfter: counter("retry_after_exceeded_total", "Calls failed fast because Retry-After was above the cap or the deadline."),
		throttled:  counter("throttled_total", "Attempts rejected locally by adaptive throttling."),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "levee_resilience_breaker_state",
			Help: "Circuit breaker state as this process sees it: 0 closed, 1 half-open, 2 open."}, up),
		breakerTrans:      counter("breaker_transitions_total", "Circuit breaker transitions.", "from", "to"),
		breakerRejections: counter("breaker_rejections_total", "Attempts rejected by an open circuit breaker."),
		bulkhead:          counter("bulkhead_rejections_total", "Attempts rejected by a full bulkhead."),
		pauses:            counter("pauses_total", "Pauses of every caller to the upstream, by origin.", "reason"),
		pauseSeconds:      counter("pause_seconds_total", "Announced length of the pauses, by origin.", "reason"),
		waitSeconds:       counter("wait_seconds_total", "Time attempts waited for a slot (client-side limit, pause, pacing).", "reason"),
		paced:             counter("paced_rejections_total", "Attempts refused because the wait for a slot exceeded its bound.", "reason"),
		stale:             counter("stale_served_total", "Stale responses served because the upstream failed."),
		secondary:         counter("secondary_total", "Calls that fell back to the secondary upstream."),
		fallbacks:         counter("fallbacks_total", "Fallbacks taken, by kind: stale (stale-if-error served), secondary (sent to the secondary upstream), queue (the write accepted for later delivery).", "kind"),
	}
	for _, c := range []prometheus.Collector{o.attempts, o.duration, o.retries, o.budget, o.retryAfter, o.throttled, o.breakerState,
		o.breakerTrans, o.breakerRejections, o.bulkhead, o.pauses, o.pauseSeconds, o.waitSeconds, o.paced, o.stale, o.secondary, o.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return o, nil
}

var classes = [...]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

func outcomeLabel(out resilience.Outcome) string {
	if out.Err != nil || out.StatusCode < 100 || out.StatusCode > 599 {
		return "error"
	}
	return classes[out.StatusCode/100]
}

// Attempt implements resilience.Observer.
func (o *Observer) Attempt(ctx context.Context, a resilience.AttemptInfo) (context.Context, func(resilience.Outcome)) {
	start := time.Now()
	return ctx, func(out resilience.Outcome) {
		o.duration.WithLabelValues(a.Upstream).Observe(time.Since(start).Seconds())
		o.attempts.WithLabelValues(a.Upstream, outcomeLabel(out)).Inc()
	}
}

// Event implements resilience.Observer.
func (o *Observer) Event(_ context.Context, e resilience.Event) {
	u := e.Upstream
	switch e.Kind {
	case resilience.EventRetry:
		o.retries.WithLabelValues(u, e.Reason).Inc()
	case resilience.EventBudgetExhausted:
		o.budget.WithLabelValues(u).Inc()
	case resilience.EventRetryAfterTooLong:
		o.retryAfter.WithLabelValues(u).Inc()
	case resilience.EventThrottled:
		o.throttled.WithLabelValues(u).Inc()
	case resilience.EventBreakerTransition:
		o.breakerTrans.WithLabelValues(u, e.From.String(), e.To.String()).Inc()
		o.breakerState.WithLabelValues(u).Set(float64(e.To))
	case resilience.EventBreakerRejected:
		o.breakerRejections.WithLabelValues(u).Inc()
	case resilience.EventBulkheadRejected:
		o.bulkhead.WithLabelValues(u).Inc()
	case resilience.EventPause:
		o.pauses.WithLabelValues(u, e.Reason).Inc()
		o.pauseSeconds.WithLabelValues(u, e.Reason).Add(e.Delay.Seconds())
	case resilience.EventWait:
		o.waitSeconds.WithLabelValues(u, e.Reason).Add(e.Delay.Seconds())
	case resilience.EventPaced:
		o.paced.WithLabelValues(u, e.Reason).Inc()
	case resilience.EventStale:
		o.stale.WithLabelValues(u).Inc()
		o.fallbacks.WithLabelValues(u, "stale").Inc()
	case resilience.EventSecondary:
		o.secondary.WithLabelValues(u).Inc()
		o.fallbacks.WithLabelValues(u, "secondary").Inc()
	case resilience.EventQueued:
		o.fallbacks.WithLabelValues(u, "queue").Inc()
	}
}
