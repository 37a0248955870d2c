package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/h1"
)

// headRecorder is an upstream that records each request as read by
// http.ReadRequest and answers 200 with a fixed body, or a chunked body
// with a trailer for paths under /chunked.
type headRecorder struct {
	ln   net.Listener
	mu   sync.Mutex
	last *http.Request
	body string
}

func newHeadRecorder(t *testing.T) *headRecorder {
	h := &headRecorder{}
	h.ln = rawUpstream(t, func(c net.Conn) { h.serve(c) })
	return h
}

func (h *headRecorder) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		b, _ := io.ReadAll(req.Body)
		h.mu.Lock()
		h.last, h.body = req, string(b)
		h.mu.Unlock()
		var resp string
		switch {
		case strings.HasPrefix(req.URL.Path, "/chunked"):
			resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n" +
				"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"
		default:
			resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nX-Request-Id: up\r\n\r\nok"
		}
		if req.Method == http.MethodHead {
			resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
		}
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
	}
}

func (h *headRecorder) take() (*http.Request, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, b := h.last, h.body
	h.last, h.body = nil, ""
	return r, b
}

// The direct path and httputil.ReverseProxy put the same request on the
// wire and give the client the same response, whatever the headers.
func TestDirectPathMatchesReverseProxy(t *testing.T) {
	t.Parallel()
	up := newHeadRecorder(t)
	for _, trusted := range []string{"[10.9.0.0/16]", "[127.0.0.1/32]"} {
		cfg, err := Parse("test.yaml", []byte(fmt.Sprintf(`listen: 127.0.0.1:0
trusted_proxies: %s
routes:
  - name: based
    match: {path_prefix: /b}
    upstream: http://%s/base
  - name: plain
    match: {path_prefix: /}
    upstream: http://%s
`, trusted, up.ln.Addr(), up.ln.Addr())), nil)
		if err != nil {
			t.Fatal(err)
		}
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		direct, err := New(cfg, Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		stock, err := New(cfg, Options{Logger: quiet, Transport: NewTransport()})
		if err != nil {
			t.Fatal(err)
		}
		ds, ss := httptest.NewServer(direct), httptest.NewServer(stock)
		defer ds.Close()
		defer ss.Close()

		cases := []struct {
			method, path, body string
			hdr                []string
		}{
			{"GET", "/v1/a?x=1&y=%20z", "", []string{"X-Forwarded-For", "203.0.113.9", "X-Forwarded-Host", "evil", "X-Real-Ip", "6.6.6.6"}},
			{"POST", "/v1/pay", `{"a":1}`, []string{"Content-Type", "application/json", "Connection", "X-Secret, keep-alive", "X-Secret", "s", "Te", "trailers, deflate", "Proxy-Authorization", "Basic x", "X-Request-Id", "abc-1"}},
			{"POST", "/v1/empty", "", nil},
			{"DELETE", "/b/item/%2F7?q=2", "", []string{"Keep-Alive", "300", "Trailer", "X-T", "Forwarded", "for=1.2.3.4"}},
			{"PUT", "/b", "x", []string{"Upgrade-Insecure-Requests", "1", "Te", "gzip"}},
			{"HEAD", "/v1/head", "", nil},
			{"GET", "/chunked", "", nil},
			{"GET", "/v1/q?a=1;b=2&c=%zz&d=4", "", nil}, // re-encoded: no parameter smuggling
			{"POST", "/v1/u", "abc", []string{"Content_Length", "999", "Transfer_encoding", "chunked", "X_Api_Key", "k"}},
			{"GET", "/b/q?" + strings.Repeat("p=1&", 10000) + "p=2", "", nil},
		}
		for _, c := range cases {
			var got [2]*http.Request
			var bodies, answers [2]string
			var resps [2]*http.Response
			for i, base := range []string{ds.URL, ss.URL} {
				req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
				if c.body == "" {
					req.Body = http.NoBody
				}
				req.Header.Set("User-Agent", "levee-test")
				for j := 0; j+1 < len(c.hdr); j += 2 {
					req.Header.Set(c.hdr[j], c.hdr[j+1])
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", c.method, c.path, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				resps[i], answers[i] = resp, string(b)
				got[i], bodies[i] = up.take()
				if got[i] == nil {
					t.Fatalf("%s %s: the upstream saw nothing", c.method, c.path)
				}
			}
			d, s := got[0], got[1]
			short := func(s string) string { return s[:min(len(s), 120)] }
			if d.Method != s.Method || d.RequestURI != s.RequestURI || d.Host != s.Host || bodies[0] != bodies[1] {
				t.Errorf("trusted %s, %s %s: direct sent %s %s Host %s body %q; ReverseProxy %s %s Host %s body %q", trusted, c.method, short(c.path),
					d.Method, short(d.RequestURI), d.Host, bodies[0], s.Method, short(s.RequestURI), s.Host, bodies[1])
			}
			dh, sh := d.Header.Clone(), s.Header.Clone()
			for i, h := range []http.Header{dh, sh} {
				h.Del("Accept-Encoding") // net/http's Transport asks for gzip itself
				if id := h.Get("X-Request-Id"); id != "abc-1" && len(id) == 32 {
					h.Set("X-Request-Id", "generated")
				}
				if fh := h.Get("X-Forwarded-Host"); fh == strings.TrimPrefix([]string{ds.URL, ss.URL}[i], "http://") {
					h.Set("X-Forwarded-Host", "the-gateway")
				}
			}
			if !reflect.DeepEqual(dh, sh) {
				t.Errorf("trusted %s, %s %s: upstream headers differ\n direct: %v\n stock:  %v", trusted, c.method, c.path, dh, sh)
			}
			if dh.Get("X-Secret") != "" || dh.Get("Proxy-Authorization") != "" || dh.Get("Keep-Alive") != "" {
				t.Errorf("%s %s: hop-by-hop headers forwarded: %v", c.method, c.path, dh)
			}
			if dh.Get("Content_Length") != "" || dh.Get("Transfer_encoding") != "" {
				t.Errorf("%s %s: framing look-alike headers forwarded: %v", c.method, c.path, dh)
			}
			if c.path == "/v1/u" && dh.Get("X_Api_Key") != "k" {
				t.Errorf("other underscore headers must pass: %v", dh)
			}
			if resps[0].StatusCode != resps[1].StatusCode || answers[0] != answers[1] {
				t.Errorf("%s %s: client got %d %q (direct) vs %d %q (stock)", c.method, c.path, resps[0].StatusCode, answers[0], resps[1].StatusCode, answers[1])
			}
			rd, rs := resps[0].Header.Clone(), resps[1].Header.Clone()
			for _, h := range []http.Header{rd, rs} {
				h.Del("Date")
				h.Del("X-Request-Id")
				h.Del("Content-Type") // net/http sniffs one for the stock path; the direct path adds none
			}
			if !reflect.DeepEqual(rd, rs) || !reflect.DeepEqual(resps[0].Trailer, resps[1].Trailer) {
				t.Errorf("%s %s: response headers differ\n direct: %v %v\n stock:  %v %v", c.method, c.path, rd, resps[0].Trailer, rs, resps[1].Trailer)
			}
			if c.path == "/chunked" && (answers[0] != "abcde" || resps[0].Trailer.Get("X-Sum") != "5" || rd.Get("X-Hop") != "") {
				t.Errorf("chunked response: body %q trailer %v headers %v", answers[0], resps[0].Trailer, rd)
			}
		}
	}
}

// rawUpstream listens on loopback and runs serve on each connection, in
// its own goroutine, until the test ends; then the connections are closed
// and the goroutines waited for.
func rawUpstream(t *testing.T, serve func(net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln
}

// startFront serves h with levee's HTTP/1.1 server on a loopback port
// until the test ends.
func startFront(t *testing.T, h http.Handler) (f struct{ addr string }) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := h1.NewServer(&http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, quiet,
		func(w http.ResponseWriter, _ *http.Request, e *h1.EdgeError) { w.WriteHeader(e.Status) })
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		<-done
	})
	f.addr = ln.Addr().String()
	return f
}

// A response body cut by the upstream reaches the client as a cut
// connection, never as a complete-looking response — on the
// ReverseProxy path under levee's front server too.
func TestCutUpstreamBodyAbortsTheClient(t *testing.T) {
	t.Parallel()
	ln := rawUpstream(t, func(c net.Conn) {
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	})
	cfg, err := Parse("t.yaml", []byte(fmt.Sprintf("listen: 127.0.0.1:0\nroutes:\n  - name: cut\n    match: {path_prefix: /}\n    upstream: http://%s\n", ln.Addr())), nil)
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tr := range []http.RoundTripper{nil, NewTransport()} { // direct path, ReverseProxy
		g, err := New(cfg, Options{Logger: quiet, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		f := startFront(t, g)
		resp, err := http.Get("http://" + f.addr + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("transport %T: the client read %q and a clean end, want an error", tr, b)
		}
	}
}

// A slow upstream on the direct path gets the route timeout (504), and a
// refused connection a 502 naming the upstream.
func TestDirectPathFailures(t *testing.T) {
	t.Parallel()
	ln := rawUpstream(t, func(c net.Conn) { time.Sleep(2 * time.Second); c.Close() })
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg, err := Parse("t.yaml", []byte(fmt.Sprintf(`listen: 127.0.0.1:0
routes:
  - name: slow
    match: {path: /slow}
    upstream: http://%s
    timeout: 150ms
  - name: dead
    match: {path: /dead}
    upstream: http://%s
`, ln.Addr(), deadAddr)), nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	defer srv.Close()
	for path, want := range map[string]int{"/slow": 504, "/dead": 502} {
		start := time.Now()
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || !strings.Contains(string(b), "upstream") {
			t.Errorf("%s: %d %s, want %d naming the upstream", path, resp.StatusCode, b, want)
		}
		if path == "/slow" && time.Since(start) > time.Second {
			t.Errorf("/slow answered after %v, want the 150ms route timeout", time.Since(start))
		}
	}
}
