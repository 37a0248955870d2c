package queue

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Sentinel errors.
var (
	// ErrNotFound: no such dead message.
	ErrNotFound = errors.New("queue: not found")
	// ErrLeaseLost: the message is no longer held under the caller's lease
	// token (the lease lapsed and another worker claimed it, or it was
	// settled already).
	ErrLeaseLost = errors.New("queue: lease lost")
	// ErrReplayRunning: a replay of this queue is already running in this
	// process.
	ErrReplayRunning = errors.New("queue: a replay of this queue is already running")
	// ErrTargetGone, returned (or wrapped) by a handler, dead-letters the
	// message at once and disables its target. An *HTTPError with status
	// 410 matches it.
	ErrTargetGone = errors.New("queue: target gone")
	// ErrPermanent matches errors marked with Permanent: the message is
	// dead-lettered at once, without further attempts.
	ErrPermanent = errors.New("queue: permanent failure")
)

// HTTPError is what a handler delivering over HTTP returns for a response
// it counts as a failure. The worker records Status and the first
// MaxBodyBytes of Body in the attempt history, waits RetryAfter (capped by
// WorkerConfig.MaxRetryAfter) instead of the backoff when it is positive,
// and treats 410 as ErrTargetGone.
type HTTPError struct {
	Status     int
	Body       []byte
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	return "queue: target answered " + strconv.Itoa(e.Status) + " " + http.StatusText(e.Status)
}

// Is reports whether a 410 answer matches ErrTargetGone.
func (e *HTTPError) Is(target error) bool {
	return target == ErrTargetGone && e.Status == http.StatusGone
}

// RetryAfterError asks for the next attempt after Delay (capped by
// WorkerConfig.MaxRetryAfter) instead of the backoff.
type RetryAfterError struct {
	Delay time.Duration
	Err   error
}

// RetryAfter wraps err so that the next attempt comes after d.
func RetryAfter(d time.Duration, err error) error { return &RetryAfterError{Delay: d, Err: err} }

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("queue: retry after %v: %v", e.Delay, e.Err)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// DeferError says a delivery was not attempted: the handler refused it
// before anything reached the target (a local policy refused: an open
// circuit breaker, a full bulkhead, no quota slot in time, a pause). The
// worker releases the message for another try after Delay (capped by
// WorkerConfig.MaxRetryAfter) without counting an attempt or recording
// one in the history, so an outage refused locally never exhausts
// MaxAttempts nor dead-letters messages that were never sent.
type DeferError struct {
	Delay time.Duration
	Err   error
}

// Defer wraps err, the reason a delivery was not attempted, so that the
// message is tried again after d (at least 0) without counting an attempt.
// Only a handler that knows nothing was sent may return it: a deferral
// does not bring the message closer to the DLQ, so a handler deferring
// every time keeps it queued for ever.
func Defer(d time.Duration, err error) error { return &DeferError{Delay: d, Err: err} }

func (e *DeferError) Error() string {
	return fmt.Sprintf("queue: not attempted, retry after %v: %v", e.Delay, e.Err)
}

func (e *DeferError) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying: the message goes to the DLQ
// with ReasonPermanent. errors.Is(Permanent(err), ErrPermanent) and
// errors.Is(Permanent(err), err) both hold.
func Permanent(err error) error { return permanentError{err} }

type permanentError struct{ err error }

func (e permanentError) Error() string   { return "queue: permanent: " + fmt.Sprint(e.err) }
func (e permanentError) Unwrap() []error { return []error{ErrPermanent, e.err} }

// retryDelay extracts the delay a handler's error asks for (0: none).
func retryDelay(err error) time.Duration {
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		return ra.Delay
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.RetryAfter
	}
	return 0
}
