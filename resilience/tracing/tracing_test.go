package tracing_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/resilience/tracing"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func attr(kvs []attribute.KeyValue, key string) (attribute.Value, bool) {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func TestOneSpanPerAttemptWithResendCount(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer tp.Shutdown(context.Background())
	e, err := resilience.New(resilience.Settings{Name: "crm", Observer: tracing.New(tp),
		Retry: resilience.RetrySettings{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, parent := tp.Tracer("test").Start(context.Background(), "caller")
	n := 0
	req, _ := http.NewRequest("GET", "https://api.example.com/v1/x?secret=1", nil)
	send := func(context.Context, *resilience.Call) (*http.Response, error) {
		n++
		code := 503
		if n == 3 {
			code = 200
		}
		return &http.Response{StatusCode: code, Body: http.NoBody, Header: http.Header{}}, nil
	}
	resp, err := e.Do(ctx, &resilience.Call{Method: "GET", Replayable: true, Send: send, Request: req})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	parent.End()
	spans := sr.Ended()
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 3 attempts + the caller", len(spans))
	}
	for i, s := range spans[:3] {
		if s.Name() != "GET" || s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("span %d: name %q, parent %v", i, s.Name(), s.Parent().SpanID())
		}
		rc, ok := attr(s.Attributes(), "http.request.resend_count")
		if (i == 0 && ok) || (i > 0 && (!ok || rc.AsInt64() != int64(i))) {
			t.Errorf("span %d: resend_count %v, %v", i, rc.AsInt64(), ok)
		}
		sc, _ := attr(s.Attributes(), "http.response.status_code")
		want := map[bool]int64{true: 200, false: 503}[i == 2]
		if sc.AsInt64() != want {
			t.Errorf("span %d: status %d, want %d", i, sc.AsInt64(), want)
		}
		if (s.Status().Code == codes.Error) != (i < 2) {
			t.Errorf("span %d: status %v", i, s.Status())
		}
		if u, _ := attr(s.Attributes(), "url.full"); u.AsString() != "https://api.example.com/v1/x" {
			t.Errorf("url.full %q", u.AsString())
		}
	}
	var retries int
	for _, ev := range spans[3].Events() {
		if ev.Name == "levee.retry" {
			retries++
		}
	}
	if retries != 2 {
		t.Errorf("%d levee.retry events on the caller's span, want 2", retries)
	}
}
