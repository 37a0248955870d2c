package resilience

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Sentinels matched (errors.Is) by the typed errors below.
var (
	// ErrRejected is matched by every error of a call that a policy
	// refused before any I/O toward the upstream: an open breaker, a full
	// bulkhead, adaptive throttling, a pause or quota that outlasts the
	// wait bound. Retrying such an error at once is pointless.
	ErrRejected = errors.New("resilience: rejected before any I/O")
	// ErrBreakerOpen is matched by *OpenError.
	ErrBreakerOpen = errors.New("resilience: circuit breaker is open")
	// ErrBulkheadFull is matched by *BulkheadError.
	ErrBulkheadFull = errors.New("resilience: bulkhead is full")
	// ErrThrottled is matched by *ThrottledError.
	ErrThrottled = errors.New("resilience: throttled by adaptive throttling")
	// ErrPaced is matched by *PacedError.
	ErrPaced = errors.New("resilience: no slot toward the upstream within the wait bound")
	// ErrBudgetExhausted is matched by *BudgetError.
	ErrBudgetExhausted = errors.New("resilience: retry budget exhausted")
	// ErrRetryAfterTooLong is matched by *RetryAfterError.
	ErrRetryAfterTooLong = errors.New("resilience: Retry-After above the cap")
	// ErrExceeded is matched by *ExceededError.
	ErrExceeded = errors.New("resilience: attempts exceeded")
	// ErrAttemptTimeout is matched by *AttemptTimeoutError.
	ErrAttemptTimeout = errors.New("resilience: attempt timed out")
)

// Outcome is what one attempt produced, kept after its response body was
// closed: the status and header of a response, or the attempt's error.
type Outcome struct {
	// StatusCode is the response's status; 0 when Err is set.
	StatusCode int
	// Header is the response's header; nil when Err is set.
	Header http.Header
	// Err is the attempt's error; nil when there was a response.
	Err error
}

func outcomeOf(resp *http.Response, err error) Outcome {
	if err != nil || resp == nil {
		return Outcome{Err: err}
	}
	return Outcome{StatusCode: resp.StatusCode, Header: resp.Header}
}

// String returns the error text, or "status N".
func (o Outcome) String() string {
	if o.Err != nil {
		return o.Err.Error()
	}
	return "status " + strconv.Itoa(o.StatusCode)
}

// OpenError is returned, without any I/O, while a circuit breaker is open
// (or half-open with every probe slot taken). Every rejection during one
// open period returns the same *OpenError, so a rejection allocates
// nothing; it is immutable.
type OpenError struct {
	// Upstream names the breaker.
	Upstream string
	// Until is when the breaker lets a probe through (the end of the
	// cooldown). For a half-open breaker whose probes are all out, Until
	// is the time of the rejection's state change: retry soon.
	Until time.Time
}

// Error reads like `resilience: circuit breaker "crm" is open until 12:00:05.1`.
func (e *OpenError) Error() string {
	return fmt.Sprintf("resilience: circuit breaker %q is open until %s", e.Upstream, e.Until.Format("15:04:05.000"))
}

// Remaining returns the cooldown left at now (never negative).
func (e *OpenError) Remaining(now time.Time) time.Duration { return max(e.Until.Sub(now), 0) }

// Is matches ErrBreakerOpen and ErrRejected.
func (e *OpenError) Is(target error) bool { return target == ErrBreakerOpen || target == ErrRejected }

// BulkheadError is returned when a bulkhead had no free slot within its
// wait bound.
type BulkheadError struct {
	// Upstream names the bulkhead.
	Upstream string
	// MaxInFlight is the bulkhead's size.
	MaxInFlight int
	// Waited is how long the call waited for a slot.
	Waited time.Duration
}

// Error reads like `resilience: bulkhead "bank" full (64 in flight) after waiting 100ms`.
func (e *BulkheadError) Error() string {
	return fmt.Sprintf("resilience: bulkhead %q full (%d in flight) after waiting %v", e.Upstream, e.MaxInFlight, e.Waited)
}

// Is matches ErrBulkheadFull and ErrRejected.
func (e *BulkheadError) Is(target error) bool {
	return target == ErrBulkheadFull || target == ErrRejected
}

// ThrottledError is returned when client-side adaptive throttling
// rejected an attempt locally.
type ThrottledError struct {
	// Upstream names the throttle.
	Upstream string
	// Probability is the rejection probability at the time.
	Probability float64
}

// Error reads like `resilience: upstream "crm" throttled locally (p=0.42)`.
func (e *ThrottledError) Error() string {
	return fmt.Sprintf("resilience: upstream %q throttled locally (p=%.2f)", e.Upstream, e.Probability)
}

// Is matches ErrThrottled and ErrRejected.
func (e *ThrottledError) Is(target error) bool {
	return target == ErrThrottled || target == ErrRejected
}

// Reasons of a PacedError.
const (
	// PacedLimit: the client-side rate limit (Limit) had no slot in time.
	PacedLimit = "limit"
	// PacedPause: every caller is paused (a 429 with Retry-After, or the
	// upstream announced zero remaining quota) beyond the wait bound.
	PacedPause = "pause"
	// PacedPacing: pacing to the upstream's announced quota would wait
	// beyond the bound.
	PacedPacing = "pacing"
)

// PacedError is returned when the wait for a slot toward the upstream
// (client-side limit, shared pause, or pacing) would exceed its bound.
// Nothing was sent.
type PacedError struct {
	// Upstream names the upstream.
	Upstream string
	// Reason is PacedLimit, PacedPause or PacedPacing.
	Reason string
	// Wait is how long until a slot would be free.
	Wait time.Duration
	// MaxWait is the bound that Wait exceeds.
	MaxWait time.Duration
	// Policies names the violated ratelimit policies (PacedLimit only).
	Policies []string
}

// Error reads like `resilience: upstream "crm" paused (pause) for 30s, above the wait bound of 1s`.
func (e *PacedError) Error() string {
	return fmt.Sprintf("resilience: upstream %q paced (%s) for %v, above the wait bound of %v", e.Upstream, e.Reason, e.Wait, e.MaxWait)
}

// Is matches ErrPaced and ErrRejected.
func (e *PacedError) Is(target error) bool { return target == ErrPaced || target == ErrRejected }

// BudgetError is returned when a retry was due but the retry budget was
// exhausted. Last is the attempt that would have been retried (its body
// closed).
type BudgetError struct {
	// Upstream names the budget.
	Upstream string
	// Attempts is the number of attempts made.
	Attempts int
	// Last is the last attempt's outcome.
	Last Outcome
}

// Error reads like `resilience: retry budget of "crm" exhausted after 1 attempt (last: status 503)`.
func (e *BudgetError) Error() string {
	return fmt.Sprintf("resilience: retry budget of %q exhausted after %d attempt(s) (last: %s)", e.Upstream, e.Attempts, e.Last)
}

// Is matches ErrBudgetExhausted.
func (e *BudgetError) Is(target error) bool { return target == ErrBudgetExhausted }

// Unwrap returns the last attempt's error, if any.
func (e *BudgetError) Unwrap() error { return e.Last.Err }

// RetryAfterError is returned at once when the upstream asked for a
// Retry-After above the cap (RetrySettings.MaxRetryAfter) or beyond the
// call's deadline: the call fails fast instead of sleeping.
type RetryAfterError struct {
	// Upstream names the upstream.
	Upstream string
	// RetryAfter is the server's value.
	RetryAfter time.Duration
	// Max is the cap it exceeds (the time left before the deadline, when
	// that is smaller).
	Max time.Duration
	// Attempts is the number of attempts made.
	Attempts int
	// Last is the last attempt's outcome (its body closed).
	Last Outcome
}

// Error reads like `resilience: upstream "crm" asked to retry after 1h0m0s, above the cap of 30s`.
func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("resilience: upstream %q asked to retry after %v, above the cap of %v", e.Upstream, e.RetryAfter, e.Max)
}

// Is matches ErrRetryAfterTooLong.
func (e *RetryAfterError) Is(target error) bool { return target == ErrRetryAfterTooLong }

// ExceededError is returned when the last of several attempts failed with
// an error (attempts that got a response return that response instead).
type ExceededError struct {
	// Upstream names the upstream.
	Upstream string
	// Attempts is the number of attempts made.
	Attempts int
	// Last is the last attempt's outcome; Last.Err is set.
	Last Outcome
}

// Error reads like `resilience: "crm": 3 attempts failed; last: dial tcp ...`.
func (e *ExceededError) Error() string {
	return fmt.Sprintf("resilience: %q: %d attempts failed; last: %s", e.Upstream, e.Attempts, e.Last)
}

// Is matches ErrExceeded.
func (e *ExceededError) Is(target error) bool { return target == ErrExceeded }

// Unwrap returns the last attempt's error.
func (e *ExceededError) Unwrap() error { return e.Last.Err }

// RefusedRetryError is the last outcome of a call whose retry a local
// policy refused after at least one attempt was sent (see
// ExceededError). It matches what the refusal matches (ErrBreakerOpen,
// ErrBulkheadFull, ...) except ErrRejected: the call was not "rejected
// before any I/O", since an earlier attempt may have reached the
// upstream. It does not unwrap, so that errors.Is(err, ErrRejected) and
// the refusal's Retry-After stay out of reach.
type RefusedRetryError struct {
	// Refusal is the policy's error (it matches ErrRejected).
	Refusal error
}

func (e *RefusedRetryError) Error() string {
	return "retry refused after an attempt was sent: " + e.Refusal.Error()
}

// Is matches the refusal's errors but ErrRejected.
func (e *RefusedRetryError) Is(target error) bool {
	return target != ErrRejected && errors.Is(e.Refusal, target)
}

// AttemptTimeoutError is returned by an attempt that outlived the
// per-attempt timeout while the call's own context was still live.
type AttemptTimeoutError struct {
	// Timeout is the per-attempt timeout.
	Timeout time.Duration
	// Err is the error the attempt returned.
	Err error
}

// Error reads like `resilience: attempt timed out after 2s: ...`.
func (e *AttemptTimeoutError) Error() string {
	return fmt.Sprintf("resilience: attempt timed out after %v: %v", e.Timeout, e.Err)
}

// Is matches ErrAttemptTimeout.
func (e *AttemptTimeoutError) Is(target error) bool { return target == ErrAttemptTimeout }

// Unwrap returns the attempt's error.
func (e *AttemptTimeoutError) Unwrap() error { return e.Err }

// RetryAfter returns how long a client should wait before calling again
// after err, when the error knows: an open breaker's remaining cooldown, a
// paced or paused upstream's wait, the server's own Retry-After. It
// reports false for other errors (including nil).
func RetryAfter(err error, now time.Time) (time.Duration, bool) {
	var (
		oe *OpenError
		pe *PacedError
		re *RetryAfterError
	)
	switch {
	case errors.As(err, &oe):
		return oe.Remaining(now), true
	case errors.As(err, &pe):
		return pe.Wait, true
	case errors.As(err, &re):
		return re.RetryAfter, true
	}
	return 0, false
}
