// Package tracing is a resilience.Observer that makes one OpenTelemetry
// client span per attempt, following the HTTP client semantic
// conventions: span name the method, attributes http.request.method,
// http.request.resend_count (on resends only, as the conventions say),
// http.response.status_code, server.address, server.port, url.full (from
// the request, without its query) and error.type, plus
// levee.upstream. Status is Error for an error or a status of 400 and
// above. Policy events (retries, pauses, breaker transitions) become span
// events on the caller's span, the parent of the attempts.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/leveehq/levee/resilience"
)

// ScopeName is the instrumentation scope of the tracer.
const ScopeName = "github.com/leveehq/levee/resilience"

// Observer makes the spans. Safe for concurrent use.
type Observer struct {
	tracer trace.Tracer
}

// New returns an Observer using tp's tracer (otel.GetTracerProvider()
// is the usual argument). A nil tp makes no spans.
func New(tp trace.TracerProvider) *Observer {
	if tp == nil {
		return &Observer{}
	}
	return &Observer{tracer: tp.Tracer(ScopeName)}
}

var _ resilience.Observer = (*Observer)(nil)

func noEnd(resilience.Outcome) {}

// Attempt implements resilience.Observer: it starts the attempt's span,
// ended with the outcome.
func (o *Observer) Attempt(ctx context.Context, a resilience.AttemptInfo) (context.Context, func(resilience.Outcome)) {
	if o.tracer == nil {
		return ctx, noEnd
	}
	attrs := make([]attribute.KeyValue, 0, 6)
	attrs = append(attrs, attribute.String("http.request.method", a.Method), attribute.String("levee.upstream", a.Upstream))
	if a.Attempt > 0 {
		attrs = append(attrs, attribute.Int("http.request.resend_count", a.Attempt))
	}
	if r := a.Request; r != nil && r.URL != nil {
		host, port := r.URL.Hostname(), r.URL.Port()
		if port == "" {
			switch r.URL.Scheme {
			case "http":
				port = "80"
			case "https":
				port = "443"
			}
		}
		attrs = append(attrs, attribute.String("server.address", host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int("server.port", p))
		}
		u := *r.URL
		u.RawQuery, u.User = "", nil
		attrs = append(attrs, attribute.String("url.full", u.String()))
	}
	ctx, span := o.tracer.Start(ctx, a.Method, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx, func(out resilience.Outcome) {
		if out.Err != nil {
			span.SetAttributes(attribute.String("error.type", errorType(out.Err)))
			span.RecordError(out.Err)
			span.SetStatus(codes.Error, out.Err.Error())
		} else {
			span.SetAttributes(attribute.Int("http.response.status_code", out.StatusCode))
			if out.StatusCode >= 400 {
				span.SetAttributes(attribute.String("error.type", strconv.Itoa(out.StatusCode)))
				span.SetStatus(codes.Error, "")
			}
		}
		span.End()
	}
}

// errorType names an error for error.type: the kind of timeout or
// network failure when known, else its Go type.
func errorType(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return fmt.Sprintf("%T", err)
}

// Event implements resilience.Observer: the event goes on the caller's
// span as "levee.<kind>".
func (o *Observer) Event(ctx context.Context, e resilience.Event) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{attribute.String("levee.upstream", e.Upstream)}
	if e.Reason != "" {
		attrs = append(attrs, attribute.String("levee.reason", e.Reason))
	}
	if e.Delay > 0 {
		attrs = append(attrs, attribute.Float64("levee.delay_seconds", e.Delay.Seconds()))
	}
	if e.Kind == resilience.EventBreakerTransition {
		attrs = append(attrs, attribute.String("levee.breaker.from", e.From.String()), attribute.String("levee.breaker.to", e.To.String()))
	}
	span.AddEvent("levee."+e.Kind.String(), trace.WithAttributes(attrs...))
}
