package gateway_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/store/memory"
)

func benchGateway(b *testing.B, yaml string) http.Handler {
	b.Helper()
	cfg, err := gateway.Parse("bench.yaml", []byte(yaml), noEnv)
	if err != nil {
		b.Fatal(err)
	}
	g, err := gateway.New(cfg, gateway.Options{Store: memory.New(memory.Options{}), Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	return g
}

// BenchmarkGateway compares, through the same in-process gateway handler
// and a real loopback upstream: a proxied request (direct path, and a
// streamed upload on the ReverseProxy path), a request denied by a
// rate limit (429, never proxied), an idempotent request executed (memory
// store) and one replayed.
func BenchmarkGateway(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	}))
	defer up.Close()
	h := benchGateway(b, fmt.Sprintf(`log: {access_log: false}
routes:
  - name: proxied
    match: {path: /proxied}
    upstream: %[1]s
  - name: limited
    match: {path: /limited}
    upstream: %[1]s
    rate_limit:
      - {name: one, limit: 1/hour burst 1, key: const}
  - name: idem
    match: {path: /idem}
    upstream: %[1]s
    idempotency: {}
`, up.URL))
	run := func(b *testing.B, method, path string, hdr func(i int64) string, want int) {
		var n atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req := httptest.NewRequest(method, path, strings.NewReader(`{"amount":1}`))
				if hdr != nil {
					req.Header.Set("Idempotency-Key", hdr(n.Add(1)))
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != want {
					b.Fatalf("%s %s: %d, want %d", method, path, w.Code, want)
				}
			}
		})
	}
	b.Run("Proxied", func(b *testing.B) { run(b, "GET", "/proxied", nil, 200) })
	// A streamed upload (no Content-Length) takes the ReverseProxy path
	// and net/http's Transport, as an https upstream would.
	b.Run("ProxiedStreamed", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req := httptest.NewRequest("POST", "/proxied", strings.NewReader(`{"amount":1}`))
				req.ContentLength = -1
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatalf("streamed: %d %s", w.Code, w.Body)
				}
			}
		})
	})
	// Spend the only unit so every request below is denied.
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/limited", nil))
	b.Run("RateLimited429", func(b *testing.B) { run(b, "GET", "/limited", nil, 429) })
	b.Run("IdempotentNew", func(b *testing.B) {
		run(b, "POST", "/idem", func(i int64) string { return "k" + strconv.FormatInt(i, 10) + b.Name() }, 200)
	})
	b.Run("IdempotentReplay", func(b *testing.B) { run(b, "POST", "/idem", func(int64) string { return "same" }, 200) })
}
