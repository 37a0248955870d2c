package gateway_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A queue delivering to a named upstream keeps the message's idempotency
// key on the wire, but its executor retries a POST that was sent and lost
// only when the upstream deduplicates by that key (retry.dedupes_keys):
// otherwise the lost attempt is left to the queue's own redelivery (here
// an hour away), never retried at once as if the key made it safe.
func TestQueueDeliveryKeyRetriesOnlyWhereTheUpstreamDedupes(t *testing.T) {
	t.Parallel()
	for _, dedupes := range []bool{false, true} {
		t.Run(fmt.Sprint("dedupes_keys=", dedupes), func(t *testing.T) {
			t.Parallel()
			var (
				mu   sync.Mutex
				keys []string
			)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				keys = append(keys, r.Header.Get("Idempotency-Key"))
				first := len(keys) == 1
				mu.Unlock()
				if first {
					// The request arrived whole; the answer is lost.
					c, _, err := w.(http.Hijacker).Hijack()
					if err == nil {
						_ = c.Close()
					}
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			t.Cleanup(up.Close)
			g := startGateway(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %s}}
upstreams:
  - name: partner
    url: %s
    retry: {dedupes_keys: %v, base_delay: 1ms, max_delay: 5ms}
queues:
  - name: charges
    target: partner/v1/charges
    path: /async/charges
    headers: [Content-Type, Idempotency-Key]
    backoff_base: 1h
    backoff_max: 1h
`, testAdminToken, filepath.Join(t.TempDir(), "levee.db"), up.URL, dedupes))
			req, _ := http.NewRequest(http.MethodPost, g.base+"/async/charges", bytes.NewReader([]byte(`{"amount":100}`)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "charge-42")
			if resp, body := doRequest(t, req); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("enqueue: %d %s", resp.StatusCode, body)
			}
			want := 1
			if dedupes {
				want = 2 // the executor's retry, with the same key
			}
			waitFor(t, "the partner's requests", func() bool { mu.Lock(); defer mu.Unlock(); return len(keys) >= want })
			time.Sleep(500 * time.Millisecond) // a retry would arrive within the backoff of a few ms
			mu.Lock()
			defer mu.Unlock()
			if len(keys) != want {
				t.Fatalf("the partner got %d requests, want %d (dedupes_keys %v)", len(keys), want, dedupes)
			}
			for i, k := range keys {
				if k != "charge-42" {
					t.Fatalf("request %d carried Idempotency-Key %q, want the message's key on the wire", i, k)
				}
			}
		})
	}
}
