package webhook

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinel errors. Every error returned by a Scheme's Verify, by [IDFromJSON]
// and by the [Handler] wraps exactly one of them (errors.Is), so an HTTP layer
// can map each to its own problem type (see [ProblemFor]).
var (
	// ErrMissingHeader: a header the scheme needs is absent or empty.
	// The error is a [*HeaderError] naming the header.
	ErrMissingHeader = errors.New("webhook: missing header")
	// ErrMalformedHeader: a header is present but cannot be parsed (a
	// timestamp that is not a decimal Unix time, a signature that is not
	// hex or base64, a Stripe-Signature without t= or v1=, a value sent
	// twice). The error is a [*HeaderError] naming the header.
	ErrMalformedHeader = errors.New("webhook: malformed header")
	// ErrBadSignature: the headers parse, but no signature in them matches
	// the body under any of the configured secrets.
	ErrBadSignature = errors.New("webhook: no signature matches")
	// ErrStaleTimestamp: the signature is valid but the signed timestamp is
	// older than the tolerance (a replay). The error is a [*TimestampError].
	ErrStaleTimestamp = errors.New("webhook: timestamp too old")
	// ErrFutureTimestamp: the signature is valid but the signed timestamp
	// is further in the future than the tolerance. The error is a
	// [*TimestampError].
	ErrFutureTimestamp = errors.New("webhook: timestamp in the future")
	// ErrBodyTooLarge: the body is longer than the handler's limit. The
	// error is a [*BodyTooLargeError].
	ErrBodyTooLarge = errors.New("webhook: body too large")
	// ErrMalformedJSON: an event id is read from a JSON path (or the scheme
	// reads it from the body, as Stripe does) and the body is not valid
	// JSON.
	ErrMalformedJSON = errors.New("webhook: malformed JSON body")
	// ErrMissingID: the body is valid JSON but the id path is absent (a
	// segment meets a non-object), null, an empty string, or not a string
	// or number; or the handler dedupes and the event carries no id at all.
	ErrMissingID = errors.New("webhook: event id missing")
	// ErrInFlight is returned (wrapped) by a [Dedupe] when another request
	// is handing the same event to the sink right now. The handler answers
	// 409 with Retry-After; the sender's retry then finds the event seen.
	ErrInFlight = errors.New("webhook: the same event is being accepted by another request")
	// ErrSink wraps every error of [Sink.Accept] and of [Dedupe.Claim]
	// (other than ErrInFlight) returned through the handler's hooks:
	// the event was not accepted and the sender should retry.
	ErrSink = errors.New("webhook: event not accepted")
)

// HeaderError reports a missing or malformed header. It never carries the
// header's value when that value is (or contains) a signature.
type HeaderError struct {
	// Header is the canonical header name, e.g. "Stripe-Signature".
	Header string
	// Reason says what is wrong, e.g. "no v1 signature"; empty for a
	// missing header.
	Reason string
	// Err is ErrMissingHeader or ErrMalformedHeader.
	Err error
}

// Error names the header and the reason, never the header's value.
func (e *HeaderError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("%v: %s", e.Err, e.Header)
	}
	return fmt.Sprintf("%v: %s: %s", e.Err, e.Header, e.Reason)
}

// Unwrap returns ErrMissingHeader or ErrMalformedHeader.
func (e *HeaderError) Unwrap() error { return e.Err }

func missingHeader(name string) error {
	return &HeaderError{Header: http.CanonicalHeaderKey(name), Err: ErrMissingHeader}
}

func malformedHeader(name, reason string) error {
	return &HeaderError{Header: http.CanonicalHeaderKey(name), Reason: reason, Err: ErrMalformedHeader}
}

// TimestampError reports a validly signed timestamp outside the tolerance.
type TimestampError struct {
	// Timestamp is the signed time, Now the verifier's clock, Tolerance the
	// allowed distance between them in either direction.
	Timestamp, Now time.Time
	Tolerance      time.Duration
	// Err is ErrStaleTimestamp or ErrFutureTimestamp.
	Err error
}

// Error says how far the timestamp is from the clock, in which direction,
// and the tolerance.
func (e *TimestampError) Error() string {
	d := e.Now.Sub(e.Timestamp)
	if d < 0 {
		return fmt.Sprintf("%v: signed %s ahead of the receiver's clock (tolerance %s)", e.Err, -d, e.Tolerance)
	}
	return fmt.Sprintf("%v: signed %s ago (tolerance %s)", e.Err, d, e.Tolerance)
}

// Unwrap returns ErrStaleTimestamp or ErrFutureTimestamp.
func (e *TimestampError) Unwrap() error { return e.Err }

// BodyTooLargeError reports a body longer than Limit bytes.
type BodyTooLargeError struct {
	Limit int64
}

// Error states the limit.
func (e *BodyTooLargeError) Error() string {
	return fmt.Sprintf("%v: the limit is %d bytes", ErrBodyTooLarge, e.Limit)
}

// Unwrap returns ErrBodyTooLarge.
func (e *BodyTooLargeError) Unwrap() error { return ErrBodyTooLarge }
