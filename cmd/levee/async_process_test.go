package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
)

// TestKill9MidDeliveryLosesNothing: messages accepted (202) by one
// `levee serve` process are all delivered after it is killed with
// SIGKILL in the middle of delivering them and a new process starts on
// the same SQLite file: none is lost, and an idempotent receiver (one
// that dedupes on X-Levee-Message-Id) sees each exactly once; at most
// the deliveries in flight at the kill reach the wire twice.
func TestKill9MidDeliveryLosesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	stores := map[string]string{
		"sqlite": fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(dir, "levee.db")),
	}
	t.Run("sqlite", func(t *testing.T) { t.Parallel(); testKill9MidDelivery(t, stores["sqlite"]) })
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		st := postgresStore(t) // "  type: postgres\n  postgres: {url: …, schema: S}"
		schema := st[strings.LastIndex(st, "schema: ")+len("schema: ") : len(st)-1]
		testKill9MidDelivery(t, "store:\n"+st+"\nqueue_store: {type: postgres, postgres: {schema: "+schema+"}}\n")
	})
}

func testKill9MidDelivery(t *testing.T, store string) {
	n := 400
	var (
		mu    sync.Mutex
		seen  = map[string]int{}
		total int
	)
	rcv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond) // slow enough to be killed mid-way
		mu.Lock()
		seen[r.Header.Get("X-Levee-Message-Id")]++
		total++
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rcvAddr := ln.Addr().String()
	go func() { _ = rcv.Serve(ln) }()
	t.Cleanup(func() { _ = rcv.Close() })

	dir := t.TempDir()
	const concurrency = 4
	config := func(addr, admin string) string {
		p := filepath.Join(dir, "levee-"+randID()+".yaml")
		y := fmt.Sprintf(`listen: %s
admin: {listen: %s}
%squeues:
  - name: jobs
    target: http://%s/jobs
    path: /async/jobs
    concurrency: %d
    attempt_timeout: 1s
    lease: 2s
    backoff_base: 10ms
    backoff_max: 50ms
`, addr, admin, store, rcvAddr, concurrency)
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	addr, admin := freePort(t), freePort(t)
	a := startReplica(t, config(addr, admin), addr, admin)
	ids := map[string]bool{}
	var idsMu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				resp, err := http.Post("http://"+addr+"/async/jobs", "application/json", strings.NewReader(fmt.Sprintf(`{"job":%d}`, i)))
				if err != nil {
					t.Error(err)
					return
				}
				var out struct{ ID string }
				_ = json.NewDecoder(resp.Body).Decode(&out)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted || out.ID == "" {
					t.Errorf("enqueue %d: %d", i, resp.StatusCode)
					return
				}
				idsMu.Lock()
				ids[out.ID] = true
				idsMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	poll.Until(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= n/4
	}, "deliveries never started")
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	mu.Lock()
	atKill := len(seen)
	mu.Unlock()
	if atKill >= n {
		t.Fatalf("all %d delivered before the kill: the test proves nothing (slow the receiver)", n)
	}

	addr2, admin2 := freePort(t), freePort(t)
	startReplica(t, config(addr2, admin2), addr2, admin2)
	poll.Until(t, 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	}, "not every accepted message was delivered after the restart")
	time.Sleep(300 * time.Millisecond) // a late duplicate would show up here
	mu.Lock()
	defer mu.Unlock()
	for id := range ids {
		if seen[id] == 0 {
			t.Fatalf("accepted message %s was never delivered", id)
		}
	}
	if len(seen) != len(ids) {
		t.Fatalf("%d distinct ids delivered, %d accepted", len(seen), len(ids))
	}
	if dup := total - len(seen); dup > concurrency {
		t.Fatalf("%d duplicate deliveries, more than the %d in flight at the kill", dup, concurrency)
	}
	t.Logf("%d accepted; %d delivered before kill -9; %d wire deliveries in all (%d duplicates)", n, atKill, total, total-len(seen))
}
