package gateway_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/leveehq/levee/internal/poll"
)

// TestCleanupDeletesExpiredRows: the gateway deletes idempotency records
// past their retention and the queue's ended dedupe windows from the
// durable stores by itself (store.cleanup_interval), and keeps the rows
// still in their retention. The rows are counted in the store.
func TestCleanupDeletesExpiredRows(t *testing.T) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			var store string
			var count func(table string) int
			switch name {
			case "sqlite":
				dir := t.TempDir()
				path := filepath.Join(dir, "levee.db")
				store = fmt.Sprintf("store: {type: sqlite, cleanup_interval: 1s, sqlite: {path: %s}}\n", path)
				count = func(table string) int {
					t.Helper()
					file := path
					if table == "levee_queue_dedupe" {
						file = filepath.Join(dir, "levee-queue.db")
					}
					db, err := sql.Open("sqlite", "file:"+file+"?mode=ro")
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					var n int
					if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
						t.Fatal(err)
					}
					return n
				}
			case "postgres":
				pool, schema := pgSchema(t)
				store = fmt.Sprintf("store: {type: postgres, cleanup_interval: 1s, postgres: {url: %q, schema: %s}}\nqueue_store: {type: postgres, postgres: {schema: %s}}\n", postgresURL(), schema, schema)
				count = func(table string) int {
					t.Helper()
					if table == "levee_queue_dedupe" {
						table = "queue_dedupe"
					}
					var n int
					if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM "`+schema+`".`+table).Scan(&n); err != nil {
						t.Fatal(err)
					}
					return n
				}
			}
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) }))
			defer up.Close()
			g := startGateway(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
%sroutes:
  - name: short
    match: {path: /v1/short}
    upstream: %s
    idempotency: {required: true, lease: 1s, retention: 1s}
  - name: long
    match: {path: /v1/long}
    upstream: %s
    idempotency: {required: true}
queues:
  - name: events
    target: %s
webhooks:
  - name: provider
    path: /webhooks/provider
    scheme: standard-webhooks
    secrets: [%s]
    queue: events
    dedupe_retention: 1s
`, testAdminToken, store, up.URL, up.URL, up.URL, testWebhookSecret))
			for i := range 3 {
				for _, route := range []string{"short", "long"} {
					if resp, _ := send(t, "POST", g.base+"/v1/"+route, "{}", "Idempotency-Key", fmt.Sprintf("k-%s-%d", route, i)); resp.StatusCode != http.StatusCreated {
						t.Fatalf("POST /v1/%s: %d", route, resp.StatusCode)
					}
				}
				resp, err := http.DefaultClient.Do(signedWebhook(t, g.base, fmt.Sprintf("evt_%d", i), "{}", time.Now()))
				if err != nil {
					t.Fatal(err)
				}
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("webhook %d: %d", i, resp.StatusCode)
				}
			}
			if n := count("levee_queue_dedupe"); n != 3 {
				t.Fatalf("%d dedupe entries after 3 webhooks, want 3", n)
			}
			if !poll.Wait(20*time.Second, func() bool {
				return metric(t, g, "levee_store_expired_deleted_total", "store", "idempotency") >= 3 &&
					metric(t, g, "levee_store_expired_deleted_total", "store", "queue") >= 3
			}) {
				t.Fatalf("deleted: idempotency %v, queue %v; want at least 3 each",
					metric(t, g, "levee_store_expired_deleted_total", "store", "idempotency"), metric(t, g, "levee_store_expired_deleted_total", "store", "queue"))
			}
			if n := count("levee_queue_dedupe"); n != 0 {
				t.Errorf("%d dedupe entries left after their window ended, want 0", n)
			}
			// What stays: the long route's three records (24h) and the
			// idempotent consumer's records of the three deliveries (7 days)
			// and whatever else is still in its retention; none of the short
			// route's.
			var short int
			for i := range 3 {
				resp, _ := send(t, "POST", g.base+"/v1/short", "{}", "Idempotency-Key", fmt.Sprintf("k-short-%d", i))
				if resp.Header.Get("Idempotent-Replayed") == "true" {
					short++
				}
			}
			if short != 0 {
				t.Errorf("%d short-route keys replayed after their retention, want 0", short)
			}
			for i := range 3 {
				resp, _ := send(t, "POST", g.base+"/v1/long", "{}", "Idempotency-Key", fmt.Sprintf("k-long-%d", i))
				if resp.Header.Get("Idempotent-Replayed") != "true" {
					t.Errorf("long-route key %d not replayed: the clean-up deleted a record in its retention", i)
				}
			}
			if f := metric(t, g, "levee_store_cleanup_failures_total", "store", "idempotency"); f != 0 {
				t.Errorf("clean-up failures: %v", f)
			}
		})
	}
}
