package pgqueue_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/postgres/pgqueue"
)

// Example wires the PostgreSQL backend into a queue and a worker (it needs
// a server, so it is compiled, not run).
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	backend, err := pgqueue.New(pool, pgqueue.Options{}) // schema "levee"
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	if err := backend.Migrate(ctx); err != nil { // safe from every replica at once
		log.Fatal(err)
	}
	q, err := queue.New(backend, queue.Config{Name: "outbound"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := q.NewWorker(queue.WorkerConfig{Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
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
