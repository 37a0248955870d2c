package gateway_test

import (
	"bytes"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// wireRecorder is an upstream that records every byte it receives and
// answers each request line it sees with an empty 200 (it does not parse
// bodies: the table's requests are small and arrive whole).
type wireRecorder struct {
	ln net.Listener
	mu sync.Mutex
	b  bytes.Buffer
	wg sync.WaitGroup
}

func newWireRecorder(t *testing.T) *wireRecorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wireRecorder{ln: ln}
	var conns []net.Conn
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			w.mu.Lock()
			conns = append(conns, c)
			w.mu.Unlock()
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					w.mu.Lock()
					w.b.Write(buf[:n])
					heads := len(requestLine.FindAllIndex(buf[:n], -1))
					w.mu.Unlock()
					for range heads {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		w.mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		w.mu.Unlock()
		w.wg.Wait()
	})
	return w
}

// requestLine finds where a forwarded request starts.
var requestLine = regexp.MustCompile(`(GET|POST) /\S* HTTP/1\.1\r\n`)

// received returns what reached the upstream, each head's field lines
// sorted (the gateway writes fields in map order), the upstream's address
// as UP.
func (w *wireRecorder) received() string {
	w.mu.Lock()
	raw := w.b.String()
	w.mu.Unlock()
	raw = strings.ReplaceAll(raw, w.ln.Addr().String(), "UP")
	var out strings.Builder
	for raw != "" {
		i := strings.Index(raw, "\r\n\r\n")
		if i < 0 {
			out.WriteString(raw)
			break
		}
		lines := strings.Split(raw[:i], "\r\n")
		slices.Sort(lines[1:])
		out.WriteString(strings.Join(lines, "\r\n") + "\r\n\r\n")
		raw = raw[i+4:]
		next := len(raw) // the body runs to the next request line
		if loc := requestLine.FindStringIndex(raw); loc != nil {
			next = loc[0]
		}
		out.WriteString(raw[:next])
		raw = raw[next:]
	}
	return out.String()
}

// fwd is the fields the gateway adds to every forwarded request.
const fwd = "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Host: a\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid1"

// sortedHead builds an expected head: the request line, then fields
// (with fwd and Host: UP) sorted.
func sortedHead(line string, fields ...string) string {
	all := append([]string{"Host: UP"}, strings.Split(fwd, "\r\n")...)
	all = append(all, fields...)
	slices.Sort(all)
	return line + "\r\n" + strings.Join(all, "\r\n") + "\r\n\r\n"
}

// The table of ambiguous requests: what reaches the upstream, byte for
// byte (field order aside), on both engines. Nothing is ever smuggled
// past a refused head, and no request is framed differently from how
// levee answered it.
func TestAmbiguousRequestsReachTheUpstreamExactly(t *testing.T) {
	t.Parallel()
	const id = "X-Request-Id: rid1\r\n"
	get := sortedHead("GET /a HTTP/1.1")
	cases := []struct {
		name, send, want string
	}{
		{"plain", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "\r\n", get},
		{"pipelined", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "\r\nGET /b HTTP/1.1\r\nHost: a\r\n" + id + "\r\n",
			get + sortedHead("GET /b HTTP/1.1")},
		{"body then pipelined", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Content-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: a\r\n" + id + "\r\n",
			sortedHead("POST /a HTTP/1.1", "Content-Length: 3") + "abc" + sortedHead("GET /b HTTP/1.1")},
		{"CL and TE", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n", ""},
		{"TE and CL, Chunked", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Content-Length: 40\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n", ""},
		{"TE in HTTP/1.0", "POST /a HTTP/1.0\r\nHost: a\r\n" + id + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ""},
		{"two lengths", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", ""},
		{"length with a comma", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Content-Length: 3, 3\r\n\r\nabc", ""},
		{"space before the colon", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Content-Length : 3\r\n\r\nabc", ""},
		{"framing look-alike", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Content_Length: 3\r\nContent-Length: 0\r\n\r\n",
			sortedHead("POST /a HTTP/1.1", "Content-Length: 0")},
		// net/http unfolds (RFC 9112 section 5.2 allows replacing obs-fold by SP).
		{"obs-fold", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "X: y\r\n folded\r\n\r\n", sortedHead("GET /a HTTP/1.1", "X: y folded")},
		{"bare CR", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "X: y\rZ: w\r\n\r\n", ""},
		{"NUL in a name", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "X\x00: y\r\n\r\n", ""},
		{"high byte in a name", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "X\xff: y\r\n\r\n", ""},
		{"high bytes in a value", "GET /a HTTP/1.1\r\nHost: a\r\n" + id + "X: \xff\x80\r\n\r\n", sortedHead("GET /a HTTP/1.1", "X: \xff\x80")},
		{"bare LF head", "GET /a HTTP/1.1\nHost: a\n" + id[:len(id)-2] + "\n\n", get},
		{"double space in the request line", "GET  /a HTTP/1.1\r\nHost: a\r\n" + id + "\r\n", ""},
		{"no version", "GET /a\r\nHost: a\r\n" + id + "\r\n", ""},
		{"duplicate Host", "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n" + id + "\r\n", ""},
		{"chunked, then a request", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n" + id + "\r\n",
			sortedHead("POST /a HTTP/1.1", "Accept-Encoding: gzip", "Transfer-Encoding: chunked") + "3\r\nabc\r\n0\r\n\r\n"},
		{"chunk extension", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
			sortedHead("POST /a HTTP/1.1", "Accept-Encoding: gzip", "Transfer-Encoding: chunked") + "3\r\nabc\r\n0\r\n\r\n"},
		{"trailer with framing fields", "POST /a HTTP/1.1\r\nHost: a\r\n" + id + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
			sortedHead("POST /a HTTP/1.1", "Accept-Encoding: gzip", "Transfer-Encoding: chunked") + "3\r\nabc\r\n0\r\n\r\n"},
	}
	for _, engine := range engines {
		for _, tc := range cases {
			t.Run(engine+" "+tc.name, func(t *testing.T) {
				t.Parallel()
				up := newWireRecorder(t)
				g := startGateway(t, edgeConfig("http://"+up.ln.Addr().String(), engine, ""))
				c, br := edgeDial(t, g)
				io.WriteString(c, tc.send)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, br) // until levee closes the connection
				var got string
				for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					if got = up.received(); got == tc.want || time.Now().After(deadline) {
						break
					}
				}
				if got != tc.want {
					t.Fatalf("the upstream received\n%q\nwant\n%q", got, tc.want)
				}
			})
		}
	}
}
