// Package problem writes RFC 9457 application/problem+json responses with
// levee's stable type URIs. Every type listed here is documented, with its
// status and meaning, in docs/problems.md; add both together.
package problem

import (
	"encoding/json"
	"net/http"
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
	RequestBodyTooLarge       = "request-body-too-large"
	RequestCanceled           = "request-canceled"
	UpstreamUnavailable       = "upstream-unavailable"
	UpstreamTimeout           = "upstream-timeout"
	RouteNotFound             = "route-not-found"
	RateLimited               = "rate-limited"
	RateLimitStoreUnavailable = "rate-limit-store-unavailable"
)

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

// Write sends p as the response. It sets Content-Type, Cache-Control:
// no-store and, if set, Retry-After.
func Write(w http.ResponseWriter, p Problem) {
	doc := make(map[string]any, 4+len(p.Extra))
	for k, v := range p.Extra {
		doc[k] = v
	}
	doc["type"] = BaseURI + p.Type
	doc["title"] = p.Title
	doc["status"] = p.Status
	if p.Detail != "" {
		doc["detail"] = p.Detail
	}
	body, err := json.Marshal(doc)
	if err != nil { // an Extra value that cannot be encoded: drop extras
		body, _ = json.Marshal(map[string]any{"type": BaseURI + p.Type, "title": p.Title, "status": p.Status, "detail": p.Detail})
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Content-Encoding")
	if p.RetryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(RetryAfterSeconds(p.RetryAfter), 10))
	}
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}
