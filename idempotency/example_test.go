package idempotency_test

import (
	"context"
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
