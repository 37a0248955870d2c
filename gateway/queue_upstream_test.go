package gateway_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
)

// A queue whose target names an upstream delivers through its
// executor: a burst of n messages reaches the partner no faster than its
// quota of 5/s (burst 1) — the k-th request arrives at least k × 200ms
// after the first enqueue — every refusal for want of a slot is retried
// (none reaches the partner, none is dead-lettered), and the upstream's
// path is joined with the target's.
func TestQueueDeliversThroughNamedUpstream(t *testing.T) {
	t.Parallel()
	const n = 6
	var (
		mu    sync.Mutex
		times []time.Time
		ids   = map[string]int{}
		paths = map[string]bool{}
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		ids[r.Header.Get("X-Levee-Message-Id")]++
		paths[r.URL.Path] = true
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(up.Close)
	g := startGateway(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %s}}
upstreams:
  - name: partner
    url: %s/api
    limit: {policies: ["5/s burst 1"], max_wait: 50ms}
queues:
  - name: batch
    target: partner/v1/sync
    path: /async/batch
    concurrency: 8
    backoff_base: 10ms
    backoff_max: 50ms
    max_attempts: 100
`, testAdminToken, filepath.Join(t.TempDir(), "levee.db"), up.URL))

	start := time.Now()
	for i := 0; i < n; i++ {
		req, _ := http.NewRequest(http.MethodPost, g.base+"/async/batch", bytes.NewReader([]byte(fmt.Sprintf(`{"item":%d}`, i))))
		req.Header.Set("Content-Type", "application/json")
		if resp, body := doRequest(t, req); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("enqueue %d: %d %s", i, resp.StatusCode, body)
		}
	}
	waitFor(t, "every message delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(times) >= n
	})
	time.Sleep(100 * time.Millisecond) // a duplicate would show up here
	mu.Lock()
	defer mu.Unlock()
	if len(times) != n || len(ids) != n {
		t.Fatalf("the partner got %d requests for %d message ids, want %d each (a refused attempt must never reach it)", len(times), len(ids), n)
	}
	if !paths["/api/v1/sync"] || len(paths) != 1 {
		t.Fatalf("paths %v, want /api/v1/sync", paths)
	}
	// Token bucket of 1 token, 200ms each: the k-th grant is at least
	// k × 200ms after the first, which came after start (a lower bound on
	// the time taken, never a speed assertion).
	for k, at := range times {
		if min := time.Duration(k)*200*time.Millisecond - 20*time.Millisecond; at.Sub(start) < min {
			t.Fatalf("request %d arrived %v after the first enqueue, before the quota allows (%v)", k, at.Sub(start), min)
		}
	}
	var list gateway.DLQList
	adminCall(t, g, http.MethodGet, "/dlq?queue=batch", &list)
	if len(list.Messages) != 0 {
		t.Fatalf("%d messages dead-lettered, want none", len(list.Messages))
	}
	t.Logf("refused attempts retried: %v", metric(t, g, "levee_queue_attempt_failures_total", "queue", "batch", "kind", "refused"))
}

// A queue target naming an unknown upstream is refused with file:line.
func TestQueueUnknownUpstream(t *testing.T) {
	t.Parallel()
	_, err := parseString(`listen: 127.0.0.1:0
store: {type: memory}
upstreams:
  - name: partner
    url: http://127.0.0.1:1
queues:
  - name: batch
    target: nosuch/v1
`)
	if err == nil || !strings.Contains(err.Error(), `x.yaml:8: queues[0].target: unknown upstream "nosuch"`) {
		t.Fatalf("err = %v", err)
	}
}

// A delivery whose first attempt reached the partner (a 503) and whose
// retry the upstream's breaker then refused is an attempt, not a refusal
// before any I/O: it counts toward max_attempts and the message reaches the
// DLQ with its history, instead of being put back as "not sent" at every
// cooldown, forever.
func TestQueueAttemptRefusedAfterSendingCounts(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	hits := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(up.Close)
	g := startGateway(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %s}}
upstreams:
  - name: partner
    url: %s
    retry: {max_attempts: 3, dedupes_keys: true, auto_key: true}
    breaker: {consecutive_failures: 1, cooldown: 10s}
queues:
  - name: batch
    target: partner/v1/sync
    path: /async/batch
    backoff_base: 10ms
    backoff_max: 50ms
    max_attempts: 1
`, testAdminToken, filepath.Join(t.TempDir(), "levee.db"), up.URL))
	req, _ := http.NewRequest(http.MethodPost, g.base+"/async/batch", strings.NewReader(`{"item":1}`))
	req.Header.Set("Content-Type", "application/json")
	if resp, body := doRequest(t, req); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("enqueue: %d %s", resp.StatusCode, body)
	}
	var list gateway.DLQList
	waitFor(t, "the message dead-lettered", func() bool {
		adminCall(t, g, http.MethodGet, "/dlq?queue=batch", &list)
		return len(list.Messages) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if m := list.Messages[0]; m.Attempts != 1 || hits != 1 || !strings.Contains(m.LastError, "refused after an attempt was sent") {
		t.Fatalf("dead-lettered %+v after %d requests; want 1 attempt, 1 request, the refused retry in its error", m, hits)
	}
}
