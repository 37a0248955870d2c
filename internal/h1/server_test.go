package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

type frontFixture struct {
	s    *Server
	addr string
	logs *syncBuf
}

type syncBuf struct {
	ch chan string
}

func (b *syncBuf) Write(p []byte) (int, error) {
	select {
	case b.ch <- string(p):
	default:
	}
	return len(p), nil
}

func startFront(t *testing.T, h http.Handler, tune func(*http.Server)) *frontFixture {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{ch: make(chan string, 100)}
	fb := &http.Server{Handler: h, ReadHeaderTimeout: 2 * time.Second, IdleTimeout: 5 * time.Second, MaxHeaderBytes: 16 << 10}
	if tune != nil {
		tune(fb)
	}
	s := NewServer(fb, slog.New(slog.NewJSONHandler(logs, nil)), testReject)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		<-done
	})
	return &frontFixture{s: s, addr: ln.Addr().String(), logs: logs}
}

// testReject answers a refused head with its status and detail.
func testReject(w http.ResponseWriter, _ *http.Request, e *EdgeError) {
	w.Header().Set("Content-Type", "text/x-refused")
	w.WriteHeader(e.Status)
	io.WriteString(w, e.Detail)
}

// rawConn is a client connection that writes raw bytes and reads
// responses with http.ReadResponse.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (f *frontFixture) dial(t *testing.T) *rawConn {
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawConn) read(method string) (*http.Response, string) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

// closed reports whether the server closed the connection (EOF on read).
func (r *rawConn) closed() bool {
	_ = r.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := r.br.ReadByte()
	return err == io.EOF || err != nil && strings.Contains(err.Error(), "reset")
}

// echo answers with the request as the handler saw it.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	w.Header().Set("X-Proto", r.Proto)
	fmt.Fprintf(w, "%s %s host=%s len=%d body=%q err=%v", r.Method, r.RequestURI, r.Host, r.ContentLength, b, err)
})

func TestFrontKeepAliveAndPipelining(t *testing.T) {
	t.Parallel()
	f := startFront(t, echo, nil)
	c := f.dial(t)
	for i := 0; i < 3; i++ {
		c.send(fmt.Sprintf("POST /p/%d?q=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc", i))
		resp, body := c.read("POST")
		want := fmt.Sprintf(`POST /p/%d?q=1 host=example.com len=3 body="abc" err=<nil>`, i)
		if resp.StatusCode != 200 || body != want || resp.ContentLength != int64(len(want)) || resp.Header.Get("Date") == "" {
			t.Fatalf("request %d: %d %q (len %d, %v), want 200 %q with Content-Length and Date", i, resp.StatusCode, body, resp.ContentLength, resp.Header, want)
		}
	}
	// Two pipelined requests in one write: two answers, in order.
	c.send("GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
	_, a := c.read("GET")
	_, b := c.read("GET")
	if !strings.HasPrefix(a, "GET /a ") || !strings.HasPrefix(b, "GET /b ") {
		t.Fatalf("pipelined answers %q, %q", a, b)
	}
	// A body with newlines (pretty-printed JSON), in the same packet as the
	// head, stays on the fast path.
	c.send("POST /pretty HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n{\n  \"a\": 1\n}")
	if _, body := c.read("POST"); !strings.Contains(body, `len=12`) {
		t.Fatalf("pretty JSON body: %q", body)
	}
	if got := f.s.served.Load(); got != 6 || f.s.handed.Load() != 0 {
		t.Fatalf("served %d on the fast path, handed off %d; want 6 and 0", got, f.s.handed.Load())
	}
	// Connection: close is honoured.
	c.send("GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
	if resp, _ := c.read("GET"); !resp.Close {
		t.Fatal("no Connection: close in the answer to a closing request")
	}
	if !c.closed() {
		t.Fatal("connection kept open after Connection: close")
	}
}

// Requests outside the fast path's subset are served, or refused, by
// net/http — on a fresh connection and after fast-path requests.
func TestFrontHandsOffToNetHTTP(t *testing.T) {
	t.Parallel()
	f := startFront(t, echo, nil)
	big := strings.Repeat("x", 5000)
	huge := strings.Repeat("y", 40000)
	cases := []struct {
		name, req, method string
		status            int
		body              string // prefix
	}{
		{"HTTP/1.0", "GET /old HTTP/1.0\r\nHost: h\r\n\r\n", "GET", 200, "GET /old host=h"},
		{"chunked upload", "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "POST", 200, `POST /up host=h len=-1 body="abc"`},
		{"expect", "PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", "PUT", 200, `PUT /e host=h len=2 body="hi"`},
		{"head over 4 KiB", "GET /big HTTP/1.1\r\nHost: h\r\nX-Big: " + big + "\r\n\r\n", "GET", 200, "GET /big host=h"},
		{"head over max_header_bytes", "GET /huge HTTP/1.1\r\nHost: h\r\nX-Huge: " + huge + "\r\n\r\n", "GET", 431, ""},
		{"no Host", "GET /nohost HTTP/1.1\r\n\r\n", "GET", 400, ""},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "GET", 400, ""},
		{"two lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "POST", 400, ""},
		{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", "GET", 400, ""},
		{"absolute form", "GET http://h/abs HTTP/1.1\r\nHost: h\r\n\r\n", "GET", 200, "GET http://h/abs host=h"},
		{"bare LF", "GET /lf HTTP/1.1\nHost: h\n\n", "GET", 200, "GET /lf host=h"},
		{"bare LF at the end", "GET /lf2 HTTP/1.1\r\nHost: h\r\n\n", "GET", 200, "GET /lf2 host=h"},
	}
	for _, fresh := range []bool{true, false} {
		for _, tc := range cases {
			c := f.dial(t)
			if !fresh { // a fast-path request first
				c.send("GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
				c.read("GET")
			}
			before := f.s.handed.Load()
			c.send(tc.req)
			resp, body := c.read(tc.method)
			if resp.StatusCode == 100 {
				resp, body = c.read(tc.method)
			}
			if resp.StatusCode != tc.status || !strings.HasPrefix(body, tc.body) {
				t.Errorf("%s (fresh %v): %d %q, want %d %q...", tc.name, fresh, resp.StatusCode, body, tc.status, tc.body)
			}
			if f.s.handed.Load() != before+1 {
				t.Errorf("%s: not handed off", tc.name)
			}
		}
	}
}

func TestFrontResponseFraming(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "<html>hi</html>") })
	mux.HandleFunc("/large", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, strings.Repeat("z", 10000))
	})
	mux.HandleFunc("/flush", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part1,")
		w.(http.Flusher).Flush()
		io.WriteString(w, "part2")
	})
	mux.HandleFunc("/declared", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "12345")
	})
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "12345")
	})
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(204)
		if _, err := io.WriteString(w, "x"); err != http.ErrBodyNotAllowed {
			panic("a body was allowed on a 204")
		}
	})
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "abc")
		w.Header().Set("X-Sum", "3")
		w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
	})
	mux.HandleFunc("/nodate", func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Date"] = nil
		w.Header()["Content-Type"] = nil
		w.Header().Set("X-Split", "a\r\nInjected: 1")
		w.Header().Set("Connection", "close")
		io.WriteString(w, "<html>")
	})
	mux.HandleFunc("/hints", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.css>; rel=preload")
		w.Header().Set("Content-Length", "5")
		w.WriteHeader(103)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	})
	mux.HandleFunc("/headflush", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-T")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-T", "1")
	})
	f := startFront(t, mux, nil)
	c := f.dial(t)

	get := func(path, method string) (*http.Response, string) {
		c.send(method + " " + path + " HTTP/1.1\r\nHost: h\r\n\r\n")
		return c.read(method)
	}
	resp, body := get("/small", "GET")
	if resp.ContentLength != 15 || body != "<html>hi</html>" || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("/small: len %d %q %v", resp.ContentLength, body, resp.Header)
	}
	resp, body = get("/large", "GET")
	if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || len(body) != 10000 {
		t.Fatalf("/large: len %d te %v body %d bytes; want chunked 10000", resp.ContentLength, resp.TransferEncoding, len(body))
	}
	resp, body = get("/flush", "GET")
	if len(resp.TransferEncoding) != 1 || body != "part1,part2" {
		t.Fatalf("/flush: te %v %q", resp.TransferEncoding, body)
	}
	resp, body = get("/declared", "HEAD")
	if resp.ContentLength != 5 || body != "" {
		t.Fatalf("HEAD /declared: len %d %q", resp.ContentLength, body)
	}
	resp, body = get("/declared", "GET")
	if resp.ContentLength != 5 || body != "12345" {
		t.Fatalf("/declared: len %d %q", resp.ContentLength, body)
	}
	resp, _ = get("/nocontent", "GET")
	if resp.StatusCode != 204 || resp.Header.Get("Content-Length") != "" {
		t.Fatalf("/nocontent: %d %v", resp.StatusCode, resp.Header)
	}
	resp, body = get("/trailer", "GET")
	if body != "abc" || resp.Trailer.Get("X-Sum") != "3" || resp.Trailer.Get("X-Late") != "yes" {
		t.Fatalf("/trailer: %q trailers %v", body, resp.Trailer)
	}
	resp, _ = get("/hints", "GET")
	if resp.StatusCode != 103 || resp.Header.Get("Link") == "" || resp.Header.Get("Content-Length") != "" {
		t.Fatalf("/hints: %d %v, want 103 with the Link header first", resp.StatusCode, resp.Header)
	}
	resp, body = c.read("GET")
	if resp.StatusCode != 200 || body != "final" || resp.Header.Get("Link") != "" {
		t.Fatalf("/hints: %d %q %v ", resp.StatusCode, body, resp.Header)
	}
	// A HEAD whose handler flushes and announces trailers gets no chunked
	// framing (there is no body), and the connection stays in sync.
	resp, body = get("/headflush", "HEAD")
	if len(resp.TransferEncoding) != 0 || body != "" {
		t.Fatalf("HEAD /headflush: te %v body %q", resp.TransferEncoding, body)
	}
	resp, body = get("/small", "GET")
	if body != "<html>hi</html>" {
		t.Fatalf("after HEAD /headflush the connection is out of sync: %d %q", resp.StatusCode, body)
	}
	resp, body = get("/nodate", "GET")
	if _, ok := resp.Header["Date"]; ok || resp.Header.Get("Content-Type") != "" || resp.Header.Get("Injected") != "" ||
		resp.Header.Get("X-Split") != "a  Injected: 1" || body != "<html>" || !resp.Close {
		t.Fatalf("/nodate: %v %q close=%v", resp.Header, body, resp.Close)
	}
	if !c.closed() {
		t.Fatal("Connection: close from the handler did not close")
	}
	c = f.dial(t)
	c.send("GET /short HTTP/1.1\r\nHost: h\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err == nil || string(b) != "12345" {
		t.Fatalf("/short: %q, %v; want the 5 bytes then an error (the server closes)", b, err)
	}
}

func TestFrontRequestBodies(t *testing.T) {
	t.Parallel()
	f := startFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/read" {
			b, err := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%d %v", len(b), err)
			return
		}
		io.WriteString(w, "ignored") // the body is left unread
	}), nil)
	// An unread small body is discarded: the connection serves the next request.
	c := f.dial(t)
	c.send("POST /skip HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
	c.read("POST")
	c.send("POST /read HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
	if _, body := c.read("POST"); body != "2 <nil>" {
		t.Fatalf("after a skipped body: %q", body)
	}
	// A CRLF some clients send after a POST body is skipped, as net/http does.
	c.send("POST /read HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx\r\nGET /read HTTP/1.1\r\nHost: h\r\n\r\n")
	if _, body := c.read("POST"); body != "1 <nil>" {
		t.Fatalf("POST before a CRLF: %q", body)
	}
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "0 <nil>" {
		t.Fatalf("GET after a POST and a stray CRLF: %d %q", resp.StatusCode, body)
	}
	// An unread body over 256 KiB closes the connection.
	c = f.dial(t)
	c.send(fmt.Sprintf("POST /skip HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n", 1<<20))
	if resp, _ := c.read("POST"); !resp.Close {
		t.Fatal("no Connection: close after leaving a 1 MiB body unread")
	}
	// A client that sends less than announced and half-closes: the
	// handler sees io.ErrUnexpectedEOF.
	c = f.dial(t)
	c.send("POST /read HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
	c.c.(*net.TCPConn).CloseWrite()
	if _, body := c.read("POST"); body != "3 unexpected EOF" {
		t.Fatalf("short body: %q", body)
	}
}

func TestFrontTimeoutsAndPanics(t *testing.T) {
	t.Parallel()
	f := startFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("boom")
		case "/abort":
			io.WriteString(w, "partial")
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	}), func(s *http.Server) {
		s.ReadHeaderTimeout = 200 * time.Millisecond
		s.IdleTimeout = 300 * time.Millisecond
	})
	// A head that never ends is cut at the header timeout.
	c := f.dial(t)
	c.send("GET / HTTP/1.1\r\nHost: h\r\n")
	if !c.closed() {
		t.Fatal("a slow head was not cut at read_header_timeout")
	}
	// An idle keep-alive connection is closed at the idle timeout.
	c = f.dial(t)
	c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	c.read("GET")
	if !c.closed() {
		t.Fatal("an idle connection was not closed at idle_timeout")
	}
	// A panic closes that connection, is logged, and the server goes on.
	c = f.dial(t)
	c.send("GET /panic HTTP/1.1\r\nHost: h\r\n\r\n")
	if !c.closed() {
		t.Fatal("the connection survived a panicking handler")
	}
	select {
	case l := <-f.logs.ch:
		if !strings.Contains(l, "boom") || !strings.Contains(l, "stack") {
			t.Fatalf("panic log: %s", l)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the panic was not logged")
	}
	c = f.dial(t)
	c.send("GET /abort HTTP/1.1\r\nHost: h\r\n\r\n")
	if !c.closed() {
		t.Fatal("ErrAbortHandler did not close the connection")
	}
	c = f.dial(t)
	c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	if _, body := c.read("GET"); body != "ok" {
		t.Fatalf("after panics: %q", body)
	}
}

// Shutdown closes idle connections at once and lets an active request
// finish, answered with Connection: close.
func TestFrontShutdown(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	f := startFront(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done")
	}), nil)
	idle := f.dial(t)
	idle.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	idle.read("GET")
	busy := f.dial(t)
	busy.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- f.s.Shutdown(ctx)
	}()
	if !idle.closed() {
		t.Fatal("an idle connection survived Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	resp, body := busy.read("GET")
	if body != "done" || !resp.Close {
		t.Fatalf("in-flight request during shutdown: %q close=%v", body, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

// parseFrontHead accepts only what net/http accepts, and reads it the
// same way.
func FuzzFrontParse(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 3\r\nX-A: b\r\nx-lower: c\r\nX-A: d\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n\r\n",
		"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: \t v \t\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0012\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
		"GET // HTTP/1.1\r\nHost: a\r\nX-\xff: y\r\nY: \xff\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\nCache-Control: max-age=0\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, head string) {
		h, ok := parseFrontHead(head)
		if !ok {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			t.Fatalf("parseFrontHead accepted what net/http refuses (%v): %q", err, head)
		}
		if req.Method != h.method || req.RequestURI != h.target || req.Host != h.host || req.Close != h.close ||
			req.URL.String() != h.url.String() || !reflect.DeepEqual(map[string][]string(req.Header), map[string][]string(h.header)) {
			t.Fatalf("%q:\n net/http: %s %s host %q close %v %v\n front:    %s %s host %q close %v %v", head,
				req.Method, req.RequestURI, req.Host, req.Close, req.Header, h.method, h.target, h.host, h.close, h.header)
		}
		wantLen := req.ContentLength
		if wantLen < 0 {
			wantLen = 0
		}
		if h.contentLength != wantLen {
			t.Fatalf("%q: Content-Length %d, net/http %d", head, h.contentLength, req.ContentLength)
		}
	})
}
