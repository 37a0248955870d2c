package verify_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/internal/dynalite"
	"github.com/leveehq/levee/ratelimit"
)

// payments is an upstream that creates a resource per execution: the id
// is in the body, /count reads the number of executions back.
type payments struct {
	n     atomic.Int64
	delay time.Duration
}

func (p *payments) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/count" {
		fmt.Fprint(w, p.n.Load())
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	n := p.n.Add(1)
	time.Sleep(p.delay)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":"pay_%d","amount":100}`, n)
}

func startServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// startLevee runs a levee gateway in-process on 127.0.0.1 with the given
// store ("memory" or "sqlite") in front of up: /v1/pay is
// idempotency-protected (key required, tenant by Authorization),
// /v1/limited is limited to limit per X-Api-Key.
func startLevee(t *testing.T, store, up, limit string) string {
	t.Helper()
	return startLeveeWith(t, store, up, limit, "")
}

// startLeveeWith is startLevee with extra idempotency settings (YAML
// lines indented for the route's idempotency block).
func startLeveeWith(t *testing.T, store, up, limit, idem string) string {
	t.Helper()
	dir := t.TempDir()
	var st string
	switch store {
	case "memory":
		st = "{type: memory}"
	case "sqlite":
		st = fmt.Sprintf("{type: sqlite, sqlite: {path: %s}}", filepath.Join(dir, "levee.db"))
	case "redis":
		st = redisStore(t)
	case "postgres":
		st = postgresStore(t)
	case "dynamodb":
		// dynalite (skips without it); the caller sets AWS credentials
		// in the environment, which dynalite ignores but the SDK needs.
		st = fmt.Sprintf("{type: dynamodb, dynamodb: {table: verify-%s, region: us-east-1, endpoint: %q, create_table: true}}", randID(), dynalite.Start(t))
	default:
		t.Fatalf("unknown store %q", store)
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: %s
log: {access_log: false}
routes:
  - name: pay
    match: {path_prefix: /v1/pay}
    upstream: %s
    timeout: 2s
    idempotency:
      required: true
      tenant_header: Authorization
      lease: 1s
      retention: 2s
%s  - name: limited
    match: {path_prefix: /v1/limited}
    upstream: %s
    rate_limit:
      - {name: verify, limit: %s, key: "header:X-Api-Key"}
`, st, up, idem, up, limit)
	path := filepath.Join(dir, "levee.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.NewServer(context.Background(), path, gateway.ServerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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
	return "http://" + srv.Addr()
}

// need skips (or fails under CI=true) when a backend is unreachable.
func need(t *testing.T, name, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required in CI but unreachable at %s: %v", name, addr, err)
	}
	t.Skipf("%s unreachable at %s: %v", name, addr, err)
}

func randID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func redisStore(t *testing.T) string {
	addr := os.Getenv("LEVEE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	need(t, "Redis", addr)
	return fmt.Sprintf("{type: redis, redis: {addr: %q, prefix: \"levee:verifytest:%s:\"}}", addr, randID())
}

func postgresStore(t *testing.T) string {
	url := os.Getenv("LEVEE_POSTGRES_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	need(t, "PostgreSQL", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	schema := "levee_verify_" + randID()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	return fmt.Sprintf("{type: postgres, postgres: {url: %q, schema: %s}}", url, schema)
}

// fakeAPI is a small idempotency-key implementation, correct by default;
// each knob breaks it in one way that levee verify must catch.
type fakeAPI struct {
	raceyClaim       bool // check and claim are not atomic: concurrent duplicates all execute
	regenerateReplay bool // a replay renders a fresh body instead of the stored bytes
	ignoreBody       bool // the fingerprint leaves out the body
	globalKeys       bool // keys are not scoped by the credential
	mu               sync.Mutex
	recs             map[string]*fakeRec
	executions       atomic.Int64
	served           atomic.Int64
}

type fakeRec struct {
	fp   string
	done bool
	id   int64
	body string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/count" {
		fmt.Fprintf(w, `{"count":%d}`, f.executions.Load())
		return
	}
	vals := r.Header.Values("Idempotency-Key")
	if len(vals) != 1 {
		http.Error(w, "want exactly one Idempotency-Key", http.StatusBadRequest)
		return
	}
	key := vals[0]
	if len(key) >= 2 && key[0] == '"' && key[len(key)-1] == '"' {
		key = key[1 : len(key)-1]
	}
	if len(key) == 0 || len(key) > 255 || strings.IndexFunc(key, func(c rune) bool { return c < 0x21 || c > 0x7e }) >= 0 {
		http.Error(w, "malformed key", http.StatusBadRequest)
		return
	}
	body, _ := io.ReadAll(r.Body)
	scope := key
	if !f.globalKeys {
		scope = r.Header.Get("Authorization") + "\x00" + key
	}
	fp := r.Method + " " + r.URL.Path
	if !f.ignoreBody {
		fp += " " + string(body)
	}
	f.mu.Lock()
	if f.recs == nil {
		f.recs = map[string]*fakeRec{}
	}
	rec, ok := f.recs[scope]
	switch {
	case ok && rec.fp != fp:
		f.mu.Unlock()
		http.Error(w, "key reused with another request", http.StatusUnprocessableEntity)
		return
	case ok && !rec.done:
		f.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "in flight", http.StatusConflict)
		return
	case ok:
		b := rec.body
		if f.regenerateReplay {
			b = f.render(rec.id)
		}
		f.mu.Unlock()
		w.Header().Set("Idempotent-Replayed", "true")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, b)
		return
	}
	rec = &fakeRec{fp: fp}
	if f.raceyClaim {
		// The bug: the claim is written only after the work is done.
		f.mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		f.mu.Lock()
	} else {
		f.recs[scope] = rec
		f.mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		f.mu.Lock()
	}
	rec.id = f.executions.Add(1)
	rec.body = f.render(rec.id)
	rec.done = true
	f.recs[scope] = rec
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, rec.body)
}

func (f *fakeAPI) render(id int64) string {
	return fmt.Sprintf(`{"id":"pay_%d","served":%d}`, id, f.served.Add(1))
}

// fakeLimiter limits with levee's own GCRA (correct by default); each
// knob breaks it in one way.
type fakeLimiter struct {
	policy       ratelimit.Policy
	retryAfter   string // a fixed, wrong Retry-After ("" = the true one)
	status       int    // the throttling status (0 = 429)
	noProblem    bool
	lim          *ratelimit.Local
	once         sync.Once
	throttleSeen atomic.Int64
}

func (f *fakeLimiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.once.Do(func() { f.lim = ratelimit.NewLocal(ratelimit.LocalOptions{}) })
	res := f.lim.AllowN(time.Now(), f.policy, "k", 1)
	ratelimit.SetHeaders(w.Header(), f.policy, res)
	if res.Allowed {
		fmt.Fprintln(w, "ok")
		return
	}
	f.throttleSeen.Add(1)
	ra := f.retryAfter
	if ra == "" {
		ra = strconv.FormatInt(int64((res.RetryAfter+time.Second-1)/time.Second), 10)
	}
	w.Header().Set("Retry-After", ra)
	st := f.status
	if st == 0 {
		st = http.StatusTooManyRequests
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(st)
	fmt.Fprintf(w, `{"type":"about:blank","title":"Too Many Requests","status":%d}`, st)
}

func mustPolicy(t *testing.T, s string) ratelimit.Policy {
	t.Helper()
	p, err := ratelimit.ParsePolicy(s)
	if err != nil {
		t.Fatal(err)
	}
	p.Name = "p"
	return p
}
