package h1

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// BenchmarkServer measures the front server's fast path: keep-alive
// requests on one loopback connection, a handler writing a small body.
func BenchmarkServer(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	})
	fb := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	s := newBenchServer(fb)
	go s.Serve(ln)
	defer s.Shutdown(b.Context())
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET /pay?x=1 HTTP/1.1\r\nHost: levee\r\nUser-Agent: bench\r\nAccept: */*\r\nX-Request-Id: abc\r\n\r\n")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func newBenchServer(fb *http.Server) *Server {
	return NewServer(fb, slog.New(slog.NewTextHandler(io.Discard, nil)), func(w http.ResponseWriter, _ *http.Request, e *EdgeError) { w.WriteHeader(e.Status) })
}
