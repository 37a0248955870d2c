package idempotency_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/memory"
)

// A payments handler wrapped in three lines: a retried POST with the same
// Idempotency-Key gets the stored response instead of a second charge.
func ExampleEngine_Middleware() {
	charges := 0
	pay := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"charge":%d}`, charges)
	})

	engine := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	handler := engine.Middleware(idempotency.HTTPOptions{Required: true})(pay)

	for i := 0; i < 2; i++ {
		req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{"amount":100}`))
		req.Header.Set("Idempotency-Key", "order-42")
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, req)
		fmt.Println(w.Code, w.Body.String(), "replayed:", w.Header().Get("Idempotent-Replayed") == "true")
	}
	fmt.Println("charges executed:", charges)
	// Output:
	// 201 {"charge":1} replayed: false
	// 201 {"charge":1} replayed: true
	// charges executed: 1
}

// Do gives a plain function — a queue consumer, a cron job — the same
// at-most-once guarantee without HTTP.
func ExampleEngine_Do() {
	engine := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	msg := []byte(`{"order":"42","amount":100}`)
	send := func(ctx context.Context) ([]byte, error) {
		fmt.Println("sending the confirmation e-mail")
		return []byte("sent"), nil
	}
	for i := 0; i < 3; i++ { // the broker redelivers the message twice
		res, err := engine.Do(context.Background(), "email:order-42", idempotency.FingerprintOf(msg), send)
		fmt.Println(string(res.Value), res.Replayed, err)
	}
	// Output:
	// sending the confirmation e-mail
	// sent false <nil>
	// sent true <nil>
	// sent true <nil>
}

// A proxy that sent the whole request upstream and then lost the answer
// cannot know whether the charge happened. It reports that; the key is
// held, and the client's retry is refused instead of charging again.
func ExampleReportUnknownOutcome() {
	charges := 0
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++ // the upstream received the request...
		// ...and the connection dropped before its answer arrived.
		idempotency.ReportUnknownOutcome(r.Context(), errors.New("upstream connection lost after the request was sent"))
		w.WriteHeader(http.StatusBadGateway)
	})
	engine := idempotency.New(memory.New(memory.Options{}), idempotency.Options{
		OnEvent: func(_ context.Context, ev idempotency.Event) { fmt.Println("event:", ev.Outcome) },
	})
	handler := engine.Middleware(idempotency.HTTPOptions{})(proxy)
	for i := 0; i < 2; i++ {
		req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{"amount":100}`))
		req.Header.Set("Idempotency-Key", "order-42")
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, req)
		fmt.Println(w.Code)
	}
	fmt.Println("charges sent upstream:", charges)
	// Output:
	// event: unknown
	// 502
	// event: held
	// 409
	// charges sent upstream: 1
}

// A function that cannot tell whether its effect happened wraps its error
// with UnknownOutcome: Do holds the key, and later calls do not run it.
func ExampleUnknownOutcome() {
	engine := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	fp := idempotency.FingerprintOf([]byte(`{"order":"42"}`))
	send := func(ctx context.Context) ([]byte, error) {
		fmt.Println("calling the payment provider")
		return nil, idempotency.UnknownOutcome(errors.New("read timeout after the request was sent"))
	}
	for i := 0; i < 2; i++ {
		_, err := engine.Do(context.Background(), "pay:order-42", fp, send)
		var held *idempotency.OutcomeUnknownError
		fmt.Println(errors.Is(err, idempotency.ErrOutcomeUnknown), errors.As(err, &held))
	}
	// Output:
	// calling the payment provider
	// true false
	// true true
}

// An operator finds the key a client's request was stored under, looks at
// it, and resolves it with the outcome found at the provider: the client's
// retry then gets that response instead of a second charge.
func ExampleEngine_Resolve() {
	engine := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idempotency.ReportUnknownOutcome(r.Context(), errors.New("upstream timeout"))
		w.WriteHeader(http.StatusGatewayTimeout)
	})
	handler := engine.Middleware(idempotency.HTTPOptions{Scope: "charges", TenantHeader: "Authorization"})(proxy)
	post := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{"amount":100}`))
		req.Header.Set("Idempotency-Key", "order-42")
		req.Header.Set("Authorization", "Bearer sk_test_tenant_a")
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, req)
		return w
	}
	post() // 504: the key is now held

	ctx := context.Background()
	key, _ := idempotency.KeyFor("charges", "Bearer sk_test_tenant_a", "order-42")
	rec, _ := engine.Inspect(ctx, key)
	fmt.Println("state:", rec.State)

	found := idempotency.Response{Status: http.StatusCreated, Body: []byte(`{"id":"ch_1"}`),
		Header: http.Header{"Content-Type": {"application/json"}}}
	if err := engine.Resolve(ctx, key, idempotency.Resolution{Token: rec.Token, Response: &found}); err != nil {
		fmt.Println(err)
	}
	w := post()
	fmt.Println(w.Code, w.Body.String(), "replayed:", w.Header().Get("Idempotent-Replayed"))
	// Output:
	// state: unknown
	// 201 {"id":"ch_1"} replayed: true
}
