package lambda

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/awslabs/aws-lambda-go-api-proxy/core"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/problem"
)

// HTTPOptions configure NewHTTPHandler.
type HTTPOptions struct {
	// Config is the idempotency store and deadline rule. A nil Store
	// leaves the idempotency layer out (the handler then runs behind
	// Middleware only).
	Config
	// HTTP configures idempotency.Engine.Middleware exactly as on the
	// gateway or any net/http server: key header, methods, scope, tenant
	// header, fingerprinted headers, stored headers, failure policy.
	HTTP idempotency.HTTPOptions
	// Middleware wrap the idempotent handler from the outside, the first
	// outermost: ratelimit.Middleware belongs here, so that a denied
	// request claims no key. They are applied once, by NewHTTPHandler.
	Middleware []func(http.Handler) http.Handler
}

// HTTPHandler serves HTTP-shaped Lambda events — API Gateway REST (v1),
// HTTP API (v2), Application Load Balancer and Function URL — with a
// net/http handler behind levee's middleware. It implements
// aws-lambda-go's lambda.Handler; pass it to lambda.Start. It is safe for
// concurrent use.
type HTTPHandler struct {
	cfg     Config
	httpOpt idempotency.HTTPOptions
	next    http.Handler
	chain   http.Handler

	v1  core.RequestAccessor
	v2  core.RequestAccessorV2
	alb core.RequestAccessorALB
}

// NewHTTPHandler returns an HTTPHandler serving h. It fails only when h
// is nil.
func NewHTTPHandler(h http.Handler, opts HTTPOptions) (*HTTPHandler, error) {
	if h == nil {
		return nil, errors.New("lambda: NewHTTPHandler: the handler is nil")
	}
	a := &HTTPHandler{cfg: opts.Config, httpOpt: opts.HTTP, next: h}
	var chain http.Handler = h
	if a.cfg.Store != nil {
		chain = http.HandlerFunc(a.idempotent)
	}
	for i := len(opts.Middleware) - 1; i >= 0; i-- {
		chain = opts.Middleware[i](chain)
	}
	a.chain = chain
	return a, nil
}

// idempotent runs the idempotency middleware on an engine whose leases end
// at this invocation's deadline, in front of the deadline guard.
func (a *HTTPHandler) idempotent(w http.ResponseWriter, r *http.Request) {
	inv := a.cfg.begin(r.Context())
	var next http.Handler = a.next
	if !inv.guardAt.IsZero() {
		next = &guard{inv: &inv, next: a.next}
	}
	inv.engine.Middleware(a.httpOpt)(next).ServeHTTP(w, r)
}

// guard runs the handler against the invocation's margin. A handler still
// running at the margin is given up on: the key is held (an unknown
// outcome, reported to the middleware) and the invocation answers 504
// upstream-timeout at once.
type guard struct {
	inv  *invocation
	next http.Handler
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	buf := &bufferedWriter{header: make(http.Header)}
	_, err := run(r.Context(), g.inv, func(ctx context.Context) (struct{}, error) {
		g.next.ServeHTTP(buf, r.WithContext(ctx))
		return struct{}{}, nil
	})
	var de *DeadlineError
	if errors.As(err, &de) && de.NotStarted {
		// Nothing ran: a 503 releases the claim, the client retries.
		problem.Write(w, problem.Problem{Type: problem.RequestCanceled, Status: http.StatusServiceUnavailable, RetryAfter: time.Second,
			Title: "The function had no time left", Detail: err.Error()})
		return
	}
	if err != nil {
		idempotency.ReportUnknownOutcome(r.Context(), err)
		problem.Write(w, problem.Problem{Type: problem.UpstreamTimeout, Status: http.StatusGatewayTimeout,
			Title:  "The function ran out of time",
			Detail: "the handler was still running when the invocation's deadline came near; it may have taken effect, so this idempotency key is held until an operator resolves it"})
		return
	}
	h := w.Header()
	for k, vs := range buf.header {
		h[k] = vs
	}
	if buf.status == 0 {
		buf.status = http.StatusOK
	}
	w.WriteHeader(buf.status)
	_, _ = w.Write(buf.body.Bytes())
}

// bufferedWriter holds a guarded handler's response until it returns: a
// handler given up on keeps writing into its own buffer, never into the
// invocation's response.
type bufferedWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header { return b.header }

func (b *bufferedWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}

// EventKind names the kind of HTTP-shaped event Invoke recognised.
type EventKind uint8

// Event kinds, as DetectHTTPEvent reports them.
const (
	EventUnknown      EventKind = iota
	EventAPIGatewayV1           // API Gateway REST API (payload format 1.0)
	EventAPIGatewayV2           // HTTP API or Function URL (payload format 2.0)
	EventALB                    // Application Load Balancer target group
)

// String returns "apigateway-v1", "apigateway-v2", "alb" or "unknown".
func (k EventKind) String() string {
	switch k {
	case EventAPIGatewayV1:
		return "apigateway-v1"
	case EventAPIGatewayV2:
		return "apigateway-v2"
	case EventALB:
		return "alb"
	}
	return "unknown"
}

// DetectHTTPEvent tells which HTTP-shaped event payload is: an ALB event
// has requestContext.elb, payload format 2.0 (HTTP API, Function URL) has
// "version": "2.0", a REST API event has httpMethod. It returns
// EventUnknown, and an error wrapping ErrEvent, for anything else.
func DetectHTTPEvent(payload []byte) (EventKind, error) {
	var probe struct {
		Version        string `json:"version"`
		HTTPMethod     string `json:"httpMethod"`
		RequestContext struct {
			ELB json.RawMessage `json:"elb"`
		} `json:"requestContext"`
	}
	if err := json.Unmarshal(payload, &probe); err != nil {
		return EventUnknown, fmt.Errorf("%w: %v", ErrEvent, err)
	}
	switch {
	case len(probe.RequestContext.ELB) > 0:
		return EventALB, nil
	case probe.Version == "2.0":
		return EventAPIGatewayV2, nil
	case probe.HTTPMethod != "":
		return EventAPIGatewayV1, nil
	}
	return EventUnknown, fmt.Errorf("%w: not an API Gateway, ALB or Function URL event (no requestContext.elb, version 2.0 or httpMethod)", ErrEvent)
}

// Invoke serves one HTTP-shaped event and returns the matching response
// event (events.APIGatewayProxyResponse, APIGatewayV2HTTPResponse or
// ALBTargetGroupResponse) as JSON. Every outcome of the handler and the
// middleware — replays, 409, 422, 429, 503, problem+json — is a response,
// not an error. It returns an error wrapping ErrEvent for a payload that
// is not such an event or does not convert to an *http.Request; and an
// error when the handler wrote no status (an empty response).
func (a *HTTPHandler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	kind, err := DetectHTTPEvent(payload)
	if err != nil {
		return nil, err
	}
	switch kind {
	case EventAPIGatewayV1:
		var ev events.APIGatewayProxyRequest
		if err := json.Unmarshal(payload, &ev); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrEvent, err)
		}
		resp, err := a.ServeAPIGatewayV1(ctx, ev)
		if err != nil {
			return nil, err
		}
		return json.Marshal(resp)
	case EventAPIGatewayV2:
		var ev events.APIGatewayV2HTTPRequest
		if err := json.Unmarshal(payload, &ev); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrEvent, err)
		}
		resp, err := a.ServeAPIGatewayV2(ctx, ev)
		if err != nil {
			return nil, err
		}
		return json.Marshal(resp)
	default:
		var ev events.ALBTargetGroupRequest
		if err := json.Unmarshal(payload, &ev); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrEvent, err)
		}
		resp, err := a.ServeALB(ctx, ev)
		if err != nil {
			return nil, err
		}
		return json.Marshal(resp)
	}
}

// ServeAPIGatewayV1 serves an API Gateway REST API event; it is Invoke for
// a decoded event (with lambda.Start(h.ServeAPIGatewayV1) the runtime
// decodes it). Errors as Invoke's.
func (a *HTTPHandler) ServeAPIGatewayV1(ctx context.Context, ev events.APIGatewayProxyRequest) (events.APIGatewayProxyResponse, error) {
	r, err := a.v1.EventToRequestWithContext(ctx, ev)
	if err != nil {
		return events.APIGatewayProxyResponse{}, fmt.Errorf("%w: converting the API Gateway event to a request: %v", ErrEvent, err)
	}
	w := core.NewProxyResponseWriter()
	a.chain.ServeHTTP(w, r)
	resp, err := w.GetProxyResponse()
	if err != nil {
		return resp, fmt.Errorf("lambda: the handler's response: %w", err)
	}
	return resp, nil
}

// ServeAPIGatewayV2 serves an HTTP API or Function URL event (payload
// format 2.0; events.LambdaFunctionURLRequest has the same JSON). Errors
// as Invoke's.
func (a *HTTPHandler) ServeAPIGatewayV2(ctx context.Context, ev events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
	r, err := a.v2.EventToRequestWithContext(ctx, ev)
	if err != nil {
		return events.APIGatewayV2HTTPResponse{}, fmt.Errorf("%w: converting the HTTP API event to a request: %v", ErrEvent, err)
	}
	w := core.NewProxyResponseWriterV2()
	a.chain.ServeHTTP(w, r)
	resp, err := w.GetProxyResponse()
	if err != nil {
		return resp, fmt.Errorf("lambda: the handler's response: %w", err)
	}
	return resp, nil
}

// ServeALB serves an Application Load Balancer event. The response
// carries multiValueHeaders when the request did (the target group has
// multi-value headers on), headers otherwise, as the ALB requires.
// Errors as Invoke's.
func (a *HTTPHandler) ServeALB(ctx context.Context, ev events.ALBTargetGroupRequest) (events.ALBTargetGroupResponse, error) {
	r, err := a.alb.EventToRequestWithContext(ctx, ev)
	if err != nil {
		return events.ALBTargetGroupResponse{}, fmt.Errorf("%w: converting the ALB event to a request: %v", ErrEvent, err)
	}
	if len(ev.MultiValueHeaders) > 0 && r.Host == "" {
		// The adapter takes the host from the single-value headers only.
		if hs := ev.MultiValueHeaders["host"]; len(hs) > 0 {
			r.Host = hs[0]
		}
	}
	w := core.NewProxyResponseWriterALB()
	a.chain.ServeHTTP(w, r)
	resp, err := w.GetProxyResponse()
	if err != nil {
		return resp, fmt.Errorf("lambda: the handler's response: %w", err)
	}
	resp.StatusDescription = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	if len(ev.MultiValueHeaders) == 0 {
		resp.Headers = make(map[string]string, len(resp.MultiValueHeaders))
		for k, vs := range resp.MultiValueHeaders {
			resp.Headers[k] = strings.Join(vs, ", ")
		}
		resp.MultiValueHeaders = nil
	}
	return resp, nil
}
