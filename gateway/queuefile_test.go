package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

// TestQueueFileBesideStore: by default the queues get a file of their own
// beside the idempotency store's (levee.db: levee-queue.db), except when
// the store's file already holds levee's queue tables (a levee that kept
// the queues there): then the queues stay in it, and a message accepted
// before the upgrade is still delivered.
func TestQueueFileBesideStore(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, string(b))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	delivered := func(body string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, g := range got {
				if g == body {
					return true
				}
			}
			return false
		}
	}

	// A fresh directory: the queue file appears beside the store's.
	fresh := t.TempDir()
	store := fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(fresh, "levee.db"))
	g := startGateway(t, asyncConfig(store, recv.URL+"/events"))
	resp, err := http.Post(g.base+"/async/partner", "application/json", strings.NewReader(`{"n":"fresh"}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("enqueue: %d", resp.StatusCode)
	}
	poll.Until(t, 10*time.Second, delivered(`{"n":"fresh"}`), "message not delivered")
	if _, err := os.Stat(filepath.Join(fresh, "levee-queue.db")); err != nil {
		t.Fatalf("no queue file beside the store's: %v", err)
	}
	if ok, err := sqlitequeue.HasQueueTables(filepath.Join(fresh, "levee.db")); err != nil || ok {
		t.Fatalf("the store's file has the queue tables (%v, %v): the queues were not moved out", ok, err)
	}

	// A store file that already holds the queues (and a message accepted
	// before the upgrade): they stay there.
	legacy := t.TempDir()
	path := filepath.Join(legacy, "levee.db")
	bk, err := sqlitequeue.Open(path, sqlitequeue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(bk, queue.Config{Name: "events"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Enqueue(context.Background(), &queue.Message{Target: recv.URL + "/events", Payload: []byte(`{"n":"before the upgrade"}`)}); err != nil {
		t.Fatal(err)
	}
	if err := bk.Close(); err != nil {
		t.Fatal(err)
	}
	startGateway(t, asyncConfig(fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", path), recv.URL+"/events"))
	poll.Until(t, 10*time.Second, delivered(`{"n":"before the upgrade"}`), "the message accepted before the upgrade was stranded")
	if _, err := os.Stat(filepath.Join(legacy, "levee-queue.db")); err == nil {
		t.Fatal("a queue file was created beside a store file that holds the queues")
	}
}
