package natsqueue_test

import (
	"context"
	"log"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/nats/natsqueue"
)

// Example wires the JetStream backend into a queue and a worker (it needs
// a server, so it is compiled, not run). The worker's Lease is the
// consumer's AckWait.
func Example() {
	ctx := context.Background()
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	backend, err := natsqueue.New(ctx, js, natsqueue.Options{AckWait: time.Minute}) // streams LEVEE_Q, LEVEE_DLQ
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	q, err := queue.New(backend, queue.Config{Name: "outbound"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := q.NewWorker(queue.WorkerConfig{Lease: time.Minute, AttemptTimeout: 30 * time.Second,
		Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			return nil // deliver d.Payload to d.Target
		})})
	if err != nil {
		log.Fatal(err)
	}
	_ = w.Start(ctx)
	defer w.Stop()
	if _, err := q.Enqueue(ctx, &queue.Message{Target: "https://partner.example/v1/orders", Payload: []byte(`{}`)}); err != nil {
		log.Fatal(err)
	}
}
