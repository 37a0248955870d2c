package resilience

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultKeyHeader is the idempotency header used when
// RetrySettings.KeyHeader is empty.
const DefaultKeyHeader = "Idempotency-Key"

// Defaults of RetrySettings.
var (
	// DefaultRetryStatuses are the statuses retried by default: 408, 429,
	// 502, 503, 504.
	DefaultRetryStatuses = []int{408, 429, 502, 503, 504}
	// DefaultIdempotentMethods are retried without an idempotency key
	// (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
	DefaultIdempotentMethods = []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
)

// RetrySettings configure the retry policy. The zero value is the
// default.
type RetrySettings struct {
	// MaxAttempts is the most attempts per call, the first included.
	// Default 3; 1 disables retries; at most 100.
	MaxAttempts int
	// BaseDelay is the backoff before the first retry's jitter: the n-th
	// retry waits a uniformly random time in [0, min(MaxDelay,
	// BaseDelay·2^(n−1))] ("full jitter"). Default 100ms.
	BaseDelay time.Duration
	// MaxDelay caps the computed backoff. Default 5s; at least BaseDelay.
	MaxDelay time.Duration
	// MaxRetryAfter caps the server's Retry-After: a retryable response
	// asking for more fails fast with *RetryAfterError (the server's value
	// inside) instead of sleeping. Below the cap the retry waits exactly
	// the server's value, never less. Default 20s.
	MaxRetryAfter time.Duration
	// Statuses are the retried response statuses. Default
	// DefaultRetryStatuses. Only 408, 425, 429 and 5xx other than 501 are
	// allowed: other 4xx, 501 and redirects are answers, not failures.
	Statuses []int
	// IdempotentMethods are retried without an idempotency key. Default
	// DefaultIdempotentMethods. Other (unsafe) methods are retried only
	// when the call carries a key (Call.Key) — except after a connect
	// error, when nothing was sent.
	IdempotentMethods []string
	// AutoKey makes the executor generate an idempotency key for a call of
	// an unsafe method that has none, once per logical call; every
	// attempt then carries the byte-identical key.
	AutoKey bool
	// KeyHeader is the idempotency header's name. Default
	// DefaultKeyHeader ("Idempotency-Key").
	KeyHeader string
	// NewKey generates AutoKey keys. Default: 128 random bits from
	// crypto/rand, as 32 lowercase hex digits.
	NewKey func() string
	// Rand returns a uniform random integer in [0, n) for n > 0: the
	// jitter's source, and adaptive throttling's. Default
	// math/rand/v2.Int64N. Injectable for tests.
	Rand func(n int64) int64
	// Classify, if set, replaces the default classification of an
	// attempt's outcome: retry reports whether it may be retried (the
	// idempotency, replay, budget and deadline rules still apply) and
	// reason labels the retry in events and metrics.
	Classify func(c *Call, o Outcome) (retry bool, reason string)
}

// Validate reports the first field out of range, naming it.
func (s RetrySettings) Validate() error {
	switch {
	case s.MaxAttempts < 0 || s.MaxAttempts > 100:
		return fmt.Errorf("resilience: Retry.MaxAttempts %d is out of range 1..100", s.MaxAttempts)
	case s.BaseDelay < 0:
		return fmt.Errorf("resilience: Retry.BaseDelay %v is negative", s.BaseDelay)
	case s.MaxDelay < 0 || (s.MaxDelay > 0 && s.MaxDelay < s.BaseDelay):
		return fmt.Errorf("resilience: Retry.MaxDelay %v is below BaseDelay %v", s.MaxDelay, s.BaseDelay)
	case s.MaxRetryAfter < 0:
		return fmt.Errorf("resilience: Retry.MaxRetryAfter %v is negative", s.MaxRetryAfter)
	}
	for _, st := range s.Statuses {
		if !(st == 408 || st == 425 || st == 429 || (st >= 500 && st <= 599 && st != 501)) {
			return fmt.Errorf("resilience: Retry.Statuses: %d is not retryable (want 408, 425, 429 or 5xx other than 501)", st)
		}
	}
	for _, m := range s.IdempotentMethods {
		if m == "" || strings.ToUpper(m) != m {
			return fmt.Errorf("resilience: Retry.IdempotentMethods: %q is not an upper-case method", m)
		}
	}
	if s.KeyHeader != "" && !validHeaderName(s.KeyHeader) {
		return fmt.Errorf("resilience: Retry.KeyHeader %q is not a header name", s.KeyHeader)
	}
	return nil
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '-' || c == '_' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
			return false
		}
	}
	return s != ""
}

func (s RetrySettings) withDefaults() RetrySettings {
	if s.MaxAttempts == 0 {
		s.MaxAttempts = 3
	}
	if s.BaseDelay == 0 {
		s.BaseDelay = 100 * time.Millisecond
	}
	if s.MaxDelay == 0 {
		s.MaxDelay = max(5*time.Second, s.BaseDelay)
	}
	if s.MaxRetryAfter == 0 {
		s.MaxRetryAfter = 20 * time.Second
	}
	if s.Statuses == nil {
		s.Statuses = DefaultRetryStatuses
	}
	if s.IdempotentMethods == nil {
		s.IdempotentMethods = DefaultIdempotentMethods
	}
	if s.KeyHeader == "" {
		s.KeyHeader = DefaultKeyHeader
	}
	if s.NewKey == nil {
		s.NewKey = randomKey
	}
	if s.Rand == nil {
		s.Rand = mrand.Int64N
	}
	return s
}

// randomKey returns 128 random bits as 32 hex digits.
func randomKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Backoff returns the full-jitter delay before retry n (1 for the first
// retry): a uniform draw from [0, min(maxDelay, base·2^(n−1))] using
// rnd (as RetrySettings.Rand).
func Backoff(n int, base, maxDelay time.Duration, rnd func(int64) int64) time.Duration {
	if n < 1 || base <= 0 {
		return 0
	}
	ceil := maxDelay
	if shift := n - 1; shift < 63 && bits.Len64(uint64(base))+shift < 63 {
		ceil = min(maxDelay, base<<shift)
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rnd(int64(ceil) + 1))
}

type retryPolicy struct {
	s      RetrySettings
	budget *Budget
}

// Retry returns the retry policy: it runs the rest of the chain up to
// s.MaxAttempts times. A call is retried when its attempt is classified
// retryable (connect errors, attempt timeouts, other transport errors,
// and s.Statuses; never TLS or certificate errors, local rejections, or
// a response saying Stripe-Should-Retry: false / X-Should-Retry: false),
// the call is Replayable, its method is idempotent or it carries a key
// (unless nothing was sent), the wait fits before the deadline and, when
// budget is not nil, the budget allows it. The wait is the server's
// Retry-After when valid (above s.MaxRetryAfter, or beyond the deadline:
// *RetryAfterError at once), else the full-jitter Backoff. With
// s.AutoKey, it first sets Call.Key for unsafe methods.
//
// The call ends with the last response (retries exhausted, or not
// retryable), or an error: the caller's context error when ctx ended
// (also during a wait, at once), *BudgetError, *RetryAfterError,
// *ExceededError when the last of several attempts failed with an
// error, else the single attempt's error. Responses that are retried are
// drained and closed.
func Retry(s RetrySettings, budget *Budget) Policy {
	return &retryPolicy{s: s.withDefaults(), budget: budget}
}

func (r *retryPolicy) idempotent(m string) bool { return slices.Contains(r.s.IdempotentMethods, m) }

func (r *retryPolicy) Wrap(env Env, next Handler) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		m := c.method()
		idem := r.idempotent(m)
		if r.s.AutoKey && c.Key == "" && !idem {
			c.Key = r.s.NewKey()
		}
		if r.budget != nil {
			r.budget.Call(c.start)
		}
		for n := 0; ; n++ {
			c.attempt = n
			resp, err := next(ctx, c)
			if err != nil && ctx.Err() != nil {
				return nil, fmt.Errorf("resilience: %q: %w", env.Upstream, context.Cause(ctx))
			}
			if n+1 >= r.s.MaxAttempts || !c.Replayable {
				return r.final(env, n, resp, err)
			}
			o := outcomeOf(resp, err)
			retry, reason, unsent := r.classify(c, o)
			if !retry || !(idem || c.Key != "" || unsent) {
				return r.final(env, n, resp, err)
			}
			now := env.Clock.Now()
			var delay time.Duration
			ra, hasRA := time.Duration(0), false
			if resp != nil {
				ra, hasRA = ParseRetryAfter(resp.Header.Get("Retry-After"), now)
			}
			if hasRA {
				left := time.Duration(1<<63 - 1)
				if !c.deadline.IsZero() {
					left = c.deadline.Sub(now)
				}
				if ra > r.s.MaxRetryAfter || ra >= left {
					drain(resp)
					emit(ctx, env, Event{Kind: EventRetryAfterTooLong, Delay: ra, Attempt: n})
					return nil, &RetryAfterError{Upstream: env.Upstream, RetryAfter: ra, Max: min(r.s.MaxRetryAfter, left), Attempts: n + 1, Last: o}
				}
				delay = ra
			} else {
				delay = Backoff(n+1, r.s.BaseDelay, r.s.MaxDelay, r.s.Rand)
				if !c.deadline.IsZero() && !now.Add(delay).Before(c.deadline) {
					return r.final(env, n, resp, err)
				}
			}
			if r.budget != nil && !r.budget.TryRetry(now) {
				drain(resp)
				emit(ctx, env, Event{Kind: EventBudgetExhausted, Attempt: n})
				return nil, &BudgetError{Upstream: env.Upstream, Attempts: n + 1, Last: o}
			}
			drain(resp)
			emit(ctx, env, Event{Kind: EventRetry, Reason: reason, Delay: delay, Attempt: n + 1})
			if err := sleep(ctx, env.Clock, delay); err != nil {
				return nil, fmt.Errorf("resilience: %q: waiting to retry: %w", env.Upstream, err)
			}
		}
	}
}

// final returns the last attempt's result: the response as is, or the
// error (an *ExceededError after several attempts). A retry that a policy
// refused (open breaker, full bulkhead, ...) after earlier attempts were
// sent is not a rejection of the call: the request may have reached the
// upstream, so the error must not match ErrRejected ("nothing was sent"),
// which callers use to fall back or to try again as if nothing happened.
// It is an *ExceededError counting the attempts sent, whose Last is a
// *RefusedRetryError.
func (r *retryPolicy) final(env Env, n int, resp *http.Response, err error) (*http.Response, error) {
	switch {
	case err == nil, n == 0:
		return resp, err
	case isRejection(err):
		return nil, &ExceededError{Upstream: env.Upstream, Attempts: n, Last: Outcome{Err: &RefusedRetryError{Refusal: err}}}
	}
	return nil, &ExceededError{Upstream: env.Upstream, Attempts: n + 1, Last: Outcome{Err: err}}
}

// classify applies s.Classify or the default rules; unsent reports that
// the request certainly never reached the upstream (a connect error).
func (r *retryPolicy) classify(c *Call, o Outcome) (retry bool, reason string, unsent bool) {
	if o.Err == nil {
		switch o.Header.Get("Stripe-Should-Retry") + o.Header.Get("X-Should-Retry") {
		case "false", "falsefalse":
			return false, "", false
		}
	}
	if r.s.Classify != nil {
		retry, reason = r.s.Classify(c, o)
		return retry, reason, o.Err != nil && isConnectError(o.Err)
	}
	if o.Err != nil {
		switch {
		case isRejection(o.Err), isTLSError(o.Err), errors.Is(o.Err, context.Canceled):
			return false, "", false
		case isConnectError(o.Err):
			return true, "connect", true
		case errors.Is(o.Err, ErrAttemptTimeout):
			return true, "timeout", false
		case errors.Is(o.Err, context.DeadlineExceeded):
			return false, "", false
		}
		return true, "transport", false
	}
	if v := o.Header.Get("Stripe-Should-Retry") + o.Header.Get("X-Should-Retry"); v == "true" || v == "truetrue" {
		return true, "should_retry", false
	}
	if slices.Contains(r.s.Statuses, o.StatusCode) {
		return true, statusReason(o.StatusCode), false
	}
	return false, "", false
}

func statusReason(code int) string {
	switch code {
	case 408:
		return "status_408"
	case 429:
		return "status_429"
	case 502:
		return "status_502"
	case 503:
		return "status_503"
	case 504:
		return "status_504"
	}
	return "status_" + strconv.Itoa(code)
}

func isRejection(err error) bool { return err != nil && errors.Is(err, ErrRejected) }

// isConnectError reports an error from dialing: nothing was sent.
func isConnectError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns) && !dns.IsNotFound
}

// isTLSError reports a TLS handshake or certificate failure: retrying
// cannot fix it.
func isTLSError(err error) bool {
	var (
		ua   x509.UnknownAuthorityError
		ci   x509.CertificateInvalidError
		he   x509.HostnameError
		cve  *tls.CertificateVerificationError
		rhe  tls.RecordHeaderError
		alrt tls.AlertError
	)
	return errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &he) || errors.As(err, &cve) ||
		errors.As(err, &rhe) || errors.As(err, &alrt)
}
