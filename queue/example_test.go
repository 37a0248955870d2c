package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

// Enqueue durably, deliver with retries, and operate the dead-letter queue.
func Example() {
	dir, err := os.MkdirTemp("", "levee-queue-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	backend, err := sqlitequeue.Open(filepath.Join(dir, "queue.db"), sqlitequeue.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	q, err := queue.New(backend, queue.Config{Name: "webhooks"})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// The partner answers 503 three times in a row, then recovers.
	down := true
	delivered := make(chan string, 1)
	w, err := q.NewWorker(queue.WorkerConfig{
		MaxAttempts: 3,
		BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond,
		Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			if down {
				return &queue.HTTPError{Status: 503, Body: []byte("maintenance")}
			}
			delivered <- string(d.Payload)
			return nil
		}),
	})
	if err != nil {
		log.Fatal(err)
	}

	res, err := q.Enqueue(ctx, &queue.Message{ID: "evt_1", Target: "https://partner.example/hook", Payload: []byte(`{"paid":100}`)})
	if err != nil {
		log.Fatal(err)
	}
	_ = w.Start(ctx)
	var dead *queue.DeadMessage
	for dead == nil {
		if dead, err = q.Get(ctx, res[0].ID); err != nil && !errors.Is(err, queue.ErrNotFound) {
			log.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	w.Stop()
	fmt.Println("dead:", dead.ID, dead.Reason, dead.Attempts, "attempts")
	for _, a := range dead.History {
		fmt.Printf("  attempt %d: %d %s\n", a.N, a.Status, a.Body)
	}

	down = false
	n, err := q.Replay(ctx, queue.DeadFilter{IDs: []string{"evt_1"}})
	if err != nil {
		log.Fatal(err)
	}
	_ = w.Start(ctx)
	defer w.Stop()
	fmt.Println("replayed:", n, "delivered:", <-delivered)
	// Output:
	// dead: evt_1 max_attempts 3 attempts
	//   attempt 1: 503 maintenance
	//   attempt 2: 503 maintenance
	//   attempt 3: 503 maintenance
	// replayed: 1 delivered: {"paid":100}
}
