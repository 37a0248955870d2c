package sqsqueue_test

import (
	"context"
	"fmt"
	"log"

	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqs/sqsqueue"
)

// The delivery queue "webhooks" on the SQS queues "levee-webhooks" and
// "levee-webhooks-dlq" (see deploy/aws/cloudformation/sqs-queue.yaml). New
// makes no request, so this runs without AWS.
func Example() {
	client := sqs.New(sqs.Options{Region: "us-east-1"}) // or sqs.NewFromConfig(cfg)
	b, err := sqsqueue.New(client, sqsqueue.Options{Prefix: "levee-"})
	if err != nil {
		log.Fatal(err)
	}
	q, err := queue.New(b, queue.Config{Name: "webhooks"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := q.NewWorker(queue.WorkerConfig{
		MaxAttempts: 8,
		Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			return nil // deliver d.Payload to d.Target
		}),
	})
	fmt.Println(w != nil, err)
	// Output: true <nil>
}
