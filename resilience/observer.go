package resilience

import (
	"context"
	"net/http"
	"time"
)

// Observer receives what an executor does, for traces, metrics and logs,
// so the package itself depends on no telemetry library:
// resilience/tracing makes one OpenTelemetry span per attempt and
// resilience/metrics exports Prometheus metrics. Methods are called
// synchronously on the call's goroutine and must be fast and safe for
// concurrent use.
type Observer interface {
	// Attempt is called just before an attempt is sent. It returns the
	// context the attempt runs in (a span's, say) and a function the
	// executor calls exactly once with the attempt's outcome, as soon as
	// the response headers (or the error) are in.
	Attempt(ctx context.Context, a AttemptInfo) (context.Context, func(Outcome))
	// Event reports a decision of a policy (a retry, a rejection, a
	// breaker transition, a pause...).
	Event(ctx context.Context, e Event)
}

// AttemptInfo describes an attempt about to be sent.
type AttemptInfo struct {
	// Upstream names the upstream.
	Upstream string
	// Method is the request method.
	Method string
	// Target is Call.Target.
	Target string
	// Attempt is the resend count: 0 for the first attempt.
	Attempt int
	// Request is Call.Request (nil outside Transport).
	Request *http.Request
}

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds.
const (
	// EventRetry: an attempt is retried after Delay, for Reason.
	EventRetry EventKind = iota + 1
	// EventBudgetExhausted: a retry was due, the budget refused it.
	EventBudgetExhausted
	// EventThrottled: adaptive throttling rejected an attempt locally.
	EventThrottled
	// EventBreakerTransition: the breaker went From -> To.
	EventBreakerTransition
	// EventBreakerRejected: an open breaker rejected an attempt.
	EventBreakerRejected
	// EventBulkheadRejected: the bulkhead had no slot in time.
	EventBulkheadRejected
	// EventPause: every caller to the upstream pauses for Delay (Reason
	// "retry_after" or "ratelimit_header").
	EventPause
	// EventWait: an attempt waited Delay for a slot (Reason is
	// PacedLimit, PacedPause or PacedPacing) and then went on.
	EventWait
	// EventPaced: an attempt was rejected because the wait (Delay) would
	// exceed its bound; Reason as for EventWait.
	EventPaced
	// EventRetryAfterTooLong: the upstream's Retry-After (Delay) was
	// above the cap; the call failed fast.
	EventRetryAfterTooLong
	// EventStale: a stale response of age Delay was served because the
	// upstream failed (Reason: the failure).
	EventStale
	// EventSecondary: the call fell back to the secondary upstream.
	EventSecondary
	// EventQueued: the call's write was accepted for later delivery
	// through a queue instead of failing (the gateway's fallback.queue;
	// Reason "not_sent" or "keyed").
	EventQueued
)

var eventNames = [...]string{"", "retry", "budget_exhausted", "throttled", "breaker_transition", "breaker_rejected",
	"bulkhead_rejected", "pause", "wait", "paced", "retry_after_too_long", "stale", "secondary", "queued"}

// String returns the kind's snake_case name ("retry", "pause", ...).
func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Event is one policy decision.
type Event struct {
	// Kind says what happened.
	Kind EventKind
	// Upstream names the upstream.
	Upstream string
	// Reason qualifies Kind: a retry reason ("status_503", "connect",
	// "timeout", "transport", "should_retry"), a wait or pace reason, a
	// pause's origin.
	Reason string
	// Delay is the retry delay, the wait, the pause, or the stale age.
	Delay time.Duration
	// Attempt is the attempt the event concerns (resend count).
	Attempt int
	// From and To are the breaker states of EventBreakerTransition.
	From, To BreakerState
}

// Observers returns an Observer that forwards to each of obs in order
// (nil entries are skipped).
func Observers(obs ...Observer) Observer {
	var list multiObserver
	for _, o := range obs {
		if o != nil {
			list = append(list, o)
		}
	}
	return list
}

type multiObserver []Observer

func (m multiObserver) Attempt(ctx context.Context, a AttemptInfo) (context.Context, func(Outcome)) {
	ends := make([]func(Outcome), len(m))
	for i, o := range m {
		ctx, ends[i] = o.Attempt(ctx, a)
	}
	return ctx, func(out Outcome) {
		for i := len(ends) - 1; i >= 0; i-- {
			ends[i](out)
		}
	}
}

func (m multiObserver) Event(ctx context.Context, e Event) {
	for _, o := range m {
		o.Event(ctx, e)
	}
}

// observe is the innermost handler's wrapper when an Observer is set.
func observe(env Env, next Handler) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		actx, end := env.Observer.Attempt(ctx, AttemptInfo{
			Upstream: env.Upstream, Method: c.method(), Target: c.Target, Attempt: c.attempt, Request: c.Request,
		})
		resp, err := next(actx, c)
		end(outcomeOf(resp, err))
		return resp, err
	}
}

func emit(ctx context.Context, env Env, e Event) {
	if env.Observer != nil {
		e.Upstream = env.Upstream
		env.Observer.Event(ctx, e)
	}
}
