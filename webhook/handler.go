package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/leveehq/levee/internal/problem"
)

// Handler defaults.
const (
	// DefaultMaxBodyBytes bounds a webhook body when Options.MaxBodyBytes is
	// zero: 1 MiB, well above Stripe's, Shopify's and Slack's events.
	// GitHub documents payloads up to 25 MB; raise the limit for it.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultRetryAfter is sent with 409 and 503 answers when
	// Options.RetryAfter is zero.
	DefaultRetryAfter = time.Second
)

// Problem type slugs of the handler's answers, appended to levee's problem
// type base URI (see docs/webhooks.md). Bodies too large and unreadable reuse
// levee's request-body-too-large and request-canceled types.
const (
	TypeHeaderMissing    = problem.WebhookHeaderMissing
	TypeHeaderMalformed  = problem.WebhookHeaderMalformed
	TypeSignatureInvalid = problem.WebhookSignatureInvalid
	TypeTimestampStale   = problem.WebhookTimestampStale
	TypeTimestampFuture  = problem.WebhookTimestampFuture
	TypeJSONMalformed    = problem.WebhookJSONMalformed
	TypeIDMissing        = problem.WebhookIDMissing
	TypeInFlight         = problem.WebhookInFlight
	TypeUnavailable      = problem.WebhookUnavailable
	TypeBodyTooLarge     = problem.RequestBodyTooLarge
	TypeBodyUnreadable   = problem.RequestCanceled
)

// Sink receives verified events. The durable queue implements it.
type Sink interface {
	// Accept stores ev durably and returns nil only once it is durable
	// (a crash after Accept returned nil does not lose ev). Any error means
	// ev was not accepted: the handler answers 503 and the sender retries.
	// ev.Body and ev.Header must be copied if kept after Accept returns.
	Accept(ctx context.Context, ev Event) error
}

// OnceSink is a Sink that also drops duplicates itself, keyed by the
// event's Source and ID, in the same durable write that accepts the event
// (a queue whose enqueue checks a dedupe id atomically). With
// Options.SinkDedupes the handler uses it instead of a Dedupe: one write
// per event instead of a claim, the write and a completion, and two
// concurrent deliveries of one event both get 202 at once (one of them a
// duplicate) instead of one waiting for the other.
type OnceSink interface {
	Sink
	// AcceptOnce is Accept, except that an event accepted before (same
	// Source and ID) is not stored again and reports duplicate=true.
	AcceptOnce(ctx context.Context, ev Event) (duplicate bool, err error)
}

// Dedupe is the handler's optional duplicate check, keyed by the event's
// Source and ID. The idempotency engine backs it in levee.
type Dedupe interface {
	// Claim reserves ev.Source+ev.ID before the sink is called. It returns
	// seen=true (done nil) when the event was accepted before: the handler
	// answers 202 without calling the sink. Otherwise the handler calls
	// done exactly once with the sink's result: nil marks the event seen,
	// non-nil releases the claim so a redelivery is handed to the sink
	// again (a failed sink never marks an event seen; a panicking sink
	// releases the claim before the panic goes on). done's context is
	// not canceled when the sender hangs up. An error wrapping ErrInFlight
	// means another request holds the claim (the handler answers 409 with
	// Retry-After); any other error, 503.
	Claim(ctx context.Context, ev Event) (done func(ctx context.Context, sinkErr error) error, seen bool, err error)
}

// Outcome classifies one request the handler answered.
type Outcome string

// Outcomes.
const (
	OutcomeAccepted  Outcome = "accepted"  // the sink accepted the event (202)
	OutcomeDuplicate Outcome = "duplicate" // the Dedupe had seen it; the sink was not called (202)
	OutcomeRejected  Outcome = "rejected"  // a 4xx: body, headers, signature, timestamp, JSON, id
	OutcomeInFlight  Outcome = "in_flight" // the same event is being accepted by another request (409)
	OutcomeFailed    Outcome = "failed"    // the Dedupe or the sink failed (503); nothing was marked seen
)

// Result describes one answered request, for logs and metrics.
type Result struct {
	Outcome Outcome
	// Status is the HTTP status sent; Type the problem slug (empty on 202).
	Status int
	Type   string
	// Event is the verified event; zero when verification failed.
	Event Event
	// Err is the cause of a rejection or failure; for OutcomeAccepted, a
	// failure of the Dedupe's done after the sink accepted (the event is
	// durable; the claim expires in the Dedupe's own time).
	Err error
}

// Options configures a [Handler]. The zero value is usable.
type Options struct {
	// Source names the sender in events (Event.Source) and dedupe keys;
	// "" means the scheme's name.
	Source string
	// MaxBodyBytes bounds the body; 0 means DefaultMaxBodyBytes. A
	// longer body is answered 413 without calling the scheme.
	MaxBodyBytes int64
	// IDPath, when set, takes the event id from the JSON body (see
	// ValidateIDPath and IDFromJSON) instead of the scheme's id header.
	IDPath string
	// Dedupe, when set, drops events whose id was accepted before. Every
	// event must then carry an id: one without is answered 422.
	Dedupe Dedupe
	// SinkDedupes says the sink (an OnceSink) drops events whose id was
	// accepted before, instead of Dedupe (which must then be nil). Every
	// event must then carry an id, as with Dedupe.
	SinkDedupes bool
	// RetryAfter is sent with 409 and 503; 0 means DefaultRetryAfter.
	RetryAfter time.Duration
	// Now is the clock Verify checks timestamps against; nil means
	// time.Now.
	Now func() time.Time
	// OnResult, when set, is called once per request after the answer was
	// written (in the request's goroutine).
	OnResult func(r *http.Request, res Result)
}

// Handler is the http.Handler that ingests webhooks of one scheme: read the
// body (bounded), verify, take the event id, dedupe, hand the event to the
// sink, then answer. It answers 202 with {"id":..., "status":"accepted"} or
// "duplicate" only once the sink accepted the event (now or before), and an
// application/problem+json document otherwise (see [ProblemType]). It does
// not check the method or the path: route it where it belongs.
type Handler struct {
	scheme Scheme
	sink   Sink
	opts   Options
}

// NewHandler returns the handler. It fails when scheme or sink is nil,
// MaxBodyBytes or RetryAfter is negative, or IDPath is set and invalid.
func NewHandler(scheme Scheme, sink Sink, opts Options) (*Handler, error) {
	switch {
	case scheme == nil:
		return nil, errors.New("webhook: NewHandler: nil Scheme")
	case sink == nil:
		return nil, errors.New("webhook: NewHandler: nil Sink")
	case opts.MaxBodyBytes < 0:
		return nil, fmt.Errorf("webhook: NewHandler: MaxBodyBytes is negative (%d)", opts.MaxBodyBytes)
	case opts.RetryAfter < 0:
		return nil, fmt.Errorf("webhook: NewHandler: RetryAfter is negative (%s)", opts.RetryAfter)
	}
	if opts.SinkDedupes {
		if opts.Dedupe != nil {
			return nil, errors.New("webhook: NewHandler: SinkDedupes with a Dedupe: choose one")
		}
		if _, ok := sink.(OnceSink); !ok {
			return nil, fmt.Errorf("webhook: NewHandler: SinkDedupes needs an OnceSink, got %T", sink)
		}
	}
	if opts.IDPath != "" {
		if err := ValidateIDPath(opts.IDPath); err != nil {
			return nil, fmt.Errorf("webhook: NewHandler: IDPath: %w", err)
		}
	}
	if opts.Source == "" {
		opts.Source = scheme.Name()
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.RetryAfter == 0 {
		opts.RetryAfter = DefaultRetryAfter
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Handler{scheme: scheme, sink: sink, opts: opts}, nil
}

// ServeHTTP implements http.Handler. In order: a body longer than
// MaxBodyBytes (by Content-Length or by reading) is 413; a body that cannot
// be read is 400 request-canceled; a Verify error is answered with its
// problem type (400, or 403 for a bad signature); with IDPath, a body that is
// not JSON is 400 and an absent id 422; with a Dedupe, an event without id is
// 422, an event being accepted by another request 409, a seen event 202
// "duplicate", a Dedupe error 503; a Sink error is 503 (and the Dedupe
// claim is released); otherwise 202 "accepted".
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	res := h.serve(w, r)
	if h.opts.OnResult != nil {
		h.opts.OnResult(r, res)
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) Result {
	body, err := readBody(r, h.opts.MaxBodyBytes)
	if err != nil {
		return h.fail(w, Event{}, err)
	}
	ev, err := h.scheme.Verify(r.Header, body, h.opts.Now())
	if err != nil {
		return h.fail(w, Event{}, err)
	}
	ev.Source = h.opts.Source
	if h.opts.IDPath != "" {
		if ev.ID, err = IDFromJSON(body, h.opts.IDPath); err != nil {
			return h.fail(w, ev, err)
		}
	}
	ctx := r.Context()
	if h.opts.SinkDedupes {
		if ev.ID == "" {
			return h.fail(w, ev, fmt.Errorf("%w: deduping needs an id and the event has none (the %s scheme's id header, or IDPath)", ErrMissingID, h.scheme.Name()))
		}
		dup, err := h.sink.(OnceSink).AcceptOnce(ctx, ev)
		switch {
		case err != nil:
			return h.fail(w, ev, fmt.Errorf("%w: sink: %w", ErrSink, err))
		case dup:
			writeAccepted(w, ev.ID, OutcomeDuplicate)
			return Result{Outcome: OutcomeDuplicate, Status: http.StatusAccepted, Event: ev}
		}
		writeAccepted(w, ev.ID, OutcomeAccepted)
		return Result{Outcome: OutcomeAccepted, Status: http.StatusAccepted, Event: ev}
	}
	var done func(context.Context, error) error
	if h.opts.Dedupe != nil {
		if ev.ID == "" {
			return h.fail(w, ev, fmt.Errorf("%w: deduping needs an id and the event has none (the %s scheme's id header, or IDPath)", ErrMissingID, h.scheme.Name()))
		}
		var seen bool
		done, seen, err = h.opts.Dedupe.Claim(ctx, ev)
		switch {
		case err != nil && errors.Is(err, ErrInFlight):
			return h.fail(w, ev, err)
		case err != nil:
			return h.fail(w, ev, fmt.Errorf("%w: dedupe: %w", ErrSink, err))
		case seen:
			writeAccepted(w, ev.ID, OutcomeDuplicate)
			return Result{Outcome: OutcomeDuplicate, Status: http.StatusAccepted, Event: ev}
		}
	}
	sinkErr, doneErr := h.accept(ctx, ev, done)
	if sinkErr != nil {
		return h.fail(w, ev, fmt.Errorf("%w: sink: %w", ErrSink, errors.Join(sinkErr, doneErr)))
	}
	writeAccepted(w, ev.ID, OutcomeAccepted)
	res := Result{Outcome: OutcomeAccepted, Status: http.StatusAccepted, Event: ev}
	if doneErr != nil {
		res.Err = fmt.Errorf("webhook: dedupe: marking the accepted event seen: %w", doneErr)
	}
	return res
}

// accept hands ev to the sink and reports the outcome to done (if any). A
// panicking sink releases the claim (done with an error) before the panic
// goes on, so it never holds the event until the claim expires.
func (h *Handler) accept(ctx context.Context, ev Event, done func(context.Context, error) error) (sinkErr, doneErr error) {
	if done == nil {
		return h.sink.Accept(ctx, ev), nil
	}
	finished := false
	defer func() {
		if !finished {
			_ = done(context.WithoutCancel(ctx), errors.New("webhook: the sink panicked"))
		}
	}()
	sinkErr = h.sink.Accept(ctx, ev)
	finished = true
	return sinkErr, done(context.WithoutCancel(ctx), sinkErr)
}

func (h *Handler) fail(w http.ResponseWriter, ev Event, err error) Result {
	slug, status := ProblemType(err)
	p := problem.Problem{Type: slug, Status: status, Title: titles[slug], Detail: err.Error()}
	outcome := OutcomeRejected
	switch slug {
	case TypeInFlight:
		outcome, p.RetryAfter = OutcomeInFlight, h.opts.RetryAfter
		p.Detail = "the same event is being accepted by another request; retry after the indicated delay"
	case TypeUnavailable:
		outcome, p.RetryAfter = OutcomeFailed, h.opts.RetryAfter
		p.Detail = "the event was not accepted; retry later" // the cause may be internal: keep it for OnResult
	}
	if ev.Source != "" {
		p.Extra = map[string]any{"source": ev.Source}
	}
	problem.Write(w, p)
	return Result{Outcome: outcome, Status: status, Type: slug, Event: ev, Err: err}
}

var titles = map[string]string{
	TypeHeaderMissing:    "Webhook header missing",
	TypeHeaderMalformed:  "Webhook header malformed",
	TypeSignatureInvalid: "Webhook signature does not match",
	TypeTimestampStale:   "Webhook timestamp too old",
	TypeTimestampFuture:  "Webhook timestamp in the future",
	TypeJSONMalformed:    "Webhook body is not valid JSON",
	TypeIDMissing:        "Webhook event id missing",
	TypeInFlight:         "The same webhook event is being accepted",
	TypeUnavailable:      "Webhook not accepted",
	TypeBodyTooLarge:     "Request body too large",
	TypeBodyUnreadable:   "Request body could not be read",
}

// ProblemType maps an error of this package to the problem type slug and
// HTTP status the Handler answers it with: ErrMissingHeader 400
// webhook-header-missing, ErrMalformedHeader 400 webhook-header-malformed,
// ErrBadSignature 403 webhook-signature-invalid, ErrStaleTimestamp 400
// webhook-timestamp-stale, ErrFutureTimestamp 400 webhook-timestamp-future,
// ErrBodyTooLarge 413 request-body-too-large, ErrMalformedJSON 400
// webhook-json-malformed, ErrMissingID 422 webhook-id-missing, ErrInFlight
// 409 webhook-in-flight, ErrSink 503 webhook-unavailable. Any other error
// (a body that could not be read) is 400 request-canceled.
func ProblemType(err error) (slug string, status int) {
	switch {
	case errors.Is(err, ErrSink): // first: whatever a sink's error wraps, it is a 503
		return TypeUnavailable, http.StatusServiceUnavailable
	case errors.Is(err, ErrInFlight):
		return TypeInFlight, http.StatusConflict
	case errors.Is(err, ErrMissingHeader):
		return TypeHeaderMissing, http.StatusBadRequest
	case errors.Is(err, ErrMalformedHeader):
		return TypeHeaderMalformed, http.StatusBadRequest
	case errors.Is(err, ErrBadSignature):
		return TypeSignatureInvalid, http.StatusForbidden
	case errors.Is(err, ErrStaleTimestamp):
		return TypeTimestampStale, http.StatusBadRequest
	case errors.Is(err, ErrFutureTimestamp):
		return TypeTimestampFuture, http.StatusBadRequest
	case errors.Is(err, ErrBodyTooLarge):
		return TypeBodyTooLarge, http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrMalformedJSON):
		return TypeJSONMalformed, http.StatusBadRequest
	case errors.Is(err, ErrMissingID):
		return TypeIDMissing, http.StatusUnprocessableEntity
	}
	return TypeBodyUnreadable, http.StatusBadRequest
}

// readBody reads at most limit bytes; a longer body (announced or read) is a
// *BodyTooLargeError, a read failure is wrapped with the package prefix.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &BodyTooLargeError{Limit: limit}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return []byte{}, nil
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1)); err != nil {
		return nil, fmt.Errorf("webhook: reading the body: %w", err)
	}
	if int64(buf.Len()) > limit {
		return nil, &BodyTooLargeError{Limit: limit}
	}
	return buf.Bytes(), nil
}

func writeAccepted(w http.ResponseWriter, id string, o Outcome) {
	b := []byte(`{"id":`)
	q, _ := json.Marshal(id) // a string always encodes
	b = append(b, q...)
	b = append(b, `,"status":"`...)
	b = append(b, o...)
	b = append(b, `"}`...)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(b)
}
