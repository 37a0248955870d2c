package tracing_test

import (
	"context"
	"fmt"
	"net/http"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/resilience/tracing"
)

func Example() {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer tp.Shutdown(context.Background())

	exec, _ := resilience.New(resilience.Settings{Name: "crm", Observer: tracing.New(tp)})
	resp, _ := exec.Do(context.Background(), &resilience.Call{Method: "GET", Send: func(context.Context, *resilience.Call) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	}})
	resp.Body.Close()
	for _, s := range sr.Ended() {
		fmt.Println(s.Name(), s.SpanKind())
	}
	// Output: GET client
}
