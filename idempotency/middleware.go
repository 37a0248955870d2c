package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/internal/problem"
)

// DefaultStoredHeaders are the response headers stored and replayed when
// HTTPOptions.StoredHeaders is nil. Request-Id is the upstream's id for
// the request that executed (Stripe's; clients such as stripe-go expose it
// as LastResponse.RequestID), so a replay names the execution it replays.
var DefaultStoredHeaders = []string{
	"Content-Type", "Content-Encoding", "Content-Language", "Content-Location",
	"Location", "ETag", "Last-Modified", "Link", "Cache-Control", "Request-Id",
}

// HTTPOptions configure Engine.Middleware. The zero value is a sensible
// default.
type HTTPOptions struct {
	// Header is the request header carrying the key. Default
	// "Idempotency-Key".
	Header string
	// Methods are the methods the middleware applies to. Default POST and
	// PATCH. GET, HEAD and OPTIONS are never stored, even if listed.
	Methods []string
	// Required answers 400 to a covered request without a key. Default
	// false: such a request passes through and nothing is stored.
	Required bool
	// Scope names the route; keys are scoped by Scope + tenant + key, so
	// the same key on two scopes is two keys. Default "".
	Scope string
	// TenantHeader names the request header identifying the tenant (an API
	// key, Authorization). Its value is hashed into the scope, never
	// stored in clear. Default: none (one tenant).
	TenantHeader string
	// FingerprintHeaders are request headers that make two requests
	// different. Default none; volatile headers (X-Request-Id, Date,
	// traceparent) should not be listed.
	FingerprintHeaders []string
	// MaxRequestBody bounds the body read to fingerprint the request;
	// larger bodies get 413. Default 1 MiB.
	MaxRequestBody int64
	// MaxStoredBody bounds the response body stored for replay. A larger
	// response is still sent to the client; its record keeps the status
	// and headers, and a replay answers 409 response-not-stored rather
	// than running the request again. Default 1 MiB.
	MaxStoredBody int64
	// StoredHeaders is the allow-list of response headers stored and
	// replayed. Default DefaultStoredHeaders.
	StoredHeaders []string
	// Store decides, from the handler's status, whether the response is
	// stored (true) or the claim released so a retry runs again (false).
	// Default: DefaultStore.
	Store func(status int) bool
	// OnUnknownOutcome decides what happens to the key when the handler
	// reports an unknown outcome (ReportUnknownOutcome). Default
	// UnknownOutcomeHold.
	OnUnknownOutcome UnknownOutcomePolicy
}

// UnknownOutcomePolicy is what the middleware does with a key whose
// handler reported an unknown outcome (ReportUnknownOutcome).
type UnknownOutcomePolicy uint8

const (
	// UnknownOutcomeHold (the default) moves the key to StateUnknown:
	// retries get 409 idempotency-outcome-unknown and never reach the
	// handler until an operator resolves the key or its retention ends.
	UnknownOutcomeHold UnknownOutcomePolicy = iota
	// UnknownOutcomeRelease releases the claim so that a retry executes
	// again: for upstreams that deduplicate the forwarded Idempotency-Key
	// themselves.
	UnknownOutcomeRelease
)

// String returns "hold" or "release".
func (p UnknownOutcomePolicy) String() string {
	switch p {
	case UnknownOutcomeHold:
		return "hold"
	case UnknownOutcomeRelease:
		return "release"
	}
	return fmt.Sprintf("UnknownOutcomePolicy(%d)", uint8(p))
}

// ReportUnknownOutcome tells the middleware running the handler that owns
// ctx that this request's outcome is unknown: the whole request reached
// the upstream (or took effect in part) and then its answer was lost — a
// timeout, a connection lost, a response cut. A proxy calls it before
// returning its own error response. After the handler returns, the
// middleware then holds the key in StateUnknown instead of releasing or
// storing it (or releases it under UnknownOutcomeRelease), whatever status
// the handler wrote, and reports OutcomeUnknown through Options.OnEvent
// with cause as Event.Err.
//
// It returns true when ctx is the context of a request that the middleware
// has claimed and not yet settled (the first report's cause is kept), and
// false otherwise: no middleware, a request not covered or without a key,
// one executed unprotected by FailOpen, or a report made after the handler
// returned. It is safe to call from any goroutine.
func ReportUnknownOutcome(ctx context.Context, cause error) bool {
	rec, _ := ctx.Value(unknownReportKey{}).(*recorder)
	if rec == nil {
		return false
	}
	if cause == nil {
		cause = ErrOutcomeUnknown
	}
	if rec.unknown.CompareAndSwap(nil, &unknownReport{cause: cause}) {
		return true
	}
	return rec.unknown.Load() != settled
}

type unknownReportKey struct{}

type unknownReport struct{ cause error }

// settled marks a recorder whose claim the middleware has settled: later
// reports are refused.
var settled = &unknownReport{}

// DefaultStore is the default failure policy: 2xx, 3xx and 4xx responses
// are stored, except 408, 409, 425 and 429 (the request did not take
// effect); 5xx are released so a retry executes again.
func DefaultStore(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusConflict, http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return status < 500
}

func (o HTTPOptions) withDefaults() HTTPOptions {
	if o.Header == "" {
		o.Header = DefaultHeader
	}
	if o.Methods == nil {
		o.Methods = DefaultMethods()
	}
	if o.MaxRequestBody <= 0 {
		o.MaxRequestBody = DefaultMaxRequestBody
	}
	if o.MaxStoredBody <= 0 {
		o.MaxStoredBody = DefaultMaxStoredBody
	}
	if o.StoredHeaders == nil {
		o.StoredHeaders = DefaultStoredHeaders
	}
	if o.Store == nil {
		o.Store = DefaultStore
	}
	return o
}

// ScopedKey returns the store key for a client key: a hex SHA-256 over the
// scope, the tenant credential and the key, each length-prefixed. The
// tenant credential and the key never reach the store in clear, and every
// store key has the same length and alphabet.
func ScopedKey(scope, tenant, key string) string {
	var stack [256]byte
	b := appendField(stack[:0], scope)
	b = appendField(b, tenant)
	b = appendField(b, key)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Middleware returns net/http middleware that gives covered requests the
// idempotency contract (see package doc and docs/idempotency.md):
//
//   - method not covered, or key absent and optional: passes through;
//   - key absent and required: 400 idempotency-key-missing;
//   - key malformed or the header sent twice: 400 idempotency-key-invalid;
//   - body above MaxRequestBody: 413 request-body-too-large;
//   - same key, different request (even while the first runs): 422;
//   - same key while the first runs: 409 + Retry-After, or with
//     Options.InFlightWait the first's response once it finishes;
//   - same key after completion: the stored status, headers and body, byte
//     for byte, plus Idempotent-Replayed: true;
//   - store failure: 503 + Retry-After, or unprotected with FailOpen;
//   - key held after an unknown outcome (same fingerprint): 409
//     idempotency-outcome-unknown, the handler does not run;
//   - handler panics or answers a status HTTPOptions.Store refuses: the
//     claim is released and the response (or panic) passes through;
//   - handler reported an unknown outcome (ReportUnknownOutcome): the key
//     is held (or released, per HTTPOptions.OnUnknownOutcome) and the
//     handler's response passes through unstored.
//
// Errors are application/problem+json documented in docs/problems.md.
func (e *Engine) Middleware(opts HTTPOptions) func(http.Handler) http.Handler {
	o := opts.withDefaults()
	stored := make([]string, len(o.StoredHeaders))
	for i, h := range o.StoredHeaders {
		stored[i] = http.CanonicalHeaderKey(h)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e.serve(w, r, next, &o, stored)
		})
	}
}

func (o *HTTPOptions) covers(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return slices.Contains(o.Methods, method)
}

func (e *Engine) serve(w http.ResponseWriter, r *http.Request, next http.Handler, o *HTTPOptions, stored []string) {
	ctx := r.Context()
	if !o.covers(r.Method) {
		next.ServeHTTP(w, r)
		return
	}
	key, ok := e.requestKey(w, r, next, o)
	if !ok {
		return
	}
	body, err := readBody(r, o.MaxRequestBody)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			e.emit(ctx, OutcomeInvalid, "", err)
			problem.Write(w, problem.Problem{Type: problem.RequestBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
				Title: "Request body too large", Detail: fmt.Sprintf("idempotent requests are limited to %d bytes", o.MaxRequestBody)})
			return
		}
		e.emit(ctx, OutcomeCanceled, "", err)
		problem.Write(w, problem.Problem{Type: problem.RequestCanceled, Status: http.StatusBadRequest,
			Title: "Request body could not be read", Detail: err.Error()})
		return
	}
	fp := FingerprintRequest(r, body, o.FingerprintHeaders)
	tenant := ""
	if o.TenantHeader != "" {
		tenant = r.Header.Get(o.TenantHeader)
	}
	skey := ScopedKey(o.Scope, tenant, key)

	lease, rec, err := e.Begin(ctx, skey, fp)
	switch {
	case err == nil && rec != nil:
		e.emit(ctx, OutcomeReplayed, skey, nil)
		writeReplay(w, rec.Response)
		return
	case err == nil:
		e.execute(w, r, next, o, stored, lease, skey, body)
		return
	default:
		e.refuse(w, r, next, skey, body, err)
	}
}

// refuse answers a request whose claim was not granted (err from Begin):
// key reuse, a held key, a duplicate in flight, the store down (or, with
// FailOpen, runs it unprotected), or a caller that went away.
func (e *Engine) refuse(w http.ResponseWriter, r *http.Request, next http.Handler, skey string, body []byte, err error) {
	ctx := r.Context()
	switch {
	case errors.Is(err, ErrMismatch):
		e.emit(ctx, OutcomeMismatch, skey, nil)
		problem.Write(w, problem.Problem{Type: problem.IdempotencyKeyMismatch, Status: http.StatusUnprocessableEntity,
			Title:  "Idempotency key reused with a different request",
			Detail: "this key was already used for a request with a different method, path, body or fingerprinted headers; use a new key for a new request"})
	case errors.Is(err, ErrOutcomeUnknown):
		e.emit(ctx, OutcomeHeld, skey, err)
		var ue *OutcomeUnknownError
		extra := map[string]any{}
		if errors.As(err, &ue) {
			extra["unknown_since"] = ue.Since.UTC().Format(time.RFC3339)
			extra["held_until"] = ue.Until.UTC().Format(time.RFC3339)
		}
		problem.Write(w, problem.Problem{Type: problem.IdempotencyOutcomeUnknown, Status: http.StatusConflict,
			Title:  "The outcome of the request with this idempotency key is unknown",
			Detail: "an earlier request with this key reached the upstream and its answer was lost; it may have taken effect, so it is not executed again until an operator resolves the key",
			Extra:  extra})
	case errors.Is(err, ErrInFlight):
		e.emit(ctx, OutcomeConflict, skey, nil)
		var ife *InFlightError
		retry := e.opts.RetryAfter
		if errors.As(err, &ife) {
			retry = ife.RetryAfter
		}
		problem.Write(w, problem.Problem{Type: problem.IdempotencyInFlight, Status: http.StatusConflict, RetryAfter: retry,
			Title: "A request with this idempotency key is in progress", Detail: "retry after the indicated delay to receive its response"})
	case errors.Is(err, ErrStoreUnavailable) && e.opts.FailOpen:
		e.emit(ctx, OutcomeFailOpen, skey, err)
		setBody(r, body)
		next.ServeHTTP(w, r)
	case errors.Is(err, ErrStoreUnavailable):
		e.emit(ctx, OutcomeStoreError, skey, err)
		problem.Write(w, problem.Problem{Type: problem.IdempotencyStoreDown, Status: http.StatusServiceUnavailable, RetryAfter: e.opts.RetryAfter,
			Title: "Idempotency store unavailable", Detail: "the request was not executed; retry with the same key"})
	default: // the caller went away (ctx ended) before anything ran
		e.emit(ctx, OutcomeCanceled, skey, err)
		problem.Write(w, problem.Problem{Type: problem.RequestCanceled, Status: http.StatusServiceUnavailable, RetryAfter: e.opts.RetryAfter,
			Title: "Request canceled", Detail: err.Error()})
	}
}

// requestKey reads the request's idempotency key, answering the request
// itself when there is none to use: 400 when it is missing but required or
// malformed, or passing it on uncovered when it is missing and optional.
func (e *Engine) requestKey(w http.ResponseWriter, r *http.Request, next http.Handler, o *HTTPOptions) (string, bool) {
	ctx := r.Context()
	values := r.Header.Values(o.Header)
	switch {
	case len(values) == 0 && o.Required:
		e.emit(ctx, OutcomeInvalid, "", nil)
		problem.Write(w, problem.Problem{Type: problem.IdempotencyKeyMissing, Status: http.StatusBadRequest,
			Title: "Idempotency key missing", Detail: fmt.Sprintf("%s %s requires the %s header", r.Method, r.URL.Path, o.Header)})
		return "", false
	case len(values) == 0:
		e.emit(ctx, OutcomePassthrough, "", nil)
		next.ServeHTTP(w, r)
		return "", false
	case len(values) > 1:
		e.emit(ctx, OutcomeInvalid, "", nil)
		problem.Write(w, problem.Problem{Type: problem.IdempotencyKeyInvalid, Status: http.StatusBadRequest,
			Title: "Invalid idempotency key", Detail: fmt.Sprintf("the %s header was sent %d times; send it once", o.Header, len(values))})
		return "", false
	}
	key, err := ParseKey(values[0])
	if err != nil {
		e.emit(ctx, OutcomeInvalid, "", err)
		problem.Write(w, problem.Problem{Type: problem.IdempotencyKeyInvalid, Status: http.StatusBadRequest,
			Title: "Invalid idempotency key", Detail: fmt.Sprintf("%s header: %s (expected 1 to %d visible ASCII characters, optionally as a quoted string)", o.Header, strings.TrimPrefix(err.Error(), "idempotency: "), MaxKeyLen)})
		return "", false
	}
	return key, true
}

var errBodyTooLarge = errors.New("idempotency: request body too large")

// readBody reads at most limit bytes of r's body; more is errBodyTooLarge.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errBodyTooLarge
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) { // an outer limit (http.MaxBytesReader) is smaller
			return nil, errBodyTooLarge
		}
		return nil, fmt.Errorf("idempotency: reading request body: %w", err)
	}
	if n > limit {
		return nil, errBodyTooLarge
	}
	return buf.Bytes(), nil
}

func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
}

func writeReplay(w http.ResponseWriter, resp *Response) {
	h := w.Header()
	h.Set("Idempotent-Replayed", "true")
	if resp.BodyOmitted {
		problem.Write(w, problem.Problem{Type: problem.IdempotencyResponseLost, Status: http.StatusConflict,
			Title:  "The original response was too large to store",
			Detail: "the request was executed once; its response body exceeded the stored size limit and cannot be replayed",
			Extra:  map[string]any{"original_status": resp.Status}})
		return
	}
	for k, vs := range resp.Header {
		h[k] = slices.Clone(vs) // the store's copy must stay untouched
	}
	h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// execute runs the handler holding lease, records or releases, then sends
// the response (recording first, so a client that sees the response and
// retries gets the replay).
//
// The handler runs with a context that the client's disconnect does not
// cancel: once a mutating request has started, it finishes and its outcome
// is recorded, so the client's retry gets the replay rather than a second
// execution of work that may already have taken effect. Handlers should
// bound their own time (the gateway applies the route timeout). The
// context also carries the recorder, for ReportUnknownOutcome.
func (e *Engine) execute(w http.ResponseWriter, r *http.Request, next http.Handler, o *HTTPOptions, stored []string, lease *Lease, skey string, body []byte) {
	ctx := r.Context()
	setBody(r, body)
	rec := &recorder{w: w, max: o.MaxStoredBody}
	rec.ctx = execContext{Context: context.WithoutCancel(ctx), rec: rec}
	r = r.WithContext(&rec.ctx)
	finished := false
	defer func() {
		if finished {
			return
		}
		// The handler panicked (http.ErrAbortHandler included) or called
		// runtime.Goexit: never leave the claim held until its lease ends.
		p := recover()
		e.abandon(ctx, w, o, stored, lease, skey, rec, fmt.Errorf("handler did not return normally: %v", p))
		if p != nil {
			panic(p)
		}
	}()
	next.ServeHTTP(rec, r)
	finished = true
	if rep := rec.unknown.Swap(settled); rep != nil {
		e.settleUnknown(ctx, o, lease, skey, rep.cause)
		rec.flush()
		return
	}
	status := rec.statusCode()
	if !o.Store(status) {
		err := lease.Release(ctx)
		e.emit(ctx, OutcomeReleased, skey, err)
		rec.flush()
		return
	}
	resp := Response{Status: status, Header: pick(w.Header(), stored), BodyOmitted: rec.overflow}
	if !rec.overflow {
		resp.Body = rec.buf.Bytes()
	}
	if err := lease.Complete(ctx, resp); err != nil {
		e.emit(ctx, OutcomeNotRecorded, skey, err)
	} else {
		e.emit(ctx, OutcomeExecuted, skey, nil)
	}
	rec.flush()
}

// settleUnknown holds (or, under UnknownOutcomeRelease, releases) the key
// of a request whose handler reported an unknown outcome.
func (e *Engine) settleUnknown(ctx context.Context, o *HTTPOptions, lease *Lease, skey string, cause error) {
	if o.OnUnknownOutcome == UnknownOutcomeRelease {
		err := UnknownOutcome(cause)
		if rerr := lease.Release(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		}
		e.emit(ctx, OutcomeReleased, skey, err)
		return
	}
	if err := lease.MarkUnknown(ctx); err != nil {
		cause = errors.Join(cause, err)
	}
	e.emit(ctx, OutcomeUnknown, skey, cause)
}

// abandon settles the claim of a handler that did not return normally. If
// it reported an unknown outcome, the key is held (settleUnknown). If it
// had already produced a status the failure policy stores, the request
// took effect (typically a proxied upstream answered, then the body copy
// failed or the client went away mid-stream): the status and headers are
// recorded without the body, so a retry learns it ran (409
// response-not-stored) instead of running it again. Otherwise the claim is
// released so a retry executes.
func (e *Engine) abandon(ctx context.Context, w http.ResponseWriter, o *HTTPOptions, stored []string, lease *Lease, skey string, rec *recorder, cause error) {
	if rep := rec.unknown.Swap(settled); rep != nil {
		e.settleUnknown(ctx, o, lease, skey, errors.Join(rep.cause, cause))
		return
	}
	if rec.status != 0 && o.Store(rec.status) {
		err := lease.Complete(ctx, Response{Status: rec.status, Header: pick(w.Header(), stored), BodyOmitted: true})
		if err != nil {
			e.emit(ctx, OutcomeNotRecorded, skey, errors.Join(cause, err))
			return
		}
		e.emit(ctx, OutcomeExecuted, skey, cause)
		return
	}
	err := lease.Release(ctx)
	e.emit(ctx, OutcomeReleased, skey, errors.Join(cause, err))
}

// execContext is the handler's context: the request's, without its
// cancellation, and carrying the recorder for ReportUnknownOutcome. It
// lives inside the recorder, so it costs no allocation of its own.
type execContext struct {
	context.Context
	rec *recorder
}

// Value returns the recorder for unknownReportKey and defers to the
// request's context otherwise.
func (c *execContext) Value(key any) any {
	if key == (unknownReportKey{}) {
		return c.rec
	}
	return c.Context.Value(key)
}

func pick(h http.Header, names []string) http.Header {
	var out http.Header
	for _, k := range names {
		if vs, ok := h[k]; ok {
			if out == nil {
				out = make(http.Header, len(names))
			}
			out[k] = slices.Clone(vs)
		}
	}
	return out
}

// recorder buffers the handler's response up to max bytes. Beyond that it
// starts streaming to the client (the body is then not stored).
type recorder struct {
	w        http.ResponseWriter
	max      int64
	status   int
	buf      bytes.Buffer
	overflow bool // streaming: header and buffered bytes already sent
	ctx      execContext
	unknown  atomic.Pointer[unknownReport] // set by ReportUnknownOutcome; settled once decided
}

func (rc *recorder) Header() http.Header { return rc.w.Header() }

func (rc *recorder) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		rc.w.WriteHeader(code) // informational responses pass straight through
		return
	}
	if rc.status == 0 {
		rc.status = code
	}
}

func (rc *recorder) statusCode() int {
	if rc.status == 0 {
		return http.StatusOK
	}
	return rc.status
}

func (rc *recorder) Write(p []byte) (int, error) {
	if rc.status == 0 {
		rc.status = http.StatusOK
	}
	if rc.overflow {
		return rc.w.Write(p)
	}
	if int64(rc.buf.Len()+len(p)) > rc.max {
		rc.overflow = true
		rc.w.WriteHeader(rc.status)
		if _, err := rc.w.Write(rc.buf.Bytes()); err != nil {
			return 0, err
		}
		rc.buf = bytes.Buffer{}
		return rc.w.Write(p)
	}
	return rc.buf.Write(p)
}

// flush sends the buffered response unless it was already streamed.
func (rc *recorder) flush() {
	if rc.overflow {
		return
	}
	if rc.w.Header().Get("Content-Length") == "" {
		rc.w.Header().Set("Content-Length", strconv.Itoa(rc.buf.Len()))
	}
	rc.w.WriteHeader(rc.statusCode())
	_, _ = rc.w.Write(rc.buf.Bytes())
}

// Flush is a no-op while the response is buffered (it must not reach the
// client before it is recorded) and flushes once the body streams. The
// recorder deliberately has no Unwrap: http.ResponseController must not
// reach the real writer and send headers early.
func (rc *recorder) Flush() {
	if rc.overflow {
		if f, ok := rc.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}
