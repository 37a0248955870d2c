package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/internal/syncbuf"
)

// TestDLQListShowReplayPurge: a target that fails every time puts the
// enqueued messages in the DLQ with every attempt's error (levee dlq
// list/show); once it recovers, levee dlq replay --id delivers that one
// message once, with its id kept, and levee dlq purge --all empties the
// rest.
func TestDLQListShowReplayPurge(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		fail = true
		got  = map[string]int{}
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			http.Error(w, "ledger down", http.StatusServiceUnavailable)
			return
		}
		got[r.Header.Get("X-Levee-Message-Id")]++
	}))
	defer up.Close()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "levee.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %q}}
queues:
  - name: ledger
    target: %s/entries
    path: /async/ledger
    max_attempts: 2
    backoff_base: 1ms
    backoff_max: 2ms
`, testToken, filepath.Join(dir, "levee.db"), up.URL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	srv, err := gateway.NewServer(context.Background(), cfgPath, gateway.ServerOptions{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	admin := "http://" + srv.AdminAddr()
	var ids []string
	for i := range 2 {
		resp, err := http.Post("http://"+srv.Addr()+"/async/ledger", "application/json", strings.NewReader(fmt.Sprintf(`{"n":%d}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		var out struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&out)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || out.ID == "" {
			t.Fatalf("enqueue: %d", resp.StatusCode)
		}
		ids = append(ids, out.ID)
	}
	cli := func(args ...string) (string, int) {
		var out, errb bytes.Buffer
		code := run(append(args, "--admin", admin, "--token", testToken, "--operator", "ops-alice"), &out, &errb)
		return out.String() + errb.String(), code
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := cli("dlq", "list", "--queue", "ledger")
		if code == 0 && strings.Contains(out, ids[0]) && strings.Contains(out, ids[1]) {
			if !strings.Contains(out, "max_attempts") || !strings.Contains(out, "503") {
				t.Fatalf("list:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the messages never reached the DLQ:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, code := cli("dlq", "show", "--queue", "ledger", "--id", ids[0])
	if code != 0 || strings.Count(out, "attempt ") != 2 || strings.Count(out, "ledger down") != 2 {
		t.Fatalf("show (%d):\n%s", code, out)
	}
	if out, code := cli("dlq", "replay", "--queue", "ledger"); code != 2 {
		t.Fatalf("replay without a filter: %d\n%s", code, out)
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	out, code = cli("dlq", "replay", "--queue", "ledger", "--id", ids[0])
	if code != 0 || !strings.Contains(out, "replayed 1 message") {
		t.Fatalf("replay (%d):\n%s", code, out)
	}
	for {
		mu.Lock()
		n := got[ids[0]]
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replayed message was never delivered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, code = cli("dlq", "purge", "--queue", "ledger", "--all")
	if code != 0 || !strings.Contains(out, "purged 1 message") {
		t.Fatalf("purge (%d):\n%s", code, out)
	}
	if out, _ := cli("dlq", "list", "--queue", "ledger"); !strings.Contains(out, "(none)") {
		t.Fatalf("after purge:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[ids[0]] != 1 {
		t.Fatalf("deliveries %v, want only %s once", got, ids[0])
	}
	for _, want := range []string{`"msg":"dlq replay"`, `"msg":"dlq purge"`, `"operator":"ops-alice"`} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %s:\n%s", want, logs.String())
		}
	}
}
