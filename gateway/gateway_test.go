package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/internal/syncbuf"
)

// upstream records what reached it.
type upstream struct {
	srv      *httptest.Server
	calls    atomic.Int64
	finished atomic.Int64 // calls whose delay ran out without being canceled
	mu       sync.Mutex
	last     *http.Request
	body     string
	delay    time.Duration
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := u.calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.last, u.body = r.Clone(context.Background()), string(b)
		d := u.delay
		u.mu.Unlock()
		if d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		u.finished.Add(1)
		if r.URL.Path == "/v1/big" {
			w.Write([]byte(strings.Repeat("x", 5000)))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"n":%d,"path":%q,"query":%q}`, n, r.URL.Path, r.URL.RawQuery)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) lastRequest() (*http.Request, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last, u.body
}

type running struct {
	srv  *gateway.Server
	base string
	path string
	logs *syncbuf.Buffer
}

func startGateway(t testing.TB, yaml string) *running {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "levee.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	srv, err := gateway.NewServer(context.Background(), path, gateway.ServerOptions{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &running{srv: srv, base: "http://" + srv.Addr(), path: path, logs: logs}
}

func baseConfig(up string, extra string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {type: memory}
trusted_proxies: [10.9.0.0/16]
server: {max_body_bytes: 1KiB}
routes:
  - name: pay
    match: {path_prefix: /v1/pay}
    upstream: %s
    timeout: 2s
    idempotency:
      required: true
      tenant_header: Authorization
  - name: slow
    match: {path: /v1/slow}
    upstream: %s
    timeout: 100ms
  - name: plain
    match: {path_prefix: /v1}
    upstream: %s/base
%s`, up, up, up, extra)
}

func send(t *testing.T, method, url, body string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func problemOf(t *testing.T, resp *http.Response, body string) (typ string, doc map[string]any) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want problem+json; body %s", ct, body)
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	s, _ := doc["type"].(string)
	return s[strings.Index(s, "#")+1:], doc
}

func TestProxyBasics(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	g := startGateway(t, baseConfig(u.srv.URL, ""))

	resp, body := send(t, "GET", g.base+"/v1/things?a=1", "")
	if resp.StatusCode != 201 || !strings.Contains(body, `"path":"/base/v1/things"`) || !strings.Contains(body, `"query":"a=1"`) {
		t.Fatalf("plain proxy: %d %s", resp.StatusCode, body)
	}
	r, _ := u.lastRequest()
	if r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Proto") != "http" || r.Header.Get("X-Forwarded-Host") == "" {
		t.Fatalf("X-Forwarded-* = %q %q %q", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"))
	}
	// An untrusted client cannot inject a forwarded chain.
	send(t, "GET", g.base+"/v1/x", "", "X-Forwarded-For", "6.6.6.6")
	if r, _ := u.lastRequest(); r.Header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Fatalf("spoofed X-Forwarded-For passed: %q", r.Header.Get("X-Forwarded-For"))
	}
	// Client-address headers from an untrusted sender are dropped.
	send(t, "GET", g.base+"/v1/x", "", "X-Real-IP", "6.6.6.6", "True-Client-IP", "6.6.6.6")
	if r, _ := u.lastRequest(); r.Header.Get("X-Real-Ip") != "" || r.Header.Get("True-Client-Ip") != "" {
		t.Fatalf("spoofable client-IP headers passed: %v", r.Header)
	}
	// Request ids: generated, echoed, propagated; a bad one is replaced.
	resp, _ = send(t, "GET", g.base+"/v1/x", "")
	id := resp.Header.Get("X-Request-Id")
	if r, _ := u.lastRequest(); len(id) != 32 || r.Header.Get("X-Request-Id") != id {
		t.Fatalf("generated request id %q, upstream saw %q", id, r.Header.Get("X-Request-Id"))
	}
	resp, _ = send(t, "GET", g.base+"/v1/x", "", "X-Request-Id", "abc-123")
	if resp.Header.Get("X-Request-Id") != "abc-123" {
		t.Fatalf("request id not propagated: %q", resp.Header.Get("X-Request-Id"))
	}
	resp, _ = send(t, "GET", g.base+"/v1/x", "", "X-Request-Id", "bad id with spaces")
	if resp.Header.Get("X-Request-Id") == "bad id with spaces" {
		t.Fatal("invalid request id echoed")
	}
	// Dot segments are resolved before routing.
	resp, body = send(t, "GET", g.base+"/other/../v1/z", "")
	if resp.StatusCode != 201 || !strings.Contains(body, `"/base/v1/z"`) {
		t.Fatalf("dot segments: %d %s", resp.StatusCode, body)
	}
	// No route.
	resp, body = send(t, "GET", g.base+"/nothing", "")
	if typ, _ := problemOf(t, resp, body); resp.StatusCode != 404 || typ != "route-not-found" {
		t.Fatalf("no route: %d %s", resp.StatusCode, body)
	}
	// Prefix matching is on segment boundaries: /v1/payments is not /v1/pay.
	resp, _ = send(t, "POST", g.base+"/v1/payments", "{}")
	if resp.StatusCode != 201 {
		t.Fatalf("/v1/payments went to the pay route (key required): %d", resp.StatusCode)
	}
}

func TestProxyErrorsAndLimits(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	u.delay = time.Second
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String()
	dead.Close()
	g := startGateway(t, baseConfig(u.srv.URL, fmt.Sprintf("  - name: down\n    match: {path: /down}\n    upstream: %s\n", deadURL)))

	resp, body := send(t, "GET", g.base+"/down", "")
	typ, doc := problemOf(t, resp, body)
	if resp.StatusCode != 502 || typ != "upstream-unavailable" || doc["route"] != "down" || !strings.Contains(body, "connection refused") {
		t.Fatalf("dead upstream: %d %s", resp.StatusCode, body)
	}
	resp, body = send(t, "GET", g.base+"/v1/slow", "")
	if typ, _ := problemOf(t, resp, body); resp.StatusCode != 504 || typ != "upstream-timeout" {
		t.Fatalf("slow upstream: %d %s", resp.StatusCode, body)
	}
	resp, body = send(t, "PUT", g.base+"/v1/x", strings.Repeat("b", 2000))
	if typ, _ := problemOf(t, resp, body); resp.StatusCode != 413 || typ != "request-body-too-large" {
		t.Fatalf("huge body: %d %s", resp.StatusCode, body)
	}
	// Chunked (unknown length) bodies are bounded too.
	req, _ := http.NewRequest("PUT", g.base+"/v1/x", io.MultiReader(strings.NewReader(strings.Repeat("c", 3000))))
	req.ContentLength = -1
	cresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cresp.Body.Close()
	if cresp.StatusCode != 413 {
		t.Fatalf("huge chunked body: %d", cresp.StatusCode)
	}
	// Huge headers: 431 from the server.
	resp, _ = send(t, "GET", g.base+"/v1/x", "", "X-Big", strings.Repeat("h", 100<<10))
	if resp.StatusCode != 431 {
		t.Fatalf("huge header: %d", resp.StatusCode)
	}
}

func TestIdempotencyThroughGateway(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	g := startGateway(t, baseConfig(u.srv.URL, ""))
	url := g.base + "/v1/pay"

	resp, body := send(t, "POST", url, `{"amount":1}`, "Content-Type", "application/json")
	if typ, _ := problemOf(t, resp, body); resp.StatusCode != 400 || typ != "idempotency-key-missing" {
		t.Fatalf("missing key: %d %s", resp.StatusCode, body)
	}
	first, b1 := send(t, "POST", url, `{"amount":1}`, "Idempotency-Key", "k1", "Content-Type", "application/json", "Authorization", "A")
	second, b2 := send(t, "POST", url, `{ "amount": 1 }`, "Idempotency-Key", `"k1"`, "Content-Type", "application/json", "Authorization", "A")
	if first.StatusCode != 201 || second.StatusCode != 201 || b1 != b2 || second.Header.Get("Idempotent-Replayed") != "true" || u.calls.Load() != 1 {
		t.Fatalf("replay: %d %q / %d %q replayed=%q calls=%d", first.StatusCode, b1, second.StatusCode, b2, second.Header.Get("Idempotent-Replayed"), u.calls.Load())
	}
	if second.Header.Get("X-Request-Id") == first.Header.Get("X-Request-Id") {
		t.Fatal("a replay reused the first request's X-Request-Id")
	}
	resp, body = send(t, "POST", url, `{"amount":2}`, "Idempotency-Key", "k1", "Content-Type", "application/json", "Authorization", "A")
	if typ, _ := problemOf(t, resp, body); resp.StatusCode != 422 || typ != "idempotency-key-mismatch" {
		t.Fatalf("mismatch: %d %s", resp.StatusCode, body)
	}
	resp, _ = send(t, "POST", url, `{"amount":1}`, "Idempotency-Key", "k1", "Content-Type", "application/json", "Authorization", "B")
	if resp.Header.Get("Idempotent-Replayed") != "" || u.calls.Load() != 2 {
		t.Fatal("tenant B received tenant A's stored response")
	}
	// In flight: 409 with Retry-After.
	u.mu.Lock()
	u.delay = 500 * time.Millisecond
	u.mu.Unlock()
	done := sendAsync("POST", url, `{}`, "Idempotency-Key", "k2")
	poll.Until(t, 5*time.Second, func() bool { return u.calls.Load() >= 3 }, "the first of the in-flight pair never reached the upstream")
	resp, body = send(t, "POST", url, `{}`, "Idempotency-Key", "k2")
	if typ, _ := problemOf(t, resp, body); resp.StatusCode != 409 || typ != "idempotency-in-flight" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("in flight: %d %s", resp.StatusCode, body)
	}
	if r := <-done; r.err != nil || r.status != 201 {
		t.Fatalf("first of the in-flight pair: %d %v", r.status, r.err)
	}
	// Access log and metrics carry the outcome; keys and credentials never appear in logs.
	logs := g.logs.String()
	if !strings.Contains(logs, `"idempotency":"replayed"`) || !strings.Contains(logs, `"route":"pay"`) {
		t.Fatalf("access log lacks outcomes: %s", logs)
	}
	if strings.Contains(logs, "k1") || strings.Contains(logs, `"A"`) {
		t.Fatalf("access log leaks a key or credential: %s", logs)
	}
	metrics := get(t, "http://"+g.srv.AdminAddr()+"/metrics")
	for _, want := range []string{
		`levee_idempotency_outcomes_total{outcome="replayed",route="pay"} 1`,
		`levee_idempotency_outcomes_total{outcome="mismatch",route="pay"} 1`,
		`levee_http_requests_total{code="201",idempotency="replayed",method="POST",route="pay"} 1`,
		`levee_store_operation_duration_seconds_count{op="claim"}`,
		`levee_http_request_duration_seconds_bucket{route="pay"`,
		`levee_upstream_request_duration_seconds_bucket{route="pay"`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	g := startGateway(t, baseConfig(u.srv.URL, "")+"\n")
	admin := "http://" + g.srv.AdminAddr()
	if get(t, admin+"/healthz") != "ok\n" || get(t, admin+"/readyz") != "ready\n" {
		t.Fatal("health endpoints")
	}
	cfg := get(t, admin+"/config")
	// The YAML schema as written: field names, durations with units,
	// defaults filled in (the idempotency block's lease included).
	for _, want := range []string{"- name: pay", "lease: 30s", "read_header_timeout: 10s", "max_header_bytes: 64KiB", "engine: levee"} {
		if !strings.Contains(cfg, want) {
			t.Fatalf("/config lacks %q:\n%s", want, cfg)
		}
	}
	if false {
		t.Fatalf("/config: %s", cfg)
	}
	// Connections are counted by the server that serves them: an HTTP/1.0
	// request is outside the front server's subset and goes to net/http.
	c, err := net.Dial("tcp", g.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /v1/x HTTP/1.0\r\nHost: h\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 201 {
		t.Fatalf("HTTP/1.0 through the gateway: %v %v", resp, err)
	}
	c.Close()
	metrics := get(t, admin+"/metrics")
	if !strings.Contains(metrics, `levee_http_connections_total{server="net/http"} 1`) ||
		!strings.Contains(metrics, `levee_http_connections_total{server="levee"}`) {
		t.Fatalf("connection metrics:\n%s", grep(metrics, "levee_http_connections_total"))
	}
	// The profiler is off unless admin.pprof is set.
	if resp, err := http.Get(admin + "/debug/pprof/"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("pprof without admin.pprof: %v %v", resp.StatusCode, err)
	}
	g2 := startGateway(t, strings.Replace(baseConfig(u.srv.URL, ""), "admin: {listen: 127.0.0.1:0}", "admin: {listen: 127.0.0.1:0, pprof: true}", 1))
	if !strings.Contains(get(t, "http://"+g2.srv.AdminAddr()+"/debug/pprof/"), "goroutine") {
		t.Fatal("admin.pprof: true does not serve /debug/pprof/")
	}
}

func TestReload(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	g := startGateway(t, baseConfig(u.srv.URL, ""))
	// Valid change: a new route appears.
	if err := os.WriteFile(g.path, []byte(baseConfig(u.srv.URL, fmt.Sprintf("  - name: extra\n    match: {path: /extra}\n    upstream: %s\n", u.srv.URL))), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err != nil {
		t.Fatalf("valid reload: %v", err)
	}
	if resp, _ := send(t, "GET", g.base+"/extra", ""); resp.StatusCode != 201 {
		t.Fatalf("new route after reload: %d", resp.StatusCode)
	}
	// Invalid file: refused, old config keeps serving.
	if err := os.WriteFile(g.path, []byte("routes:\n  - name: x\n    upstreem: nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := g.srv.Reload()
	if err == nil || !strings.Contains(err.Error(), "upstreem") {
		t.Fatalf("invalid reload = %v", err)
	}
	if resp, _ := send(t, "GET", g.base+"/extra", ""); resp.StatusCode != 201 {
		t.Fatalf("old config stopped serving after a bad reload: %d", resp.StatusCode)
	}
	// A store change needs a restart.
	if err := os.WriteFile(g.path, []byte(strings.Replace(baseConfig(u.srv.URL, ""), "type: memory", "type: sqlite", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("store change on reload = %v", err)
	}
	// Server timeouts need a restart too.
	os.WriteFile(g.path, []byte(strings.Replace(baseConfig(u.srv.URL, ""), "server: {max_body_bytes: 1KiB}", "server: {max_body_bytes: 1KiB, read_timeout: 5s}", 1)), 0o600)
	if err := g.srv.Reload(); err == nil || !strings.Contains(err.Error(), "server.read_timeout cannot change on reload") {
		t.Fatalf("server timeout change on reload = %v", err)
	}
	m := get(t, "http://"+g.srv.AdminAddr()+"/metrics")
	if !strings.Contains(m, `levee_config_reloads_total{result="success"} 1`) || !strings.Contains(m, `levee_config_reloads_total{result="failure"} 3`) {
		t.Fatalf("reload metrics:\n%s", grep(m, "reloads"))
	}
}

func TestReloadOnFileChange(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "levee.yaml")
	os.WriteFile(path, []byte(baseConfig(u.srv.URL, "")), 0o600)
	srv, err := gateway.NewServer(context.Background(), path, gateway.ServerOptions{Watch: true, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	// Replace the file the way editors do: write a new file, rename over.
	tmp := filepath.Join(dir, "levee.yaml.tmp")
	os.WriteFile(tmp, []byte(baseConfig(u.srv.URL, fmt.Sprintf("  - name: extra\n    match: {path: /extra}\n    upstream: %s\n", u.srv.URL))), 0o600)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool {
		resp, _ := send(t, "GET", "http://"+srv.Addr()+"/extra", "")
		return resp.StatusCode == 201
	}, "file change was not picked up")
}

// inFlight sends GET /v1/x and returns once the upstream has it; the
// channel gets the status.
func inFlight(t *testing.T, g *running, u *upstream) <-chan result {
	done := sendAsync("GET", g.base+"/v1/x", "")
	poll.Until(t, 5*time.Second, func() bool { return u.calls.Load() > 0 }, "the request never reached the upstream")
	return done
}

// result is what sendAsync delivers.
type result struct {
	status int
	body   string
	err    error
}

// sendAsync is send in a goroutine of its own: it reports failures on the
// channel instead of calling t.Fatal (which must not be called from a
// goroutine other than the test's).
func sendAsync(method, url, body string, hdr ...string) <-chan result {
	done := make(chan result, 1)
	go func() {
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			done <- result{err: err}
			return
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{status: resp.StatusCode, body: string(b), err: err}
	}()
	return done
}

// A client that hangs up does not abort its upstream request, on either
// engine: it runs to completion (docs/configuration.md).
func TestClientDisconnectDoesNotAbortTheUpstream(t *testing.T) {
	t.Parallel()
	for _, engine := range []string{"levee", "net/http"} {
		u := newUpstream(t)
		u.delay = 300 * time.Millisecond
		g := startGateway(t, strings.Replace(baseConfig(u.srv.URL, ""), "server: {max_body_bytes: 1KiB}",
			"server: {max_body_bytes: 1KiB, engine: "+engine+"}", 1))
		c, err := net.Dial("tcp", g.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /v1/charge HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
		poll.Until(t, 5*time.Second, func() bool { return u.calls.Load() > 0 }, "engine %s: the request never reached the upstream", engine)
		c.Close()
		poll.Until(t, 5*time.Second, func() bool { return u.finished.Load() == 1 }, "engine %s: the upstream request was aborted when the client hung up", engine)
	}
}

func TestInFlightRequestsFinishOnTheirConfig(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	u.delay = 300 * time.Millisecond
	g := startGateway(t, baseConfig(u.srv.URL, ""))
	done := inFlight(t, g, u)
	// Remove the route while the request is in flight.
	os.WriteFile(g.path, []byte(strings.Replace(baseConfig(u.srv.URL, ""), "match: {path_prefix: /v1}", "match: {path_prefix: /v2}", 1)), 0o600)
	if err := g.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.status != 201 {
		t.Fatalf("in-flight request after reload: %d %v", r.status, r.err)
	}
	if resp, _ := send(t, "GET", g.base+"/v1/x", ""); resp.StatusCode != 404 {
		t.Fatalf("new request on the removed route: %d", resp.StatusCode)
	}
}

func TestGracefulShutdownDrains(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	u.delay = 300 * time.Millisecond
	g := startGateway(t, baseConfig(u.srv.URL, ""))
	done := inFlight(t, g, u)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := g.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// When Shutdown returns, the in-flight request has been answered: its
	// access-log line (written after the response, before the connection
	// goes idle) is there, and the upstream finished it.
	if u.finished.Load() != 1 || !strings.Contains(g.logs.String(), `"path":"/v1/x","status":201`) {
		t.Fatalf("Shutdown returned before the in-flight request finished (upstream finished %d); logs:\n%s", u.finished.Load(), g.logs)
	}
	if r := <-done; r.err != nil || r.status != 201 {
		t.Fatalf("in-flight request during shutdown: %d %v", r.status, r.err)
	}
	if _, err := http.Get(g.base + "/v1/x"); err == nil {
		t.Fatal("gateway still accepts connections after shutdown")
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// From a trusted proxy the forwarded chain and its view of scheme and
// client-address headers are kept, and levee appends the proxy's address.
func TestTrustedProxyKeepsForwardedChain(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	g := startGateway(t, strings.Replace(baseConfig(u.srv.URL, ""), "trusted_proxies: [10.9.0.0/16]", "trusted_proxies: [127.0.0.1/32]", 1))
	send(t, "GET", g.base+"/v1/x", "", "X-Forwarded-For", "203.0.113.7", "X-Forwarded-Proto", "https", "X-Real-IP", "203.0.113.7")
	r, _ := u.lastRequest()
	if got := r.Header.Get("X-Forwarded-For"); got != "203.0.113.7, 127.0.0.1" {
		t.Fatalf("X-Forwarded-For from a trusted proxy = %q, want the chain extended", got)
	}
	if r.Header.Get("X-Forwarded-Proto") != "https" || r.Header.Get("X-Real-Ip") != "203.0.113.7" {
		t.Fatalf("trusted proxy's headers dropped: %v", r.Header)
	}
}

// An unreachable store is refused at start with an error naming it, rather
// than discovered on the first request.
func TestUnreachableStoreRefusedAtStart(t *testing.T) {
	t.Parallel()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := dead.Addr().String()
	dead.Close()
	path := filepath.Join(t.TempDir(), "levee.yaml")
	os.WriteFile(path, []byte(strings.Replace(baseConfig("http://127.0.0.1:1", ""), "store: {type: memory}", "store: {type: redis, redis: {addr: \""+addr+"\"}}", 1)), 0o600)
	_, err := gateway.NewServer(context.Background(), path, gateway.ServerOptions{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "store redis "+addr) {
		t.Fatalf("start with an unreachable Redis = %v, want an error naming the store", err)
	}
}
