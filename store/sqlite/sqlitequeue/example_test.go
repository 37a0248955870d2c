package sqlitequeue_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

// Example opens the embedded queue file and enqueues a webhook event twice
// under one dedupe id: it is stored once.
func Example() {
	dir, err := os.MkdirTemp("", "levee-sqlitequeue")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	backend, err := sqlitequeue.Open(filepath.Join(dir, "levee.db"), sqlitequeue.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	q, err := queue.New(backend, queue.Config{Name: "stripe"})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for range 2 {
		res, err := q.Enqueue(ctx, &queue.Message{DedupeID: "evt_1NG8Du2eZvKYlo2C", Payload: []byte(`{}`)})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("duplicate:", res[0].Duplicate)
	}
	// Reclaim the space of dedupe windows that ended (run periodically).
	n, err := backend.DeleteExpired(ctx, time.Now().Add(48*time.Hour), 1000)
	fmt.Println("expired entries deleted:", n, err)
	// Output:
	// duplicate: false
	// duplicate: true
	// expired entries deleted: 1 <nil>
}
