package postgres_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/postgres"
)

// Example wires the PostgreSQL store into an idempotency engine: one pool
// per replica, Migrate at start-up (safe from every replica at once), and a
// periodic DeleteExpired to reclaim the space of expired records.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	store, err := postgres.New(pool, postgres.Options{}) // table levee.idempotency_keys
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}

	// Expiry is logical; this only keeps the table small.
	go func() {
		for range time.Tick(time.Minute) {
			for {
				n, err := store.DeleteExpired(ctx, time.Now(), 5000)
				if err != nil || n < 5000 {
					break
				}
			}
		}
	}()

	engine := idempotency.New(store, idempotency.Options{})

	charge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, `{"id":"ch_1"}`)
	})
	mux := http.NewServeMux()
	mux.Handle("POST /charges", engine.Middleware(idempotency.HTTPOptions{Scope: "charges"})(charge))
	log.Fatal(http.ListenAndServe(":8080", mux))
}
