package dynamodb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	awsdynamodb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/dynamodb"
)

// Wiring the store into an idempotency engine, as in an AWS Lambda
// function: the SDK takes region and credentials from the environment.
// It needs a real table, so it has no Output.
func Example() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		log.Fatal(err)
	}
	store, err := dynamodb.New(awsdynamodb.NewFromConfig(cfg), dynamodb.Options{Table: "levee-idempotency"})
	if err != nil {
		log.Fatal(err)
	}
	engine := idempotency.New(store, idempotency.Options{})

	charge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"ch_1"}`))
	})
	// Keep stored bodies under DynamoDB's 400 KB item limit.
	h := engine.Middleware(idempotency.HTTPOptions{Scope: "charges", MaxStoredBody: 300 << 10})(charge)
	http.Handle("POST /charges", h)
}

// Creating the table once, at deploy time (or from infrastructure as code
// with the same schema: partition key "pk" of type S, TTL on "ttl").
func ExampleCreateTable() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := dynamodb.CreateTable(ctx, awsdynamodb.NewFromConfig(cfg), dynamodb.Options{Table: "levee-idempotency"}); err != nil {
		log.Fatal(err)
	}
}

// A table shared with other data (single-table design): the store's items
// get the partition key "IDEMPOTENCY#"+key and the sort key "levee" in a
// table keyed (PK, SK), with TTL on "expiresAt".
func ExampleOptions_singleTable() {
	opts := dynamodb.Options{
		Table:              "app",
		PartitionKey:       "PK",
		PartitionKeyPrefix: "IDEMPOTENCY#",
		SortKey:            "SK",
		SortKeyValue:       "levee",
		TTLAttribute:       "expiresAt",
	}
	_, err := dynamodb.New(awsdynamodb.New(awsdynamodb.Options{Region: "us-east-1"}), opts)
	fmt.Println(err)
	// Output: <nil>
}

// Labelling store failures by their throttle reason, for metrics: the
// engine's *idempotency.StoreError wraps the store's *ThrottledError.
func ExampleThrottledError() {
	err := fmt.Errorf("idempotency: claim: %w", &dynamodb.ThrottledError{
		Op: "claim", Reason: "ProvisionedThroughputExceededException", Attempts: 3, Err: errors.New("api error"),
	})
	var te *dynamodb.ThrottledError
	if errors.As(err, &te) {
		fmt.Println("throttled:", te.Reason, errors.Is(err, dynamodb.ErrThrottled))
	}
	// Output: throttled: ProvisionedThroughputExceededException true
}
