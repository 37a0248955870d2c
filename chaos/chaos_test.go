package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/chaos"
	"github.com/leveehq/levee/gateway"
	"go.uber.org/goleak"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func parse(t *testing.T, y string) *chaos.Config {
	t.Helper()
	c, err := chaos.ParseConfig("faults.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// upstream counts the requests it receives and answers a 1000-byte body.
type upstream struct {
	n    atomic.Int64
	mu   sync.Mutex
	last http.Header
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	u.n.Add(1)
	u.mu.Lock()
	u.last = r.Header.Clone()
	u.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", "1000")
	_, _ = io.WriteString(w, strings.Repeat("x", 1000))
}

func startProxy(t *testing.T, up http.Handler, y string) (*httptest.Server, *chaos.Proxy) {
	t.Helper()
	us := httptest.NewServer(up)
	t.Cleanup(us.Close)
	in, err := chaos.NewInjector(parse(t, y), chaos.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := chaos.NewProxy(us.URL, in, nil)
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(p)
	t.Cleanup(ps.Close)
	return ps, p
}

func client() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestProxyFaults(t *testing.T) {
	t.Parallel()
	u := &upstream{}
	ps, p := startProxy(t, u, `
seed: 7
faults:
  - {name: storm, match: {path: /storm}, status: 429, retry_after: 3s}
  - {name: dated, match: {path: /dated}, status: 503, retry_after: 90s, retry_after_date: true}
  - {name: before, match: {path: /before}, reset: before}
  - {name: after, match: {path: /after}, reset: after}
  - {name: during, match: {path: /during}, reset: during}
  - {name: cut, match: {path: /cut}, truncate: 10}
  - {name: slow, match: {path: /slow}, slow_body: 20KiB}
  - {name: hang, match: {path: /hang}, hang: 50ms}
  - {name: tagged, header: "X-Chaos: outage", status: 500}
  - {name: slowstart, match: {path_prefix: /lat, methods: [GET]}, latency: 5ms, jitter: 5ms}
`)
	c := client()
	resp, _, err := get(t, c, ps.URL+"/storm")
	if err != nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "3" || resp.Header.Get("X-Chaos-Fault") != "storm" {
		t.Fatalf("storm: %v %v", err, resp)
	}
	resp, _, err = get(t, c, ps.URL+"/dated")
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("dated: %v %v", err, resp)
	}
	if at, perr := http.ParseTime(resp.Header.Get("Retry-After")); perr != nil || time.Until(at) < 60*time.Second {
		t.Fatalf("Retry-After %q is not an HTTP-date 90s ahead: %v", resp.Header.Get("Retry-After"), perr)
	}
	if u.n.Load() != 0 {
		t.Fatalf("status faults reached the upstream %d times", u.n.Load())
	}

	_, _, err = get(t, c, ps.URL+"/before")
	if err == nil || u.n.Load() != 0 {
		t.Fatalf("reset before: err %v, upstream saw %d", err, u.n.Load())
	}
	_, _, err = get(t, c, ps.URL+"/after")
	if err == nil || u.n.Load() != 1 {
		t.Fatalf("reset after: err %v, upstream saw %d (want 1: it acted, the caller never heard)", err, u.n.Load())
	}
	resp, b, err := get(t, c, ps.URL+"/during")
	if resp == nil || resp.StatusCode != 200 || err == nil || len(b) >= 1000 {
		t.Fatalf("reset during: %v, %d bytes, err %v", resp, len(b), err)
	}
	resp, b, err = get(t, c, ps.URL+"/cut")
	if resp == nil || !errors.Is(err, io.ErrUnexpectedEOF) || len(b) != 10 || resp.ContentLength != 1000 {
		t.Fatalf("truncate: %v, %d bytes, err %v", resp, len(b), err)
	}
	resp, b, err = get(t, c, ps.URL+"/slow")
	if err != nil || len(b) != 1000 {
		t.Fatalf("slow body: %d bytes, %v", len(b), err)
	}
	n := u.n.Load()
	_, _, err = get(t, c, ps.URL+"/hang")
	if err == nil || u.n.Load() != n {
		t.Fatalf("hang: err %v; upstream saw it: %v", err, u.n.Load() != n)
	}
	short := &http.Client{Transport: c.Transport, Timeout: 20 * time.Millisecond}
	if _, _, err = get(t, short, ps.URL+"/hang"); err == nil {
		t.Fatal("hang: the client's timeout did not fire")
	}

	resp, _, err = get(t, c, ps.URL+"/x", "X-Chaos", "outage")
	if err != nil || resp.StatusCode != 500 {
		t.Fatalf("header-triggered: %v %v", err, resp)
	}
	resp, _, err = get(t, c, ps.URL+"/x", "X-Chaos", "other")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("other header value: %v %v", err, resp)
	}
	u.mu.Lock()
	if u.last.Get("X-Chaos") != "other" {
		t.Errorf("a non-matching trigger header must pass through: %v", u.last)
	}
	u.mu.Unlock()
	if resp, _, err = get(t, c, ps.URL+"/lat/1"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("latency: %v %v", err, resp)
	}

	counts := p.Injector().Counts()
	for _, name := range []string{"storm", "dated", "before", "after", "during", "cut", "slow", "tagged", "slowstart"} {
		if counts[name] != 1 {
			t.Errorf("count %s = %d, want 1", name, counts[name])
		}
	}
	if counts["hang"] != 2 || counts["requests"] != 12 {
		t.Errorf("counts %v", counts)
	}
}

// The same seed makes the same draws, request by request.
func TestDeterministicUnderSeed(t *testing.T) {
	t.Parallel()
	cfg := `
seed: %d
faults:
  - {name: flaky, probability: 0.3, status: 503}
  - {name: slow, probability: 0.5, latency: 10ms, jitter: 90ms}
`
	draws := func(seed int) []string {
		in, err := chaos.NewInjector(parse(t, fmt.Sprintf(cfg, seed)), chaos.Options{Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for range 200 {
			d := in.Decide(httptest.NewRequest("GET", "/x", nil))
			name := "-"
			if d.Fault != nil {
				name = d.Fault.Name
				if d.Fault.Name == "slow" && (d.Delay < 10*time.Millisecond || d.Delay >= 100*time.Millisecond) {
					t.Fatalf("delay %s outside latency+jitter", d.Delay)
				}
			}
			out = append(out, fmt.Sprintf("%s/%d", name, d.Delay))
		}
		return out
	}
	a, b, c := draws(42), draws(42), draws(43)
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Fatal("same seed, different draws")
	}
	if strings.Join(a, ",") == strings.Join(c, ",") {
		t.Fatal("different seeds, same draws")
	}
	flaky := strings.Count(strings.Join(a, ","), "flaky/")
	if flaky < 30 || flaky > 90 {
		t.Fatalf("probability 0.3 fired %d times in 200", flaky)
	}
}

func TestSchedule(t *testing.T) {
	t.Parallel()
	var now atomic.Int64
	base := time.Unix(1000, 0)
	clock := func() time.Time { return base.Add(time.Duration(now.Load())) }
	in, err := chaos.NewInjector(parse(t, `faults: [{name: outage, from: 10s, until: 40s, status: 503}]`), chaos.Options{Logger: quiet(), Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Duration
		want bool
	}{{0, false}, {9 * time.Second, false}, {10 * time.Second, true}, {39 * time.Second, true}, {40 * time.Second, false}} {
		now.Store(int64(tc.at))
		if got := in.Decide(httptest.NewRequest("GET", "/", nil)).Fault != nil; got != tc.want {
			t.Errorf("at %s: fault %v, want %v", tc.at, got, tc.want)
		}
	}
}

func TestTransport(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	u := &upstream{}
	us := httptest.NewServer(u)
	defer us.Close()
	base := http.DefaultTransport.(*http.Transport).Clone()
	defer base.CloseIdleConnections()
	in, err := chaos.NewInjector(parse(t, `faults: [{name: r, match: {path: /r}, reset: before}, {name: d, match: {path: /d}, duplicate: 2}, {name: cut, match: {path: /c}, truncate: 5}]`), chaos.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &chaos.Transport{Base: base, Injector: in}}
	_, err = c.Get(us.URL + "/r")
	var fe *chaos.FaultError
	if !errors.Is(err, chaos.ErrInjected) || !errors.As(err, &fe) || fe.Kind != "reset-before" || u.n.Load() != 0 {
		t.Fatalf("reset before: %v, upstream %d", err, u.n.Load())
	}
	resp, err := c.Post(us.URL+"/d", "text/plain", strings.NewReader("hello"))
	if err != nil || resp.StatusCode != 200 || u.n.Load() != 3 {
		t.Fatalf("duplicate 2: %v, upstream saw %d, want 3", err, u.n.Load())
	}
	resp.Body.Close()
	if err := in.SetConfig(parse(t, `faults: [{name: d, duplicate: 3, duplicate_concurrent: true}]`)); err != nil {
		t.Fatal(err)
	}
	resp, err = c.Post(us.URL+"/d", "text/plain", strings.NewReader("hello"))
	if err != nil || u.n.Load() != 7 {
		t.Fatalf("concurrent duplicate 3: %v, upstream saw %d, want 7", err, u.n.Load())
	}
	resp.Body.Close()
	if err := in.SetConfig(parse(t, `faults: [{name: cut, match: {path: /c}, truncate: 5}]`)); err != nil {
		t.Fatal(err)
	}
	resp, err = c.Get(us.URL + "/c")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != 5 || !errors.Is(err, chaos.ErrInjected) {
		t.Fatalf("truncate: %d bytes, %v", len(b), err)
	}
}

// Duplicate delivery through chaos: a plain upstream executes twice, the
// same upstream behind levee's idempotency executes once.
func TestDuplicateDeliveryIntoLevee(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	pay := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		id := n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"id":"pay_%d"}`, id)
	}))
	defer pay.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "levee.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {type: memory}
log: {access_log: false}
routes:
  - name: pay
    match: {path_prefix: /v1/pay}
    upstream: %s
    idempotency: {required: true}
`, pay.URL)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.NewServer(context.Background(), path, gateway.ServerOptions{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	for _, tc := range []struct {
		target     string
		concurrent bool
		want       int64
	}{
		{pay.URL, false, 2},
		{"http://" + srv.Addr(), false, 1},
		{"http://" + srv.Addr(), true, 1},
	} {
		in, err := chaos.NewInjector(&chaos.Config{Seed: 1, Faults: []chaos.Fault{{Name: "dup", Duplicate: 1, DuplicateConcurrent: tc.concurrent}}}, chaos.Options{Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		p, err := chaos.NewProxy(tc.target, in, nil)
		if err != nil {
			t.Fatal(err)
		}
		ps := httptest.NewServer(p)
		before := n.Load()
		req, _ := http.NewRequest("POST", ps.URL+"/v1/pay", strings.NewReader(`{"amount":1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", fmt.Sprintf("dup-%v-%s", tc.concurrent, tc.target))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		ps.Close()
		if got := n.Load() - before; got != tc.want {
			t.Errorf("via %s (concurrent %v): executed %d times, want %d", tc.target, tc.concurrent, got, tc.want)
		}
		if c := in.Counts()["dup"]; c != 1 {
			t.Errorf("dup counted %d", c)
		}
	}
}

func TestControlAPI(t *testing.T) {
	t.Parallel()
	ps, p := startProxy(t, &upstream{}, "")
	cs := httptest.NewServer(p.Control())
	defer cs.Close()
	c := client()
	if resp, _, err := get(t, c, ps.URL+"/x"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("no faults: %v %v", err, resp)
	}
	put := func(body string) (int, string) {
		req, _ := http.NewRequest("PUT", cs.URL+"/faults", strings.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := put("faults:\n  - name: down\n    status: 503\n    retry_after: 2s\n"); code != 200 || !strings.Contains(body, "retry_after: 2s") {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if resp, _, err := get(t, c, ps.URL+"/x"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("after PUT: %v %v", err, resp)
	}
	code, body := put("faults:\n  - name: bad\n    status: 42\n")
	if code != 400 || !strings.Contains(body, "body:3: faults[0].status") {
		t.Fatalf("bad PUT: %d %s", code, body)
	}
	resp, b, _ := get(t, c, cs.URL+"/faults")
	if resp.StatusCode != 200 || !strings.Contains(string(b), "name: down") {
		t.Fatalf("GET /faults after a refused PUT: %s", b)
	}
	// What GET returns, PUT accepts.
	if code, body := put(string(b)); code != 200 {
		t.Fatalf("round trip: %d %s", code, body)
	}
	_, b, _ = get(t, c, cs.URL+"/counts")
	if !strings.Contains(string(b), `"down": 1`) || !strings.Contains(string(b), `"requests": 2`) {
		t.Fatalf("counts: %s", b)
	}
	req, _ := http.NewRequest("DELETE", cs.URL+"/faults", nil)
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("DELETE: %v %v", err, resp)
	}
	if resp, _, err := get(t, c, ps.URL+"/x"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after DELETE: %v %v", err, resp)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, want string }{
		{"faults:\n  - name: a\n    statu: 503\n", "faults.yaml:3"},
		{"faults:\n  - name: a\n    probability: 2\n", "faults.yaml:3: faults[0].probability"},
		{"faults:\n  - name: a\n    reset: sideways\n", "faults.yaml:3: faults[0].reset"},
		{"faults:\n  - name: a\n  - name: a\n", "faults.yaml:3: faults[1].name: duplicate"},
		{"faults:\n  - name: a\n    from: 10s\n    until: 5s\n", "faults.yaml:4: faults[0].until"},
		{"faults:\n  - name: a\n    latency: fast\n", "faults.yaml:3"},
		{"faults:\n  - name: a\n    status: 503\n    duplicate: 1\n", "faults[0]"},
		{"faults:\n  - name: a\n    match: {path: nope}\n", "faults[0].match.path"},
		{"seed: [1]\n", "faults.yaml:1"},
	} {
		_, err := chaos.ParseConfig("faults.yaml", []byte(tc.yaml))
		if !errors.Is(err, chaos.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
	c, err := chaos.ParseConfig("empty.yaml", nil)
	if err != nil || len(c.Faults) != 0 || c.Seed != 1 {
		t.Fatalf("empty: %+v %v", c, err)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"seed: 1\nfaults:\n  - {name: a, status: 503, retry_after: 1s}\n",
		"faults:\n  - name: b\n    match: {methods: [POST], path_prefix: /v1}\n    probability: 0.5\n    latency: 10ms\n",
		"faults: [{name: c, reset: during, duplicate: 2, truncate: 1KiB}]",
		"faults: [{name: d, header: 'X-Chaos: x', from: 1s, until: 2s, hang: 1s}]",
		"faults: {}", ": :", "seed: ${NOPE}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := chaos.ParseConfig("f.yaml", data)
		if err != nil {
			if !errors.Is(err, chaos.ErrConfig) {
				t.Fatalf("error does not wrap ErrConfig: %v", err)
			}
			return
		}
		if _, err := chaos.NewInjector(c, chaos.Options{Logger: quiet()}); err != nil {
			t.Fatalf("a parsed config is refused: %v", err)
		}
	})
}
