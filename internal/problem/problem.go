// Package problem writes RFC 9457 application/problem+json responses with
// levee's stable type URIs. Every type listed here is documented, with its
// status and meaning, in docs/problems.md; add both together.
package problem

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"time"
)

// BaseURI prefixes every problem type; the fragment is the slug documented
// in docs/problems.md.
const BaseURI = "https://github.com/leveehq/levee/blob/main/docs/problems.md#"

// Type slugs. Each is documented in docs/problems.md.
const (
	IdempotencyKeyMissing     = "idempotency-key-missing"
	IdempotencyKeyInvalid     = "idempotency-key-invalid"
	IdempotencyKeyMismatch    = "idempotency-key-mismatch"
	IdempotencyInFlight       = "idempotency-in-flight"
	IdempotencyResponseLost   = "idempotency-response-not-stored"
	IdempotencyStoreDown      = "idempotency-store-unavailable"
	IdempotencyOutcomeUnknown = "idempotency-outcome-unknown"
	RequestBodyTooLarge       = "request-body-too-large"
	RequestCanceled           = "request-canceled"
	RequestTimeout            = "request-timeout"
	RequestInvalid            = "request-invalid"
	RequestHeaderTooLarge     = "request-header-too-large"
	TransferCodingUnsupported = "transfer-coding-unsupported"
	HTTPVersionUnsupported    = "http-version-unsupported"
	ExpectationFailed         = "expectation-failed"
	UpstreamUnavailable       = "upstream-unavailable"
	UpstreamTimeout           = "upstream-timeout"
	RouteNotFound             = "route-not-found"
	RateLimited               = "rate-limited"
	RateLimitStoreUnavailable = "rate-limit-store-unavailable"
	AdminEndpointDisabled     = "admin-endpoint-disabled"
	AdminUnauthorized         = "admin-unauthorized"
	AdminRequestInvalid       = "admin-request-invalid"
	WebhookHeaderMissing      = "webhook-header-missing"
	WebhookHeaderMalformed    = "webhook-header-malformed"
	WebhookSignatureInvalid   = "webhook-signature-invalid"
	WebhookTimestampStale     = "webhook-timestamp-stale"
	WebhookTimestampFuture    = "webhook-timestamp-future"
	WebhookJSONMalformed      = "webhook-json-malformed"
	WebhookIDMissing          = "webhook-id-missing"
	WebhookInFlight           = "webhook-in-flight"
	WebhookUnavailable        = "webhook-unavailable"
	// Egress resilience (gateway upstreams: policies).
	UpstreamCircuitOpen       = "upstream-circuit-open"
	UpstreamBulkheadFull      = "upstream-bulkhead-full"
	UpstreamThrottled         = "upstream-throttled"
	UpstreamQuotaExhausted    = "upstream-quota-exhausted"
	UpstreamRetryBudget       = "upstream-retry-budget-exhausted"
	UpstreamRetryAfterTooLong = "upstream-retry-after-too-long"
)

// Types lists every slug above, for tools that must handle them all
// (the gateway checks an error template against each).
var Types = []string{
	IdempotencyKeyMissing, IdempotencyKeyInvalid, IdempotencyKeyMismatch, IdempotencyInFlight,
	IdempotencyResponseLost, IdempotencyStoreDown, RequestBodyTooLarge, RequestCanceled,
	UpstreamUnavailable, UpstreamTimeout, RouteNotFound, RateLimited, RateLimitStoreUnavailable,
	IdempotencyOutcomeUnknown, AdminEndpointDisabled, AdminUnauthorized, AdminRequestInvalid,
	RequestTimeout, RequestInvalid, RequestHeaderTooLarge, TransferCodingUnsupported, HTTPVersionUnsupported, ExpectationFailed,
	WebhookHeaderMissing, WebhookHeaderMalformed, WebhookSignatureInvalid, WebhookTimestampStale,
	WebhookTimestampFuture, WebhookJSONMalformed, WebhookIDMissing, WebhookInFlight, WebhookUnavailable,
	UpstreamCircuitOpen, UpstreamBulkheadFull, UpstreamThrottled, UpstreamQuotaExhausted, UpstreamRetryBudget,
	UpstreamRetryAfterTooLong,
}

// ViolatedPolicies is the member of a rate-limited problem naming the
// violated policies: the name draft-ietf-httpapi-ratelimit-headers gives
// it in its quota-exceeded problem type.
const ViolatedPolicies = "violated-policies"

// Problem is one problem+json document.
type Problem struct {
	Type   string // a slug above; written as BaseURI+slug
	Title  string
	Status int
	Detail string
	// Extra members are added at the top level of the document.
	Extra map[string]any
	// RetryAfter, when positive, is sent as Retry-After in whole seconds,
	// rounded up (never earlier than the real time).
	RetryAfter time.Duration
}

// RetryAfterSeconds rounds d up to whole seconds, at least 1.
func RetryAfterSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// Marshal encodes p as a problem+json document with the standard members
// first (type, title, status, detail) and the extension members after,
// sorted by name.
func Marshal(p Problem) []byte {
	b := []byte(`{"type":`)
	b = appendJSON(b, BaseURI+p.Type)
	b = append(b, `,"title":`...)
	b = appendJSON(b, p.Title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.Status), 10)
	if p.Detail != "" {
		b = append(b, `,"detail":`...)
		b = appendJSON(b, p.Detail)
	}
	keys := make([]string, 0, len(p.Extra))
	for k := range p.Extra {
		switch k {
		case "type", "title", "status", "detail":
			continue // standard members cannot be overridden
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, err := json.Marshal(p.Extra[k])
		if err != nil {
			continue // an extension that cannot be encoded is dropped
		}
		b = append(b, ',')
		b = appendJSON(b, k)
		b = append(b, ':')
		b = append(b, v...)
	}
	return append(b, '}')
}

func appendJSON(b []byte, s string) []byte {
	v, _ := json.Marshal(s) // a string always encodes
	return append(b, v...)
}

// Renderer renders a problem in another envelope than problem+json (an
// API's own error shape). A ResponseWriter that implements it, or wraps
// one that does (Unwrap), has every problem written through it rendered
// that way.
type Renderer interface {
	RenderProblem(p Problem) (body []byte, contentType string)
}

// ContentType is the media type of Marshal's documents.
const ContentType = "application/problem+json"

func findRenderer(w http.ResponseWriter) Renderer {
	for w != nil {
		if r, ok := w.(Renderer); ok {
			return r
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return nil
		}
		w = u.Unwrap()
	}
	return nil
}

// Write sends p as the response: problem+json, or what a Renderer on w
// (see Renderer) makes of it. It sets Content-Type, Cache-Control:
// no-store and, if set, Retry-After.
func Write(w http.ResponseWriter, p Problem) { WriteWith(w, p, findRenderer(w)) }

// WriteWith is Write with an explicit renderer (nil: problem+json).
func WriteWith(w http.ResponseWriter, p Problem, r Renderer) {
	var body []byte
	ctype := ContentType
	if r != nil {
		body, ctype = r.RenderProblem(p)
	} else {
		body = Marshal(p)
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Content-Encoding")
	if p.RetryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(RetryAfterSeconds(p.RetryAfter), 10))
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}
