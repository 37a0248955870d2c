package lambda_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/aws-lambda-go/events"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
	"github.com/leveehq/levee/store/memory"
)

// An HTTP API (or Function URL) event served by a net/http handler behind
// the idempotency middleware: the retry is replayed, not executed. In a
// function, pass h to lambda.Start from aws-lambda-go.
func ExampleNewHTTPHandler() {
	charges := 0
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		charges++
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"charge":"ch_%d"}`, charges)
	})
	h, err := lambda.NewHTTPHandler(api, lambda.HTTPOptions{
		Config: lambda.Config{Store: memory.New(memory.Options{})}, // store/dynamodb on AWS
		HTTP:   idempotency.HTTPOptions{Required: true},
	})
	if err != nil {
		panic(err)
	}
	event := []byte(`{"version":"2.0","rawPath":"/charges","headers":{"idempotency-key":"order-42","content-type":"application/json"},
		"requestContext":{"http":{"method":"POST","path":"/charges","sourceIp":"192.0.2.1"}},"body":"{\"amount\":100}"}`)
	for range 2 {
		out, err := h.Invoke(context.Background(), event)
		if err != nil {
			panic(err)
		}
		var resp events.APIGatewayV2HTTPResponse
		_ = json.Unmarshal(out, &resp)
		fmt.Println(resp.StatusCode, resp.Body, "replayed:", resp.Headers["Idempotent-Replayed"] == "true")
	}
	fmt.Println("charges:", charges)
	// Output:
	// 201 {"charge":"ch_1"} replayed: false
	// 201 {"charge":"ch_1"} replayed: true
	// charges: 1
}

// A typed handler keyed by a JMESPath expression over its event, with
// the amount as the validation path: the duplicate gets the stored
// result, a reused key with another amount is refused.
func ExampleNewIdempotentHandler() {
	type Payment struct {
		OrderID string `json:"order_id"`
		Amount  int    `json:"amount"`
	}
	type Receipt struct {
		Charge string `json:"charge"`
	}
	charges := 0
	pay := func(ctx context.Context, p Payment) (Receipt, error) {
		charges++
		return Receipt{Charge: fmt.Sprintf("ch_%d", charges)}, nil
	}
	h, err := lambda.NewIdempotentHandler(pay, lambda.HandlerOptions{
		Config:  lambda.Config{Store: memory.New(memory.Options{})},
		KeyPath: "order_id", ValidationPath: "amount",
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	r1, _ := h.Handle(ctx, Payment{OrderID: "o-1", Amount: 100})
	r2, _ := h.Handle(ctx, Payment{OrderID: "o-1", Amount: 100})
	_, err = h.Handle(ctx, Payment{OrderID: "o-1", Amount: 500})
	fmt.Println(r1.Charge, r2.Charge, errors.Is(err, idempotency.ErrMismatch), "charges:", charges)
	// Output: ch_1 ch_1 true charges: 1
}

// An SQS batch with one bad message: the partial batch response names
// only it, so SQS deletes the others and redelivers it alone.
func ExampleNewSQSHandler() {
	consume := func(ctx context.Context, m events.SQSMessage) error {
		if m.Body == "poison" {
			return errors.New("cannot parse")
		}
		return nil
	}
	h, err := lambda.NewSQSHandler(consume, lambda.BatchOptions{Config: lambda.Config{Store: memory.New(memory.Options{})}})
	if err != nil {
		panic(err)
	}
	resp, _ := h.Handle(context.Background(), events.SQSEvent{Records: []events.SQSMessage{
		{MessageId: "m1", Body: "ok"}, {MessageId: "m2", Body: "poison"}, {MessageId: "m3", Body: "ok"},
	}})
	fmt.Println(resp.BatchItemFailures)
	// Output: [{m2}]
}
