package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
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
