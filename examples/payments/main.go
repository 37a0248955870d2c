// Command payments is a small payments API that uses levee as a library:
// the idempotency middleware on the embedded SQLite store, so a retried
// POST /v1/charges never charges twice.
//
//	go run ./examples/payments            # listens on 127.0.0.1:3000, store payments.db
//	curl -i -X POST localhost:3000/v1/charges -H 'Idempotency-Key: k1' -d '{"amount":100}'
//	curl -i -X POST localhost:3000/v1/charges -H 'Idempotency-Key: k1' -d '{"amount":100}'   # replayed
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/sqlite"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:3000", "listen address")
	db := flag.String("db", "payments.db", "SQLite file for idempotency records")
	flag.Parse()

	store, err := sqlite.Open(*db, sqlite.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	// The three lines that matter: an engine on a store, the middleware on a handler.
	engine := idempotency.New(store, idempotency.Options{Retention: 24 * time.Hour})
	charges := engine.Middleware(idempotency.HTTPOptions{Required: true, TenantHeader: "Authorization"})
	http.Handle("POST /v1/charges", charges(http.HandlerFunc(charge)))

	log.Printf("payments API on http://%s (idempotency records in %s)", *addr, *db)
	srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

var next atomic.Int64

func charge(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Amount int `json:"amount"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Amount <= 0 {
		http.Error(w, `{"error":"amount must be a positive integer"}`, http.StatusBadRequest)
		return
	}
	id := next.Add(1)
	log.Printf("charging %d (charge ch_%d)", in.Amount, id) // runs once per idempotency key
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":"ch_%d","amount":%d,"status":"succeeded"}`+"\n", id, in.Amount)
}
