// Command sqsconsumer is an SQS-triggered Lambda function that fulfils
// orders once each: every message runs under its own idempotency key (the
// order id in its JSON body, so a producer that sent an order twice is
// deduplicated too), and the function answers a partial batch response,
// so one bad message is redelivered alone — and after the queue's
// maxReceiveCount lands in its dead-letter queue — while the rest of the
// batch is deleted. A message that fails is never marked done; a message
// still running at the function's timeout holds its key (levee's
// unknown-outcome rule) instead of being fulfilled twice.
//
// The event source mapping must set FunctionResponseTypes:
// [ReportBatchItemFailures]: template.yaml beside this file sets it up
// with the queue, its dead-letter queue and the table (sam build && sam
// deploy --guided).
// Environment: LEVEE_TABLE (required).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"

	"github.com/aws/aws-lambda-go/events"
	awslambda "github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
	"github.com/leveehq/levee/store/dynamodb"
)

func main() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		log.Fatal(err)
	}
	store, err := dynamodb.New(ddb.NewFromConfig(cfg), dynamodb.Options{Table: os.Getenv("LEVEE_TABLE")})
	if err != nil {
		log.Fatal(err)
	}
	h, err := newConsumer(store, fulfil)
	if err != nil {
		log.Fatal(err)
	}
	awslambda.Start(h.Handle)
}

// order is the message body.
type order struct {
	OrderID string `json:"order_id"`
	SKU     string `json:"sku"`
	Qty     int    `json:"qty"`
}

// errInvalid marks a message that can never succeed.
var errInvalid = errors.New("invalid order")

// fulfil stands in for the real work (reserve stock, ship).
func fulfil(_ context.Context, o order) error {
	if o.Qty <= 0 {
		return fmt.Errorf("%w: %s has quantity %d", errInvalid, o.OrderID, o.Qty)
	}
	return nil
}

// newConsumer keys each message by its order id and validates the SKU
// and quantity: the same order id with another content is refused
// (idempotency.ErrMismatch) rather than fulfilled.
func newConsumer(store idempotency.Store, work func(context.Context, order) error) (*lambda.SQSHandler, error) {
	return lambda.NewSQSHandler(func(ctx context.Context, m events.SQSMessage) error {
		var o order
		if err := json.Unmarshal([]byte(m.Body), &o); err != nil {
			return fmt.Errorf("%w: %v", errInvalid, err)
		}
		return work(ctx, o)
	}, lambda.BatchOptions{
		Config:         lambda.Config{Store: store},
		Scope:          "orders",
		KeyPath:        "order_id",
		ValidationPath: "[sku, qty]",
		OnRecordError: func(ctx context.Context, id string, err error) {
			slog.WarnContext(ctx, "message failed", "message_id", id, "err", err)
		},
	})
}
