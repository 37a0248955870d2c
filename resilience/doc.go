// Package resilience makes calls to flaky third parties without making
// things worse: per-attempt and overall timeouts, retries with capped
// exponential backoff and full jitter that honour Retry-After (and fail
// fast above a cap), idempotency keys carried byte-identical across
// attempts, a retry budget, adaptive throttling, a circuit breaker
// (optionally shared by replicas through Redis), a bulkhead, a
// client-side rate limit on a third party's quota (reusing ratelimit),
// pauses on 429 and pacing to the upstream's announced RateLimit fields,
// and fallbacks (stale-if-error, a secondary upstream).
//
// # An executor around an attempt function
//
// The core is Executor.Do(ctx, *Call): a Call describes one logical call
// (method, idempotency key, whether its body can be replayed) and its
// Send function performs one attempt, however it likes — levee's own
// HTTP/1.1 client, which never goes through an http.RoundTripper, or any
// other. Transport is a thin http.RoundTripper adapter on top: it makes
// bodies replayable (GetBody, or buffered within MaxBufferedBody), sets
// the idempotency header on a copy of the request, and sends each
// attempt through its Base.
//
// # The chain
//
// A chain is a list of Policies, each wrapping the rest (one interface:
// Wrap(env, next) Handler), outermost first. New builds the standard
// chain from Settings in this order:
//
//	Stale → Secondary → Retry (AutoKey, Budget) → Throttle → Breaker →
//	Pace → Limit → Bulkhead → AttemptTimeout → (Observer) → Send
//
// with the overall Timeout over all of it. Policies before Retry run once
// per call and see its final outcome; those after it run for every
// attempt, so a retry is admitted by the throttle, the breaker, the
// pause, the quota and the bulkhead like a first attempt. NewExecutor
// builds any other order, and custom policies plug in with PolicyFunc.
//
// # Errors
//
// A call ends with the last response (the caller closes its body), or
// an error: the caller's context error (wrapped) as soon as ctx ends,
// even during a backoff; a typed error when a policy decided —
// *OpenError, *BulkheadError, *ThrottledError and *PacedError (all
// matching ErrRejected: nothing was sent), *BudgetError,
// *RetryAfterError, *ExceededError, *AttemptTimeoutError — each matching
// its sentinel with errors.Is and carrying what a caller needs (the
// remaining cooldown, the server's Retry-After, the last outcome);
// RetryAfter(err, now) extracts the wait to advertise. Otherwise the
// attempt's own error.
//
// # Time, randomness, telemetry
//
// Every policy takes time from Settings.Clock and every wait selects on
// the context, so tests inject a clock and no goroutine outlives a
// call. The jitter's randomness is RetrySettings.Rand. Telemetry goes
// through the Observer interface: resilience/tracing makes one
// OpenTelemetry span per attempt (http.request.resend_count),
// resilience/metrics exports Prometheus metrics; the package itself
// depends on neither. docs/resilience.md has the details.
package resilience
