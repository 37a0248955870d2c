package gateway_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkGatewayUpstream measures what a named upstream's policies
// (retry, budget, breaker, bulkhead) add to a proxied request on the
// direct path and on the ReverseProxy path, against the same route
// without them, and an open breaker's rejection (no I/O).
func BenchmarkGatewayUpstream(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/down" {
			w.WriteHeader(500)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	}))
	defer up.Close()
	h := benchGateway(b, fmt.Sprintf(`log: {access_log: false}
upstreams:
  - name: partner
    url: %[1]s
    breaker: {consecutive_failures: 1, cooldown: 1h}
    bulkhead: {max_in_flight: 1024}
  - name: down
    url: %[1]s
    retry: {max_attempts: 1}
    breaker: {consecutive_failures: 1, cooldown: 1h}
routes:
  - name: plain
    match: {path: /plain}
    upstream: %[1]s
  - name: policies
    match: {path: /policies}
    upstream: partner
  - name: down
    match: {path: /down}
    upstream: down
`, up.URL))
	run := func(b *testing.B, path string, streamed bool, want int) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req := httptest.NewRequest("POST", path, strings.NewReader(`{"amount":1}`))
				if streamed {
					req.ContentLength = -1
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != want {
					b.Fatalf("%s: %d, want %d", path, w.Code, want)
				}
			}
		})
	}
	b.Run("Direct", func(b *testing.B) { run(b, "/plain", false, 200) })
	b.Run("DirectPolicies", func(b *testing.B) { run(b, "/policies", false, 200) })
	b.Run("Streamed", func(b *testing.B) { run(b, "/plain", true, 200) })
	b.Run("StreamedPolicies", func(b *testing.B) { run(b, "/policies", true, 200) })
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/down", nil)) // trips the breaker
	b.Run("BreakerOpen503", func(b *testing.B) { run(b, "/down", false, 503) })
}
