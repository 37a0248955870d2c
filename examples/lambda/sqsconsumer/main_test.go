package main

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/aws/aws-lambda-go/events"

	"github.com/leveehq/levee/store/memory"
)

func TestPartialBatch(t *testing.T) {
	var mu sync.Mutex
	var done []string
	h, err := newConsumer(memory.New(memory.Options{}), func(ctx context.Context, o order) error {
		if err := fulfil(ctx, o); err != nil {
			return err
		}
		mu.Lock()
		done = append(done, o.OrderID)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	batch := events.SQSEvent{Records: []events.SQSMessage{
		{MessageId: "m1", Body: `{"order_id":"o1","sku":"A","qty":1}`},
		{MessageId: "m2", Body: `{"order_id":"o2","sku":"B","qty":0}`}, // invalid: redelivered, then DLQ
		{MessageId: "m3", Body: `{"order_id":"o1","sku":"A","qty":1}`}, // the producer sent o1 twice
		{MessageId: "m4", Body: `{"order_id":"o1","sku":"C","qty":9}`}, // o1 reused for another order
		{MessageId: "m5", Body: `not json`},                            // no key
		{MessageId: "m6", Body: `{"order_id":"o3","sku":"A","qty":2}`},
	}}
	resp, err := h.Handle(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for _, f := range resp.BatchItemFailures {
		failed = append(failed, f.ItemIdentifier)
	}
	if !slices.Equal(failed, []string{"m2", "m4", "m5"}) || !slices.Equal(done, []string{"o1", "o3"}) {
		t.Fatalf("failed %v, fulfilled %v", failed, done)
	}
}
