package dynamodb

import (
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
)

// ErrThrottled matches every *ThrottledError with errors.Is.
var ErrThrottled = errors.New("dynamodb: throttled")

// ThrottledError is a request DynamoDB refused for throughput (or the
// SDK's client-side retry quota refused to retry) after the SDK's retries
// and backoff gave up. The request changed nothing. It matches
// ErrThrottled and the SDK's own error (for example
// *types.ProvisionedThroughputExceededException) with errors.Is and
// errors.As; wrapped by the engine in an *idempotency.StoreError it still
// does, so a caller can label metrics with Reason:
//
//	var te *dynamodb.ThrottledError
//	if errors.As(err, &te) { throttled.WithLabelValues(te.Reason).Inc() }
type ThrottledError struct {
	// Op is the store operation: "claim", "renew", "complete", "release",
	// "mark unknown" or "lookup" (with a suffix for the claim's fallback
	// read).
	Op string
	// Reason is the AWS error code of the last attempt, one of the SDK's
	// throttle codes (retry.DefaultThrottleErrorCodes), such as
	// "ProvisionedThroughputExceededException", "ThrottlingException" or
	// "RequestLimitExceeded". The set is bounded: safe as a metric label.
	Reason string
	// Attempts is the number of attempts the SDK made, 0 if it did not say.
	Attempts int
	// RetryQuotaExceeded reports that the SDK stopped retrying early
	// because its client-side retry token bucket ran dry.
	RetryQuotaExceeded bool
	// Err is the SDK's error.
	Err error
}

// Error describes the throttled operation and its reason.
func (e *ThrottledError) Error() string {
	msg := fmt.Sprintf("dynamodb: %s: throttled (%s)", e.Op, e.Reason)
	if e.Attempts > 0 {
		msg += fmt.Sprintf(" after %d attempts", e.Attempts)
	}
	if e.RetryQuotaExceeded {
		msg += ", SDK retry quota exhausted"
	}
	if e.Err == nil {
		return msg
	}
	return msg + ": " + e.Err.Error()
}

// Unwrap returns the SDK's error.
func (e *ThrottledError) Unwrap() error { return e.Err }

// Is reports whether target is ErrThrottled.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

// throttleCodes is the SDK's own classification of throttling errors, the
// one its retryer backs off on.
var throttleCodes = retry.ThrottleErrorCode{Codes: retry.DefaultThrottleErrorCodes}

// throttled returns err as a *ThrottledError if the SDK classifies it as
// throttling, else nil.
func throttled(op string, err error) *ThrottledError {
	if throttleCodes.IsErrorThrottle(err) != aws.TrueTernary {
		return nil
	}
	te := &ThrottledError{Op: op, Err: err}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		te.Reason = apiErr.ErrorCode()
	}
	var maxAttempts *retry.MaxAttemptsError
	if errors.As(err, &maxAttempts) {
		te.Attempts = maxAttempts.Attempt
	}
	var quota ratelimit.QuotaExceededError
	te.RetryQuotaExceeded = errors.As(err, &quota)
	return te
}

// wrap prefixes a DynamoDB error with the operation, as a *ThrottledError
// when it is throttling.
func wrap(op string, err error) error {
	if te := throttled(op, err); te != nil {
		return te
	}
	return fmt.Errorf("dynamodb: %s: %w", op, err)
}
