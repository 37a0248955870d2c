package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// edgeConfig is a one-route config for the HTTP layer's tests: engine is
// levee or net/http, server adds keys to the server section.
func edgeConfig(up, engine, server string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: off}
store: {type: memory}
server: {engine: %s%s}
routes:
  - name: plain
    match: {path_prefix: /}
    upstream: %s
`, engine, server, up)
}

var engines = []string{"levee", "net/http"}

// edgeDial opens a raw client connection to g.
func edgeDial(t *testing.T, g *running) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// readAnswer reads one response; nil when the connection ended without
// one.
func readAnswer(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, ""
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// A client whose upload stalls never gets a success for a request that
// never reached the upstream: 408 problem+json, on both engines and on
// the connections the levee engine hands to net/http (HTTP/1.0). Issue 9,
// defect 2.
func TestStalledUploadNeverGets200(t *testing.T) {
	t.Parallel()
	for _, engine := range engines {
		for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
			t.Run(engine+" "+proto, func(t *testing.T) {
				t.Parallel()
				u := newUpstream(t)
				g := startGateway(t, edgeConfig(u.srv.URL, engine, ", read_timeout: 300ms"))
				c, br := edgeDial(t, g)
				fmt.Fprintf(c, "POST /x %s\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello", proto)
				resp, body := readAnswer(t, br)
				if resp == nil {
					t.Fatal("no answer, want 408")
				}
				if resp.StatusCode != http.StatusRequestTimeout {
					t.Fatalf("status %d %q, want 408", resp.StatusCode, body)
				}
				if typ, _ := problemOf(t, resp, body); typ != "request-timeout" {
					t.Fatalf("problem type %q", typ)
				}
				if resp.Header.Get("X-Request-Id") == "" {
					t.Error("no X-Request-Id")
				}
				if n := u.calls.Load(); n != 0 {
					t.Fatalf("the upstream saw %d requests", n)
				}
				if n := clientErrors(t, g, "body_timeout"); n != 1 {
					t.Errorf("levee_client_errors_total{kind=body_timeout} = %v, want 1", n)
				}
				if !strings.Contains(g.logs.String(), `"kind":"body_timeout"`) {
					t.Error("the stalled upload was not logged")
				}
			})
		}
	}
}

// clientErrors is levee_client_errors_total summed over routes for kind.
func clientErrors(t *testing.T, g *running, kind string) float64 {
	t.Helper()
	mfs, err := g.srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "levee_client_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// A client that sends part of its body and hangs up gets no answer at
// all (there is nobody to answer), never an implicit 200.
func TestGoneUploaderGetsNoAnswer(t *testing.T) {
	t.Parallel()
	for _, engine := range engines {
		for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
			t.Run(engine+" "+proto, func(t *testing.T) {
				t.Parallel()
				u := newUpstream(t)
				g := startGateway(t, edgeConfig(u.srv.URL, engine, ""))
				c, br := edgeDial(t, g)
				fmt.Fprintf(c, "POST /x %s\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello", proto)
				c.(*net.TCPConn).CloseWrite()
				if resp, body := readAnswer(t, br); resp != nil {
					t.Fatalf("answered %d %q to a client that left", resp.StatusCode, body)
				}
				if n := u.calls.Load(); n != 0 {
					t.Fatalf("the upstream saw %d requests", n)
				}
			})
		}
	}
}

// connClosed reports whether the server ends the connection (no further
// response) within a few seconds.
func connClosed(c net.Conn, br *bufio.Reader) bool {
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := br.ReadByte()
	return err == io.EOF || err != nil && strings.Contains(err.Error(), "reset")
}

// A request with both Content-Length and Transfer-Encoding gets 400
// problem+json and the connection is closed: nothing after it reaches the
// upstream, whatever the spelling, on both engines, fresh or after a
// request served on the same connection. Issue 9, defect 1.
func TestCLAndTEClosesConnection(t *testing.T) {
	t.Parallel()
	const smuggled = "0\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n"
	cl := fmt.Sprintf("Content-Length: %d\r\n", len(smuggled))
	spellings := map[string]string{
		"TE first":        "Transfer-Encoding: chunked\r\n" + cl,
		"CL first":        cl + "Transfer-Encoding: chunked\r\n",
		"Chunked":         cl + "Transfer-Encoding: Chunked\r\n",
		"leading space":   cl + "Transfer-Encoding:  chunked\r\n",
		"several TE":      "Transfer-Encoding: chunked\r\n" + cl + "Transfer-Encoding: chunked\r\n",
		"TE list":         cl + "Transfer-Encoding: gzip, chunked\r\n",
		"lower-case name": "transfer-encoding: chunked\r\ncontent-length: 40\r\n",
		"HTTP/1.0":        cl + "Transfer-Encoding: chunked\r\n",
	}
	for _, engine := range engines {
		for name, fields := range spellings {
			for _, after := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s %s after=%v", engine, name, after), func(t *testing.T) {
					t.Parallel()
					u := newUpstream(t)
					g := startGateway(t, edgeConfig(u.srv.URL, engine, ""))
					c, br := edgeDial(t, g)
					proto := "HTTP/1.1"
					if name == "HTTP/1.0" {
						proto = "HTTP/1.0"
					}
					first := ""
					if after {
						first = "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
					}
					fmt.Fprintf(c, "%sPOST /x %s\r\nHost: a\r\n%s\r\n%s", first, proto, fields, smuggled)
					if after {
						if resp, body := readAnswer(t, br); resp == nil || resp.StatusCode != http.StatusCreated {
							t.Fatalf("the request before: %v %q", resp, body)
						}
					}
					resp, body := readAnswer(t, br)
					if resp == nil || resp.StatusCode != http.StatusBadRequest {
						t.Fatalf("answer %v %q, want 400", resp, body)
					}
					if typ, _ := problemOf(t, resp, body); typ != "request-invalid" {
						t.Errorf("problem type %q", typ)
					}
					if resp.Header.Get("X-Request-Id") == "" {
						t.Error("no X-Request-Id")
					}
					if !connClosed(c, br) {
						t.Error("the connection stayed open")
					}
					want := int64(0)
					if after {
						want = 1
					}
					if n := u.calls.Load(); n != want {
						r, _ := u.lastRequest()
						t.Fatalf("the upstream saw %d requests (last %s), want %d", n, r.URL, want)
					}
				})
			}
		}
	}
}

// A head handed to net/http part-way (a bare LF, or past 4 KiB) stays
// within the one read_header_timeout it started under: the hand-off does
// not start a new one. Issue 9, defect 3.
func TestHandOffKeepsReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	for name, late := range map[string]string{
		"bare LF":    "X-A: b\n",
		"past 4 KiB": "X-Big: " + strings.Repeat("b", 5000) + "\r\n",
		"fast path":  "X-A: b\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			g := startGateway(t, edgeConfig(u.srv.URL, "levee", ", read_header_timeout: 1s"))
			c, br := edgeDial(t, g)
			io.WriteString(c, "GET /a HTTP/1.1\r\nHost: a\r\n")
			time.Sleep(700 * time.Millisecond)
			io.WriteString(c, late)            // the hand-off happens here, 0.7 s into the head
			time.Sleep(600 * time.Millisecond) // past the 1 s bound, before a restarted one (1.7 s)
			io.WriteString(c, "\r\n")
			if resp, body := readAnswer(t, br); resp != nil {
				t.Fatalf("a head completed after read_header_timeout was served: %d %q", resp.StatusCode, body)
			}
			if n := u.calls.Load(); n != 0 {
				t.Fatalf("the upstream saw %d requests", n)
			}
		})
	}
}

// Every request the HTTP layer refuses is answered with problem+json and
// an X-Request-Id, not net/http's text/plain, and the connection closed:
// on both engines, fresh and after a request served on the same
// connection.
func TestEdgeErrorsAreProblems(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		req    string
		status int
		typ    string
	}{
		"head too large":        {"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", 20<<10) + "\r\n\r\n", 431, "request-header-too-large"},
		"duplicate Host":        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "request-invalid"},
		"no Host":               {"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400, "request-invalid"},
		"space in a name":       {"GET / HTTP/1.1\r\nHost: a\r\nBad Key: v\r\n\r\n", 400, "request-invalid"},
		"NUL in a name":         {"GET / HTTP/1.1\r\nHost: a\r\nBa\x00d: v\r\n\r\n", 400, "request-invalid"},
		"space before colon":    {"GET / HTTP/1.1\r\nHost: a\r\nX-A : v\r\n\r\n", 400, "request-invalid"},
		"bad Host":              {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "request-invalid"},
		"bad request line":      {"GET /\r\nHost: a\r\n\r\n", 400, "request-invalid"},
		"unknown version":       {"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, "http-version-unsupported"},
		"unknown coding":        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "transfer-coding-unsupported"},
		"Expect other than 100": {"PUT / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx", 417, "expectation-failed"},
		"two lengths":           {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400, "request-invalid"},
		"bad length":            {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", 400, "request-invalid"},
		"TE in HTTP/1.0":        {"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "request-invalid"},
	}
	for _, engine := range engines {
		for name, tc := range cases {
			for _, after := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s %s after=%v", engine, name, after), func(t *testing.T) {
					t.Parallel()
					u := newUpstream(t)
					g := startGateway(t, edgeConfig(u.srv.URL, engine, ", max_header_bytes: 8KiB"))
					c, br := edgeDial(t, g)
					if after {
						io.WriteString(c, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
						if resp, body := readAnswer(t, br); resp == nil || resp.StatusCode != http.StatusCreated {
							t.Fatalf("the request before: %v %q", resp, body)
						}
					}
					io.WriteString(c, tc.req)
					resp, body := readAnswer(t, br)
					if resp == nil || resp.StatusCode != tc.status {
						t.Fatalf("answer %v %q, want %d", resp, body, tc.status)
					}
					if typ, _ := problemOf(t, resp, body); typ != tc.typ {
						t.Errorf("problem type %q, want %q", typ, tc.typ)
					}
					if resp.Header.Get("X-Request-Id") == "" {
						t.Error("no X-Request-Id")
					}
					if !connClosed(c, br) {
						t.Error("the connection stayed open")
					}
					if n, want := u.calls.Load(), map[bool]int64{false: 0, true: 1}[after]; n != want {
						t.Fatalf("the upstream saw %d requests, want %d", n, want)
					}
				})
			}
		}
	}
}

// A clean shutdown logs no ERROR (operators alert on them), on both
// engines, also after a connection was handed to net/http.
func TestShutdownLogsNoError(t *testing.T) {
	t.Parallel()
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			g := startGateway(t, edgeConfig(u.srv.URL, engine, ""))
			c, br := edgeDial(t, g)
			io.WriteString(c, "GET /a HTTP/1.0\r\nHost: a\r\n\r\n") // handed off under levee
			if resp, _ := readAnswer(t, br); resp == nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("answer %v", resp)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := g.srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if logs := g.logs.String(); strings.Contains(logs, `"level":"ERROR"`) {
				t.Fatalf("shutdown logged an error:\n%s", logs)
			}
		})
	}
}

// An upgraded connection (a WebSocket) carries raw bytes both ways on
// both engines: the guard in front of net/http stops reading heads after
// an Upgrade request.
func TestUpgradeThroughTheGuard(t *testing.T) {
	t.Parallel()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(c, "echo: "+line)
	}))
	t.Cleanup(up.Close)
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, edgeConfig(up.URL, engine, ""))
			c, br := edgeDial(t, g)
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			// Bytes that look like a malformed head must pass untouched.
			io.WriteString(c, "GET  /not-http \x00\n")
			line, err := br.ReadString('\n')
			if err != nil || line != "echo: GET  /not-http \x00\n" {
				t.Fatalf("after the upgrade: %q %v", line, err)
			}
		})
	}
}

// A streamed (chunked) upload that stalls goes through the ReverseProxy
// path, which may already have started the upstream request: the client
// still gets 408, never a success.
func TestStalledChunkedUploadGets408(t *testing.T) {
	t.Parallel()
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t)
			g := startGateway(t, edgeConfig(u.srv.URL, engine, ", read_timeout: 300ms"))
			c, br := edgeDial(t, g)
			io.WriteString(c, "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
			resp, body := readAnswer(t, br)
			if resp == nil || resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("answer %v %q, want 408", resp, body)
			}
		})
	}
}
