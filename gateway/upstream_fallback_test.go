package gateway_test

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/resilience"
)

// downURL returns the URL of a local port nobody listens on (a listener
// opened and closed), for an upstream that is down.
func downURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func fallbackConfig(primary, secondary, fallback string) string {
	sec := ""
	if secondary != "" {
		sec = fmt.Sprintf(`  - name: backup
    url: %s
    timeout: 5s
    attempt_timeout: 1s
    retry: {max_attempts: 1}
`, secondary)
	}
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
store: {type: memory}
upstreams:
  - name: partner
    url: %s
    timeout: 5s
    attempt_timeout: 1s
    retry: {max_attempts: 1}
    fallback: %s
%sroutes:
  - name: api
    match: {path_prefix: /v1}
    upstream: partner
    timeout: 5s
`, primary, fallback, sec)
}

// A GET is served stale, marked with Age and Levee-Stale, when the
// upstream answers 503 and when it is down; a POST never is; on both
// proxy paths (a GET with a chunked body takes the ReverseProxy path).
func TestUpstreamStaleIfError(t *testing.T) {
	t.Parallel()
	var fail atomic.Bool
	f := newFlaky(t, func(n int64, w http.ResponseWriter) {
		if fail.Load() {
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "good %d", n)
	})
	g := startGateway(t, fallbackConfig(f.srv.URL, "", "{stale_if_error: 1m}"))
	for _, chunked := range []bool{false, true} {
		fail.Store(false)
		body := ""
		if chunked {
			body = "xy"
		}
		path := fmt.Sprintf("/v1/r?chunked=%v", chunked)
		resp, good := do(t, "GET", g.base+path, body, chunked)
		if resp.StatusCode != 200 || !strings.HasPrefix(good, "good") || resp.Header.Get(resilience.StaleHeader) != "" {
			t.Fatalf("chunked=%v: fresh: %d %q %v", chunked, resp.StatusCode, good, resp.Header)
		}
		fail.Store(true)
		resp, stale := do(t, "GET", g.base+path, body, chunked)
		if resp.StatusCode != 200 || stale != good || resp.Header.Get(resilience.StaleHeader) != "true" || resp.Header.Get("Age") == "" {
			t.Fatalf("chunked=%v: on 503: %d %q (want %q) stale=%q age=%q", chunked, resp.StatusCode, stale, good,
				resp.Header.Get(resilience.StaleHeader), resp.Header.Get("Age"))
		}
		resp, _ = do(t, "POST", g.base+path, `{"a":1}`, chunked)
		if resp.StatusCode != 503 || resp.Header.Get(resilience.StaleHeader) != "" {
			t.Fatalf("chunked=%v: a POST on 503: %d, stale=%q", chunked, resp.StatusCode, resp.Header.Get(resilience.StaleHeader))
		}
		// Another target was never stored: the upstream's 503 passes.
		if resp, _ := do(t, "GET", g.base+path+"&other", body, chunked); resp.StatusCode != 503 {
			t.Fatalf("chunked=%v: unstored target: %d", chunked, resp.StatusCode)
		}
	}

	// Down: the stored response is served, for both paths.
	f.srv.Close()
	for _, chunked := range []bool{false, true} {
		body := ""
		if chunked {
			body = "xy"
		}
		resp, got := do(t, "GET", g.base+fmt.Sprintf("/v1/r?chunked=%v", chunked), body, chunked)
		if resp.StatusCode != 200 || !strings.HasPrefix(got, "good") || resp.Header.Get(resilience.StaleHeader) != "true" {
			t.Fatalf("chunked=%v: down: %d %q", chunked, resp.StatusCode, got)
		}
	}
}

// The secondary answers when the primary is down, on both paths (a
// bodiless GET takes the direct path unless a secondary is configured);
// when both are down the client gets problem+json.
func TestUpstreamSecondary(t *testing.T) {
	t.Parallel()
	sec := newFlaky(t, func(n int64, w http.ResponseWriter) { fmt.Fprint(w, "from secondary") })
	g := startGateway(t, fallbackConfig(downURL(t), sec.srv.URL, "{secondary: backup}"))
	for _, c := range []struct {
		method, body string
		chunked      bool
	}{{"GET", "", false}, {"PUT", `{"a":1}`, false}, {"PUT", `{"a":1}`, true}, {"POST", `{"a":1}`, false}} {
		resp, body := do(t, c.method, g.base+"/v1/x", c.body, c.chunked)
		if resp.StatusCode != 200 || body != "from secondary" {
			t.Fatalf("%s chunked=%v: %d %q", c.method, c.chunked, resp.StatusCode, body)
		}
	}
	_, bodies := sec.seen()
	if len(bodies) != 4 || bodies[1] != `{"a":1}` || bodies[2] != `{"a":1}` || bodies[3] != `{"a":1}` {
		t.Fatalf("secondary got bodies %q", bodies)
	}
	sec.mu.Lock()
	paths := append([]string(nil), sec.paths...)
	sec.mu.Unlock()
	for _, p := range paths {
		if p != "/v1/x" {
			t.Fatalf("secondary got paths %q", paths)
		}
	}

	g2 := startGateway(t, fallbackConfig(downURL(t), downURL(t), "{secondary: backup, stale_if_error: 1m}"))
	resp, body := do(t, "GET", g2.base+"/v1/x", "", false)
	if resp.StatusCode != 502 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("both down: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	problemTypeOf(t, body)
}

// A secondary that is unknown, the upstream itself, or has a secondary
// of its own is refused with file:line; stale_if_error on any upstream
// is fine.
func TestUpstreamFallbackConfigErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ fallback, secondary, want string }{
		{"{stale_if_error: 30s}", "", ""},
		{"{secondary: backup}", "http://127.0.0.1:2", ""},
		{"{stale_if_error: -1s}", "", "x.yaml:10: upstreams[0].fallback.stale_if_error: negative"},
		{"{secondary: nosuch}", "", "x.yaml:10: upstreams[0].fallback.secondary: unknown upstream \"nosuch\" (upstreams: partner)"},
		{"{secondary: partner}", "", "x.yaml:10: upstreams[0].fallback.secondary: upstream \"partner\" cannot be its own secondary"},
		{"{secondary: backup}", "http://127.0.0.1:2\n    fallback: {secondary: partner}", "upstreams[0].fallback.secondary: upstream \"backup\" has a secondary of its own"},
	} {
		_, err := parseString(fallbackConfig("http://127.0.0.1:1", c.secondary, c.fallback))
		if c.want == "" {
			if err != nil {
				t.Errorf("valid config refused: %v", err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want %q", c.fallback, err, c.want)
		}
	}
}

// Every fallback block that validates builds a gateway (a secondary is
// always resolvable when executors are built).
func FuzzUpstreamFallbackConfig(f *testing.F) {
	for _, c := range [][2]string{{"{stale_if_error: 30s}", ""}, {"{secondary: backup}", "http://127.0.0.1:2"},
		{"{secondary: backup, stale_if_error: 1m}", "http://127.0.0.1:2"}, {"{secondary: partner}", ""},
		{"{secondary: backup}", "http://127.0.0.1:2\n    fallback: {secondary: partner}"}, {"{stale_if_error: -1s}", ""}} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, fallback, secondary string) {
		cfg, err := parseString(fallbackConfig("http://127.0.0.1:1", secondary, fallback))
		if err != nil {
			return
		}
		g, err := gateway.New(cfg, gateway.Options{})
		if err != nil {
			t.Fatalf("validated config does not build: %v", err)
		}
		_ = g.CloseUpstreamStore()
	})
}
