package gateway_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/resilience"
)

// flaky is a local upstream that misbehaves on cue: answer(n, r) gives
// the status and headers of its n-th request (1-based). It records every
// request's idempotency key, body and X-Forwarded-For.
type flaky struct {
	srv    *httptest.Server
	mu     sync.Mutex
	keys   []string
	bodies []string
	paths  []string
	xff    []string
	n      atomic.Int64
}

func newFlaky(t *testing.T, answer func(n int64, w http.ResponseWriter)) *flaky {
	t.Helper()
	f := &flaky{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.keys = append(f.keys, r.Header.Get("Idempotency-Key"))
		f.bodies = append(f.bodies, string(b))
		f.paths = append(f.paths, r.URL.Path)
		f.xff = append(f.xff, r.Header.Get("X-Forwarded-For"))
		f.mu.Unlock()
		answer(f.n.Add(1), w)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *flaky) seen() (keys, bodies []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.keys...), append([]string(nil), f.bodies...)
}

// failFirst answers 503 (with the given Retry-After, if any) to the first
// n requests, then 200.
func failFirst(n int64, retryAfter string) func(int64, http.ResponseWriter) {
	return func(i int64, w http.ResponseWriter) {
		if i <= n {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(503)
			return
		}
		fmt.Fprint(w, "ok")
	}
}

func upstreamConfig(url, upstream, route string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
store: {type: memory}
upstreams:
  - name: partner
    url: %s
    timeout: 5s
    attempt_timeout: 1s
    retry: {base_delay: 1ms, max_delay: 10ms%s}
routes:
  - name: api
    match: {path_prefix: /v1}
    upstream: partner
    timeout: 5s
%s`, url, upstream, route)
}

// chunked makes the request body of unknown length, so that it takes
// the ReverseProxy path.
func do(t *testing.T, method, url, body string, chunked bool, hdr ...string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader = strings.NewReader(body)
	if chunked {
		rd = io.MultiReader(strings.NewReader(body[:len(body)/2]), strings.NewReader(body[len(body)/2:]))
	}
	if body == "" {
		rd = nil
	}
	req, err := http.NewRequest(method, url, rd)
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

func problemTypeOf(t *testing.T, body string) string {
	t.Helper()
	var p struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("not problem+json: %q", body)
	}
	return strings.TrimPrefix(p.Type, "https://github.com/leveehq/levee/blob/main/docs/problems.md#")
}

// A 503 with Retry-After is waited out (never retried earlier) and the
// retry's answer is the response, on both proxy paths.
func TestUpstreamRetryHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		f := newFlaky(t, failFirst(1, "1"))
		g := startGateway(t, upstreamConfig(f.srv.URL, "", ""))
		start := time.Now()
		resp, body := do(t, "PUT", g.base+"/v1/x", `{"a":1}`, chunked)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("chunked=%v: %d %q", chunked, resp.StatusCode, body)
		}
		if waited := time.Since(start); waited < time.Second {
			t.Errorf("chunked=%v: retried after %v, before Retry-After: 1", chunked, waited)
		}
		if _, bodies := f.seen(); len(bodies) != 2 || bodies[0] != bodies[1] || bodies[1] != `{"a":1}` {
			t.Errorf("chunked=%v: bodies %q, want the same body twice", chunked, bodies)
		}
	}
}

// Retry-After above the cap fails fast with upstream-retry-after-too-long
// and the upstream's own Retry-After.
func TestUpstreamRetryAfterAboveCap(t *testing.T) {
	t.Parallel()
	f := newFlaky(t, failFirst(10, "3600"))
	g := startGateway(t, upstreamConfig(f.srv.URL, "", ""))
	resp, body := do(t, "GET", g.base+"/v1/x", "", false)
	if resp.StatusCode != 503 || problemTypeOf(t, body) != "upstream-retry-after-too-long" || resp.Header.Get("Retry-After") != "3600" {
		t.Fatalf("%d %s %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if f.n.Load() != 1 {
		t.Fatalf("%d calls", f.n.Load())
	}
}

// A POST is retried after it was sent only when the upstream dedupes by
// its key, and then every attempt carries the same key and body; without
// dedupes_keys, a POST with a key is attempted once (the key is forwarded
// but does not make it retryable).
func TestUpstreamPostRetriedOnlyWithDedupedKey(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		dedupes bool
		key     string
		want    int64
	}{
		{false, "", 1}, {false, "k-1", 1}, {true, "", 1}, {true, "k-1", 3},
	} {
		for _, chunked := range []bool{false, true} {
			f := newFlaky(t, failFirst(10, ""))
			g := startGateway(t, upstreamConfig(f.srv.URL, fmt.Sprintf(", dedupes_keys: %v", c.dedupes), ""))
			var hdr []string
			if c.key != "" {
				hdr = []string{"Idempotency-Key", c.key}
			}
			resp, _ := do(t, "POST", g.base+"/v1/charges", `{"amount":100}`, chunked, hdr...)
			if resp.StatusCode != 503 {
				t.Errorf("%+v chunked=%v: status %d, want the upstream's 503", c, chunked, resp.StatusCode)
			}
			keys, bodies := f.seen()
			if int64(len(keys)) != c.want {
				t.Errorf("%+v chunked=%v: %d attempts, want %d", c, chunked, len(keys), c.want)
			}
			for i := range keys {
				if keys[i] != c.key || bodies[i] != `{"amount":100}` {
					t.Errorf("%+v chunked=%v: attempt %d carried key %q body %q", c, chunked, i, keys[i], bodies[i])
				}
			}
		}
	}
}

// AutoKey: a POST without a key gets one, byte-identical on every attempt.
func TestUpstreamAutoKeySameKeyEveryAttempt(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		f := newFlaky(t, failFirst(2, ""))
		g := startGateway(t, upstreamConfig(f.srv.URL, ", dedupes_keys: true, auto_key: true", ""))
		resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":100}`, chunked)
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("chunked=%v: %d %q", chunked, resp.StatusCode, body)
		}
		keys, bodies := f.seen()
		if len(keys) != 3 || keys[0] == "" || keys[0] != keys[1] || keys[1] != keys[2] {
			t.Fatalf("chunked=%v: keys %q, want one generated key on all 3 attempts", chunked, keys)
		}
		for _, b := range bodies {
			if b != `{"amount":100}` {
				t.Fatalf("chunked=%v: bodies %q", chunked, bodies)
			}
		}
	}
	// The caller's own key is kept, not replaced.
	f := newFlaky(t, failFirst(1, ""))
	g := startGateway(t, upstreamConfig(f.srv.URL, ", dedupes_keys: true, auto_key: true", ""))
	do(t, "POST", g.base+"/v1/charges", `{}`, false, "Idempotency-Key", "mine")
	if keys, _ := f.seen(); len(keys) != 2 || keys[0] != "mine" || keys[1] != "mine" {
		t.Fatalf("keys %q", keys)
	}
}

const breakerCfg = `
    breaker: {consecutive_failures: 2, cooldown: 1m}`

// The breaker opens after consecutive failures and then answers 503
// problem+json with Retry-After without any I/O; a reload that leaves the
// upstream's settings alone keeps it open, one that changes them starts
// afresh.
func TestUpstreamBreakerOpensAndSurvivesReload(t *testing.T) {
	t.Parallel()
	f := newFlaky(t, func(int64, http.ResponseWriter) {})
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f.n.Add(1); w.WriteHeader(500) })
	cfg := upstreamConfig(f.srv.URL, ", max_attempts: 1}"+breakerCfg+"\n    #{", "")
	g := startGateway(t, cfg)
	for i := 0; i < 2; i++ {
		if resp, _ := do(t, "GET", g.base+"/v1/x", "", false); resp.StatusCode != 500 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	check := func(when string) {
		t.Helper()
		resp, body := do(t, "GET", g.base+"/v1/x", "", false)
		if resp.StatusCode != 503 || problemTypeOf(t, body) != "upstream-circuit-open" || resp.Header.Get("Retry-After") == "" ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
			t.Fatalf("%s: %d %q %q", when, resp.StatusCode, resp.Header, body)
		}
		if f.n.Load() != 2 {
			t.Fatalf("%s: the open breaker let a request through (%d calls)", when, f.n.Load())
		}
	}
	check("open")
	if st := g.srv.Gateway().Executor("partner").Parts().Breaker.State(); st != resilience.BreakerOpen {
		t.Fatalf("state %v", st)
	}
	// An unrelated change: the breaker stays open.
	if err := os.WriteFile(g.path, []byte(cfg+"  - name: other\n    match: {path: /other}\n    upstream: "+f.srv.URL+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	check("after an unrelated reload")
	// The upstream's settings change: a new breaker, closed.
	if err := os.WriteFile(g.path, []byte(strings.Replace(cfg, "cooldown: 1m", "cooldown: 2m", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, "GET", g.base+"/v1/x", "", false); resp.StatusCode != 500 || f.n.Load() != 3 {
		t.Fatalf("after a settings change: %d, %d calls", resp.StatusCode, f.n.Load())
	}
}

// The bulkhead rejects the (N+1)-th request in flight with
// upstream-bulkhead-full, without sending it.
func TestUpstreamBulkheadRejects(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		arrived <- struct{}{}
		select {
		case <-release:
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	g := startGateway(t, upstreamConfig(srv.URL, "}\n    bulkhead: {max_in_flight: 1}\n    #{", ""))
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get(g.base + "/v1/slow")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("first request never arrived")
	}
	resp, body := do(t, "GET", g.base+"/v1/x", "", false)
	if resp.StatusCode != 503 || problemTypeOf(t, body) != "upstream-bulkhead-full" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if calls.Load() != 1 {
		t.Fatalf("%d calls", calls.Load())
	}
	release <- struct{}{}
	if code := <-done; code != 200 {
		t.Fatalf("first request: %d", code)
	}
}

// cutThenClose accepts one connection, reads the request whole, then
// closes it and the listener: the first attempt's outcome is unknown,
// every later attempt is a connect error (nothing sent).
func cutThenClose(t *testing.T) (addr string, calls *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	calls = new(atomic.Int64)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		calls.Add(1)
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), calls
}

// TestRetriedUnknownOutcomeHoldsTheKey: an attempt that reached the
// upstream whole and lost its answer makes the request's outcome unknown
// even when the last retry failed to connect (nothing sent), so the key
// is held and the client's retry never runs it again — on both paths.
func TestRetriedUnknownOutcomeHoldsTheKey(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		addr, calls := cutThenClose(t)
		g := startGateway(t, upstreamConfig("http://"+addr, ", dedupes_keys: true",
			"    idempotency: {required: true, on_unknown_outcome: hold}\n"))
		resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":100}`, chunked, "Idempotency-Key", "order-1")
		if resp.StatusCode != 502 {
			t.Fatalf("chunked=%v: first: %d %q", chunked, resp.StatusCode, body)
		}
		resp, body = do(t, "POST", g.base+"/v1/charges", `{"amount":100}`, chunked, "Idempotency-Key", "order-1")
		if resp.StatusCode != 409 || problemTypeOf(t, body) != "idempotency-outcome-unknown" {
			t.Fatalf("chunked=%v: retry: %d %q", chunked, resp.StatusCode, body)
		}
		if calls.Load() != 1 {
			t.Fatalf("chunked=%v: %d calls", chunked, calls.Load())
		}
	}
}

// An egress route removes its prefix, adds no X-Forwarded-For, and runs
// the upstream's policies.
func TestEgressRoute(t *testing.T) {
	t.Parallel()
	f := newFlaky(t, failFirst(1, ""))
	g := startGateway(t, upstreamConfig(f.srv.URL+"/api", ", dedupes_keys: true, auto_key: true",
		"  - name: egress-partner\n    match: {path_prefix: /egress/partner}\n    upstream: partner\n    egress: true\n    timeout: 5s\n"))
	resp, body := do(t, "POST", g.base+"/egress/partner/v1/charges", `{"amount":1}`, false, "X-Forwarded-For", "10.1.2.3")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.paths) != 2 || f.paths[0] != "/api/v1/charges" || f.xff[0] != "" || f.keys[0] == "" || f.keys[0] != f.keys[1] {
		t.Fatalf("paths %q xff %q keys %q", f.paths, f.xff, f.keys)
	}
}

// levee validate refuses, with file:line and field, an unknown upstream,
// a retry policy that can outlast the deadline, out-of-range settings.
func TestUpstreamConfigErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ upstream, route, want string }{
		{"", "", ""},
		{", max_attempts: 200", "", "x.yaml:9: upstreams[0].retry.max_attempts: retry.max_attempts 200 is out of range"},
		{", max_attempts: 10", "", "x.yaml:9: upstreams[0].retry.max_attempts: retry.max_attempts 10 × attempt_timeout 1s + 9 × retry.max_delay 10ms = 10.09s exceeds timeout 5s"},
		{"}\n    budget: {ratio: 11}\n    #{", "", "x.yaml:10: upstreams[0].budget.ratio: budget.ratio 11 is above 10"},
		{"}\n    breaker: {failure_ratio: 2}\n    #{", "", "x.yaml:10: upstreams[0].breaker.failure_ratio:"},
		{"}\n    limit: {policies: [100/fortnight]}\n    #{", "", "x.yaml:10: upstreams[0].limit.policies[0]:"},
		{", auto_key: true", "", "x.yaml:9: upstreams[0].retry.auto_key: needs retry.dedupes_keys"},
		{"", "  - name: b\n    match: {path: /b}\n    upstream: nosuch\n", "x.yaml:17: routes[1].upstream: unknown upstream \"nosuch\" (upstreams: partner)"},
		{"", "  - name: b\n    match: {path: /b}\n    upstream: partner\n    timeout: 1s\n", "x.yaml:18: routes[1].timeout: 1s is shorter than upstream \"partner\"'s timeout 5s"},
		{"", "  - name: b\n    match: {path: /b}\n    upstream: http://x\n    egress: true\n", "routes[1].match.path_prefix: an egress route needs a path_prefix"},
	} {
		_, err := parseString(upstreamConfig("http://127.0.0.1:1", c.upstream, c.route))
		if c.want == "" {
			if err != nil {
				t.Errorf("valid config refused: %v", err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %q: err = %v, want %q", c.upstream, c.route, err, c.want)
		}
	}
}

// An upstream that does not answer within the timeouts is a 504
// upstream-timeout (not a 502), whichever deadline fires first, on both
// paths; the attempts and retries are exported on the gateway's registry.
func TestUpstreamTimeoutIs504(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	cfg := strings.NewReplacer("timeout: 5s", "timeout: 300ms", "attempt_timeout: 1s", "attempt_timeout: 300ms").
		Replace(upstreamConfig(srv.URL, ", max_attempts: 1", ""))
	g := startGateway(t, cfg)
	for _, chunked := range []bool{false, true} {
		resp, body := do(t, "PUT", g.base+"/v1/x", "{}", chunked)
		if resp.StatusCode != 504 || problemTypeOf(t, body) != "upstream-timeout" {
			t.Fatalf("chunked=%v: %d %q", chunked, resp.StatusCode, body)
		}
	}
	mfs, err := g.srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "levee_resilience_attempts_total" {
			for _, m := range mf.GetMetric() {
				found = found || m.GetCounter().GetValue() >= 2
			}
		}
	}
	if !found {
		t.Fatal("levee_resilience_attempts_total not exported with 2 attempts")
	}
}

// The client-side quota: a request beyond the upstream's quota is not
// sent and gets 429 upstream-quota-exhausted with Retry-After.
func TestUpstreamQuota(t *testing.T) {
	t.Parallel()
	f := newFlaky(t, failFirst(0, ""))
	g := startGateway(t, upstreamConfig(f.srv.URL, "}\n    limit: {policies: [1/minute burst 1]}\n    #{", ""))
	if resp, _ := do(t, "GET", g.base+"/v1/x", "", false); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	resp, body := do(t, "GET", g.base+"/v1/x", "", false)
	if resp.StatusCode != 429 || problemTypeOf(t, body) != "upstream-quota-exhausted" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%d %q %q", resp.StatusCode, resp.Header, body)
	}
	if f.n.Load() != 1 {
		t.Fatalf("%d calls", f.n.Load())
	}
}

// An egress route to an https third party (the ReverseProxy path): the
// prefix is removed, no X-Forwarded-* leaves, and a 503 is retried with
// the same generated key.
func TestEgressRouteHTTPS(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		seen  []string
		calls atomic.Int64
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		seen = append(seen, r.URL.Path+" key="+r.Header.Get("Idempotency-Key")+" xff="+r.Header.Get("X-Forwarded-For")+r.Header.Get("X-Forwarded-Host"))
		mu.Unlock()
		if calls.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(srv.Close)
	cfg, err := parseString(upstreamConfig(srv.URL, ", dedupes_keys: true, auto_key: true",
		"  - name: egress\n    match: {path_prefix: /egress/partner}\n    upstream: partner\n    egress: true\n    timeout: 5s\n"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(cfg, gateway.Options{Transport: srv.Client().Transport})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "/egress/partner/v1/charges", strings.NewReader(`{"amount":1}`))
	req.Header.Set("X-Forwarded-For", "10.1.2.3")
	w := httptest.NewRecorder()
	g.ServeHTTP(w, req)
	if w.Code != 200 || w.Body.String() != "ok" {
		t.Fatalf("%d %q", w.Code, w.Body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != seen[1] || !strings.HasPrefix(seen[0], "/v1/charges key=") || strings.HasSuffix(seen[0], "key= xff=") || !strings.HasSuffix(seen[0], " xff=") {
		t.Fatalf("the partner saw %q", seen)
	}
}

// FuzzUpstreamsConfig: whatever upstreams block validation accepts, the
// gateway builds (resilience.New agrees with the YAML validation), and
// every route naming an upstream names one that exists.
func FuzzUpstreamsConfig(f *testing.F) {
	for _, u := range []string{"", ", max_attempts: 200", ", max_attempts: 10", ", auto_key: true, dedupes_keys: true",
		"}\n    budget: {ratio: 11}\n    #{", "}\n    breaker: {failure_ratio: 0.5, window: 1s, min_calls: 3}\n    #{",
		"}\n    limit: {policies: [100/s burst 100, 5000/day]}\n    #{", "}\n    throttle: {k: 0.5}\n    #{",
		"}\n    bulkhead: {max_in_flight: 2, max_wait: 1s}\n    pace: {max_pause: 1m}\n    #{", ", statuses: [500, 501]"} {
		f.Add(u, "partner")
	}
	f.Fuzz(func(t *testing.T, upstream, ref string) {
		y := strings.Replace(upstreamConfig("http://127.0.0.1:1", upstream, ""), "upstream: partner", "upstream: "+ref, 1)
		cfg, err := parseString(y)
		if err != nil {
			return
		}
		names := map[string]bool{}
		for _, u := range cfg.Upstreams {
			names[u.Name] = true
		}
		for _, r := range cfg.Routes {
			if !strings.Contains(r.Upstream, "://") && !names[r.Upstream] {
				t.Fatalf("route %q names unknown upstream %q", r.Name, r.Upstream)
			}
		}
		if _, err := gateway.New(cfg, gateway.Options{}); err != nil {
			t.Fatalf("validated config does not build: %v\n%s", err, y)
		}
	})
}

// upstream_store cannot change on reload (the connection is opened once);
// upstreams can.
func TestUpstreamStoreNeedsRestart(t *testing.T) {
	t.Parallel()
	a, err := parseString(upstreamConfig("http://127.0.0.1:1", "", ""))
	if err != nil {
		t.Fatal(err)
	}
	b, err := parseString(upstreamConfig("http://127.0.0.1:2", ", max_attempts: 2", "") + "upstream_store: {type: redis}\n")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(a.RestartChanges(b), " ")
	if !strings.Contains(got, "upstream_store.type") || strings.Contains(got, "upstreams") {
		t.Fatalf("restart changes: %q", got)
	}
}
