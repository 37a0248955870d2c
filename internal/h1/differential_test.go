package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync"
	"testing"
	"time"
)

// seenRequest is a request as a handler saw it.
type seenRequest struct {
	Method, URI, Host, Proto string
	ContentLength            int64
	TransferEncoding         []string
	Header                   map[string][]string
	Body                     string
	BodyErr                  bool
	Trailer                  map[string][]string
}

// requestLog records the requests each connection carried, by the
// client's address.
type requestLog struct {
	mu sync.Mutex
	by map[string][]seenRequest
}

func (l *requestLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	s := seenRequest{Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto, ContentLength: r.ContentLength,
		TransferEncoding: r.TransferEncoding, Header: r.Header.Clone(), Body: string(b), BodyErr: err != nil, Trailer: r.Trailer.Clone()}
	l.mu.Lock()
	l.by[r.RemoteAddr] = append(l.by[r.RemoteAddr], s)
	l.mu.Unlock()
	w.Write([]byte("ok"))
}

func (l *requestLog) take(addr string) []seenRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.by[addr]
	delete(l.by, addr)
	return s
}

// twoServers serves log with levee's Server (guarded hand-off included)
// and with a plain net/http server, until the test ends.
func twoServers(t testing.TB, log *requestLog) (levee, plain string) {
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	lln, pln := listen(), listen()
	ls := NewServer(&http.Server{Handler: log, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(quiet.Handler(), slog.LevelWarn)}, quiet,
		func(w http.ResponseWriter, _ *http.Request, e *EdgeError) { w.WriteHeader(e.Status) })
	ps := &http.Server{Handler: log, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(quiet.Handler(), slog.LevelWarn)}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = ls.Serve(lln) }()
	go func() { defer wg.Done(); _ = ps.Serve(pln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = ls.Shutdown(ctx)
		_ = ps.Shutdown(ctx)
		wg.Wait()
	})
	return lln.Addr().String(), pln.Addr().String()
}

// sendRaw writes data on a new connection (in writes of chunk bytes
// when chunk > 0), half-closes it and reads until the server ends it; it
// returns what the handler saw.
func sendRaw(t testing.TB, addr string, data []byte, chunk int, log *requestLog) []seenRequest {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	for rest := data; len(rest) > 0; {
		n := len(rest)
		if chunk > 0 {
			n = min(n, chunk)
		}
		if _, err := c.Write(rest[:n]); err != nil {
			break
		}
		rest = rest[n:] // a segment each (no Nagle), read apart often enough
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c)
	return log.take(c.LocalAddr().String())
}

// ambiguousRequests are the byte streams of the differential fuzzer's
// seed corpus: framing and parsing corner cases.
var ambiguousRequests = []string{
	// pipelining
	"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	// Content-Length and Transfer-Encoding
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: a\r\nContent_Length: 3\r\n\r\nabc",
	// chunk-size oddities and trailers carrying framing fields
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
	"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: x\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	// obs-fold, bare CR and LF, NUL and high bytes
	"GET /a HTTP/1.1\r\nHost: a\r\nX: y\r\n folded\r\n\r\n",
	"GET /a HTTP/1.1\r\n Host: a\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX: y\rZ: w\r\n\r\n",
	"GET /a HTTP/1.1\nHost: a\nX: y\n\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX: y\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX\x00: y\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX\xff: y\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX: \xff\x80\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
	// request-line oddities
	"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a  HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET\t/a HTTP/1.1\r\nHost: a\r\n\r\n",
	"get /a HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a HTTP/1.1 \r\nHost: a\r\n\r\n",
	"GET /a\r\nHost: a\r\n\r\n",
	"GET http://b/a HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
	"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
	"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a HTTP/2.0\r\nHost: a\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: a b\r\n\r\n",
	"GET /a HTTP/1.1\r\n\r\n",
	"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n",
	"PUT /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
	"PUT /a HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\nhi",
	"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}

// The front server, hand-off included, frames every byte stream as
// net/http's server does: the requests its handler sees are exactly
// those a plain net/http server's handler sees, in order — or a prefix of
// them where levee deliberately stops (Transfer-Encoding in the stream:
// Content-Length with Transfer-Encoding and Transfer-Encoding in HTTP/1.0
// are refused, and a chunked request ends its connection). Levee never
// serves a request net/http would not, nor frames one differently.
//
// Bytes may come at once or in pieces (chunk bytes a write; 1 is byte by
// byte).
func FuzzServerFramingMatchesNetHTTP(f *testing.F) {
	for _, s := range ambiguousRequests {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(7))
	}
	log := &requestLog{by: map[string][]seenRequest{}}
	levee, plain := twoServers(f, log)
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		got := sendRaw(t, levee, data, int(chunk), log)
		want := sendRaw(t, plain, data, int(chunk), log)
		if len(got) > len(want) {
			t.Fatalf("%q: levee served %d requests, net/http %d:\n levee:    %+v\n net/http: %+v", data, len(got), len(want), got, want)
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Fatalf("%q: request %d differs:\n levee:    %+v\n net/http: %+v", data, i, got[i], want[i])
			}
		}
		if len(got) < len(want) && !bytes.Contains(bytes.ToLower(data), []byte("transfer-encoding")) {
			t.Fatalf("%q: levee served %d of net/http's %d requests, with no Transfer-Encoding in the stream:\n levee:    %+v\n net/http: %+v",
				data, len(got), len(want), got, want)
		}
	})
}

// What Transport makes of an upstream's raw answer is what
// http.ReadResponse makes of it (1xx skipped, an unsolicited 101
// refused): the same status, header and body, or an error for both. The
// upstream closes after its answer, so a body without framing ends there.
func FuzzTransportMatchesReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 2OO OK\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\n X: folded\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		ln := rawUpstream(t, func(c net.Conn) {
			defer c.Close()
			if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				c.Write(answer)
			}
		})
		tr := NewTransport(h1NoFallback{t}, 1)
		defer tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
		var got, want *http.Response
		var gotBody, wantBody []byte
		var gotErr, wantErr error
		if got, gotErr = tr.RoundTrip(req); gotErr == nil {
			gotBody, gotErr = io.ReadAll(got.Body)
			got.Body.Close()
		}
		br := bufio.NewReader(bytes.NewReader(answer))
		for n1xx := 0; ; {
			want, wantErr = http.ReadResponse(br, req)
			if wantErr != nil || want.StatusCode >= 200 || want.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			if n1xx++; n1xx > h1Max1xx {
				wantErr = errH1TooMany1xx
				break
			}
		}
		switch {
		case wantErr == nil && want.StatusCode == http.StatusSwitchingProtocols:
			wantErr = errH1Unexpected101
		case wantErr == nil:
			wantBody, wantErr = io.ReadAll(want.Body)
		}
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("%q: Transport error %v, http.ReadResponse error %v", answer, gotErr, wantErr)
		}
		if gotErr != nil {
			return
		}
		if got.StatusCode != want.StatusCode || !reflect.DeepEqual(got.Header, want.Header) || !bytes.Equal(gotBody, wantBody) ||
			!reflect.DeepEqual(got.Trailer, want.Trailer) {
			t.Fatalf("%q:\n Transport: %d %v %q %v\n net/http:  %d %v %q %v", answer, got.StatusCode, got.Header, gotBody, got.Trailer,
				want.StatusCode, want.Header, wantBody, want.Trailer)
		}
	})
}
