package gateway_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/leveehq/levee/gateway"
)

// A delivery the target's upstream refuses locally (here its client-side
// quota, 5/s burst 1, with no slot within 10ms) is not an attempt: with
// max_attempts 1, every one of a burst of messages is still delivered,
// exactly once and as attempt 1, nothing is dead-lettered, and the
// refusals are counted as deferrals, not as failed attempts.
func TestQueueLocalRefusalIsNotAnAttempt(t *testing.T) {
	t.Parallel()
	const n = 5
	var (
		mu       sync.Mutex
		ids      = map[string]int{}
		attempts = map[string]bool{}
	)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ids[r.Header.Get("X-Levee-Message-Id")]++
		attempts[r.Header.Get("X-Levee-Attempt")] = true
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(up.Close)
	g := startGateway(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %s}}
upstreams:
  - name: partner
    url: %s
    limit: {policies: ["5/s burst 1"], max_wait: 10ms}
queues:
  - name: burst
    target: partner/sync
    path: /async/burst
    concurrency: 8
    backoff_base: 10ms
    backoff_max: 50ms
    max_attempts: 1
`, testAdminToken, filepath.Join(t.TempDir(), "levee.db"), up.URL))
	for i := range n {
		req, _ := http.NewRequest(http.MethodPost, g.base+"/async/burst", bytes.NewReader(fmt.Appendf(nil, `{"item":%d}`, i)))
		req.Header.Set("Content-Type", "application/json")
		if resp, body := doRequest(t, req); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("enqueue %d: %d %s", i, resp.StatusCode, body)
		}
	}
	waitFor(t, "every message delivered", func() bool {
		return metric(t, g, "levee_queue_delivered_total", "queue", "burst") == n
	})
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != n || !attempts["1"] || len(attempts) != 1 {
		t.Fatalf("the partner got ids %v with attempt headers %v, want %d ids once each, all attempt 1", ids, attempts, n)
	}
	for id, c := range ids {
		if c != 1 {
			t.Fatalf("message %s delivered %d times", id, c)
		}
	}
	var list gateway.DLQList
	adminCall(t, g, http.MethodGet, "/dlq?queue=burst", &list)
	if len(list.Messages) != 0 || metric(t, g, "levee_queue_dead_lettered_total", "queue", "burst") != 0 {
		t.Fatalf("%d messages dead-lettered, want none: a local refusal was counted as an attempt", len(list.Messages))
	}
	deferred := metric(t, g, "levee_queue_deferred_total", "queue", "burst", "kind", "paced")
	if deferred == 0 {
		t.Fatal("no deferral counted: the burst was never refused, so the test proves nothing (tighten the quota)")
	}
	if f := metric(t, g, "levee_queue_attempt_failures_total", "queue", "burst"); f != 0 {
		t.Fatalf("%v failed attempts counted, want none (the refusals were not attempts)", f)
	}
	t.Logf("%v deliveries deferred by the quota, none counted as attempts", deferred)
}
