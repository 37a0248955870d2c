package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// cuttingUpstream reads each request whole, counts it, then closes the
// connection without answering: the request reached the upstream, its
// outcome is unknown.
func cuttingUpstream(t *testing.T) (addr string, calls *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	calls = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				calls.Add(1)
			}(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), calls
}

func unknownConfig(upstream, engine, policy string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
store: {type: memory}
server: {engine: %s}
routes:
  - name: charges
    match: {path_prefix: /v1/charges}
    upstream: %s
    timeout: 2s
    idempotency: {required: true, on_unknown_outcome: %s}
`, engine, upstream, policy)
}

// TestLostAnswerHoldsTheKey: once the whole request reached the upstream
// and its answer was lost, a retry with the same key never reaches the
// upstream again (409 idempotency-outcome-unknown), on both engines and
// both paths (a small body takes the direct path, a chunked upload the
// ReverseProxy one).
func TestLostAnswerHoldsTheKey(t *testing.T) {
	t.Parallel()
	for _, engine := range []string{"levee", "net/http"} {
		for _, chunked := range []bool{false, true} {
			name := fmt.Sprintf("%s chunked=%v", engine, chunked)
			addr, calls := cuttingUpstream(t)
			g := startGateway(t, unknownConfig("http://"+addr, engine, "hold"))
			post := func() (*http.Response, string) {
				var body io.Reader = strings.NewReader(`{"amount":100}`)
				if chunked {
					body = io.MultiReader(strings.NewReader(`{"amount"`), strings.NewReader(`:100}`)) // unknown length: chunked
				}
				req, _ := http.NewRequest("POST", g.base+"/v1/charges", body)
				req.Header.Set("Idempotency-Key", "order-1")
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp, string(b)
			}
			if resp, b := post(); resp.StatusCode != 502 || calls.Load() != 1 {
				t.Fatalf("%s: first attempt: %d %s (upstream saw %d)", name, resp.StatusCode, b, calls.Load())
			}
			resp, b := post()
			if typ, _ := problemOf(t, resp, b); resp.StatusCode != 409 || typ != "idempotency-outcome-unknown" {
				t.Fatalf("%s: retry after a lost answer: %d %s", name, resp.StatusCode, b)
			}
			if calls.Load() != 1 {
				t.Fatalf("%s: the retry reached the upstream (%d calls): a possible double charge", name, calls.Load())
			}
			if !strings.Contains(g.logs.String(), "upstream outcome unknown") || !strings.Contains(g.logs.String(), `"level":"WARN"`) {
				t.Fatalf("%s: no WARN line for the held key:\n%s", name, g.logs)
			}
		}
	}
}

// TestNotSentReleasesTheKey: a request that never reached the upstream
// (connection refused) is released: the retry runs.
func TestNotSentReleasesTheKey(t *testing.T) {
	t.Parallel()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	g := startGateway(t, unknownConfig("http://"+dead, "levee", "hold"))
	for i := 0; i < 2; i++ {
		resp, b := send(t, "POST", g.base+"/v1/charges", `{}`, "Idempotency-Key", "k")
		if typ, _ := problemOf(t, resp, b); resp.StatusCode != 502 || typ != "upstream-unavailable" {
			t.Fatalf("attempt %d: %d %s, want 502 upstream-unavailable (never held)", i, resp.StatusCode, b)
		}
	}
}

// TestUnknownOutcomeRelease: with on_unknown_outcome: release the retry
// is forwarded again (for upstreams that dedupe the key themselves).
func TestUnknownOutcomeRelease(t *testing.T) {
	t.Parallel()
	addr, calls := cuttingUpstream(t)
	g := startGateway(t, unknownConfig("http://"+addr, "levee", "release"))
	for i := 0; i < 2; i++ {
		if resp, b := send(t, "POST", g.base+"/v1/charges", `{}`, "Idempotency-Key", "k"); resp.StatusCode != 502 {
			t.Fatalf("attempt %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if calls.Load() != 2 {
		t.Fatalf("upstream calls %d, want 2 (released)", calls.Load())
	}
}
