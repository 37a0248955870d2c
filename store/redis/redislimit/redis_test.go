package redislimit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/ratelimit/ratelimittest"
	"github.com/leveehq/levee/store/redis/redislimit"
)

// redisAddr returns LEVEE_REDIS_ADDR (default 127.0.0.1:6379), skipping
// the test (failing it when CI=true) when the server is unreachable.
func redisAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("LEVEE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		unavailable(t, "Redis is not reachable at "+addr+" (set LEVEE_REDIS_ADDR): "+err.Error())
	}
	return addr
}

func unavailable(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func newClient(t testing.TB, addr string, hooks ...goredis.Hook) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: addr, ContextTimeoutEnabled: true, PoolSize: 64})
	for _, h := range hooks {
		c.AddHook(h)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newStore returns a store on the shared Redis under a prefix unique to
// the test, whose keys are deleted at the end (never FLUSHALL/FLUSHDB).
func newStore(t testing.TB, c *goredis.Client, opts redislimit.Options) *redislimit.Store {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = "levee:rltest:" + randHex(6) + ":"
	}
	s := newOwnStore(t, c, opts)
	t.Cleanup(func() { deletePrefix(c, opts.Prefix) })
	return s
}

// newOwnStore is newStore for a private server: no clean-up needed.
func newOwnStore(t testing.TB, c *goredis.Client, opts redislimit.Options) *redislimit.Store {
	t.Helper()
	s, err := redislimit.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

func deletePrefix(c *goredis.Client, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		c.Del(ctx, iter.Val())
	}
}

// counter counts round trips: one per command, one per pipeline, leaving
// out the commands go-redis sends to set up a new connection (HELLO,
// CLIENT SETINFO ..., partly as a pipeline).
type counter struct{ n atomic.Int64 }

func setup(cmd goredis.Cmder) bool {
	switch strings.ToLower(cmd.Name()) {
	case "hello", "client", "auth", "select":
		return true
	}
	return false
}

func (c *counter) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (c *counter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if !setup(cmd) {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		for _, cmd := range cmds {
			if !setup(cmd) {
				c.n.Add(1)
				break
			}
		}
		return next(ctx, cmds)
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	ratelimittest.Run(t, ratelimittest.Harness{
		NewStore: func(t testing.TB) ratelimit.Store { return newStore(t, c, redislimit.Options{}) },
	})
}

func TestConformanceShardByKey(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	ratelimittest.Run(t, ratelimittest.Harness{
		NewStore: func(t testing.TB) ratelimit.Store { return newStore(t, c, redislimit.Options{ShardByKey: true}) },
	})
}

func policy(t testing.TB, name, spec string) ratelimit.Policy {
	t.Helper()
	p, err := ratelimit.ParsePolicy(spec)
	if err != nil {
		t.Fatal(err)
	}
	p.Name = name
	return p
}

// One round trip per decision whatever the number of policies, and one
// per release.
func TestOneRoundTripPerDecision(t *testing.T) {
	t.Parallel()
	cnt := &counter{}
	c := newClient(t, redisAddr(t), cnt)
	s := newStore(t, c, redislimit.Options{})
	ctx := context.Background()
	for _, n := range []int{1, 2, 4, 16, ratelimit.MaxDemands} {
		ds := make([]ratelimit.Demand, n)
		for i := range ds {
			ds[i] = ratelimit.Demand{Policy: policy(t, "p"+strconv.Itoa(i), "10/s"), Key: "k", Cost: 1}
		}
		ds[0].Policy = policy(t, "conc", "concurrency 5")
		if n > 1 {
			ds[1].Policy = policy(t, "monthly", "1000/month") // calendar quotas ride along
		}
		rs := make([]ratelimit.Result, n)
		before := cnt.n.Load()
		tk, err := s.Decide(ctx, time.Now(), ds, rs)
		if err != nil {
			t.Fatal(err)
		}
		if got := cnt.n.Load() - before; got != 1 {
			t.Fatalf("%d policies: %d round trips, want 1", n, got)
		}
		if !ratelimit.Admitted(ds, rs) || !tk.Holds() {
			t.Fatalf("%d policies: not admitted (%+v)", n, tk)
		}
		before = cnt.n.Load()
		if err := s.Release(ctx, ds, tk); err != nil {
			t.Fatal(err)
		}
		if got := cnt.n.Load() - before; got != 1 {
			t.Fatalf("release: %d round trips, want 1", got)
		}
	}
}

// Every key carries a TTL no longer than it needs: a rate key until its
// TAT passes, a concurrency key for the lease.
func TestKeyTTLs(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	s := newStore(t, c, redislimit.Options{ConcurrencyLease: 30 * time.Second})
	ctx := context.Background()
	p := policy(t, "p", "10/m burst 20")  // 6 s per unit
	q := policy(t, "q", "5000/day")       // 17.28 s per unit
	cc := policy(t, "c", "concurrency 3") //
	ds := []ratelimit.Demand{{Policy: p, Key: "k", Cost: 3}, {Policy: q, Key: "k", Cost: 1}, {Policy: cc, Key: "k", Cost: 1}}
	rs := make([]ratelimit.Result, len(ds))
	tk, err := s.Decide(ctx, time.Now(), ds, rs)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []time.Duration{18 * time.Second, 17280 * time.Millisecond, 30 * time.Second} {
		ttl, err := c.PTTL(ctx, s.Key(ds[i])).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= want-time.Second || ttl > want {
			t.Errorf("%s: PTTL %v, want within (%v, %v]", ds[i].Policy.Name, ttl, want-time.Second, want)
		}
		if i < 2 && (ttl < rs[i].ResetAfter-100*time.Millisecond || ttl > rs[i].ResetAfter+time.Millisecond) {
			t.Errorf("%s: PTTL %v, ResetAfter %v: the key should live exactly until the TAT", ds[i].Policy.Name, ttl, rs[i].ResetAfter)
		}
	}
	if err := s.Release(ctx, ds, tk); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, s.Key(ds[2])).Result(); n != 0 {
		t.Errorf("concurrency key still exists after its only slot was released")
	}
	// A check (cost 0) on a fresh key writes nothing; a denied request
	// writes nothing.
	z := ratelimit.Demand{Policy: policy(t, "z", "1/s"), Key: "fresh", Cost: 0}
	if _, err := s.Decide(ctx, time.Now(), []ratelimit.Demand{z}, rs[:1]); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, s.Key(z)).Result(); n != 0 {
		t.Errorf("a cost-0 check created a key")
	}
	x := policy(t, "x", "1/m burst 1")
	_, err = s.Decide(ctx, time.Now(), []ratelimit.Demand{{Policy: x, Key: "k", Cost: 1}}, rs[:1])
	if err != nil {
		t.Fatal(err)
	}
	deny := []ratelimit.Demand{{Policy: policy(t, "y", "1/m"), Key: "k", Cost: 1}, {Policy: x, Key: "k", Cost: 1}}
	if _, err := s.Decide(ctx, time.Now(), deny, rs[:2]); err != nil || ratelimit.Admitted(deny, rs[:2]) {
		t.Fatalf("want denied: %v %+v", err, rs[:2])
	}
	if n, _ := c.Exists(ctx, s.Key(deny[0])).Result(); n != 0 {
		t.Errorf("a denied request wrote the state of the policy that admitted it")
	}
}

// Redis TIME is the only clock: the now passed in is ignored.
func TestRedisTimeIsTheClock(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	s := newStore(t, c, redislimit.Options{})
	p := policy(t, "p", "1/m")
	ds := []ratelimit.Demand{{Policy: p, Key: "k", Cost: 1}}
	rs := make([]ratelimit.Result, 1)
	for i, now := range []time.Time{time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), {}} {
		if _, err := s.Decide(context.Background(), now, ds, rs); err != nil {
			t.Fatal(err)
		}
		if rs[0].Allowed != (i == 0) {
			t.Fatalf("decision %d with now=%v: %+v", i, now, rs[0])
		}
	}
}

func TestShardByKey(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	s := newStore(t, c, redislimit.Options{ShardByKey: true})
	tagOf := func(k string) string { return k[strings.IndexByte(k, '{') : strings.IndexByte(k, '}')+1] }
	a := ratelimit.Demand{Policy: policy(t, "a", "1/s"), Key: "user-1", Cost: 1}
	b := ratelimit.Demand{Policy: policy(t, "b", "concurrency 1"), Key: "user-1", Cost: 1}
	o := ratelimit.Demand{Policy: policy(t, "a", "1/s"), Key: "user-2", Cost: 1}
	if tagOf(s.Key(a)) != tagOf(s.Key(b)) || s.Key(a) == s.Key(b) {
		t.Fatalf("same key, different policies: %s %s: want one hash tag, different keys", s.Key(a), s.Key(b))
	}
	if tagOf(s.Key(a)) == tagOf(s.Key(o)) {
		t.Fatalf("different keys share a hash tag: %s %s", s.Key(a), s.Key(o))
	}
	_, err := s.Decide(context.Background(), time.Now(), []ratelimit.Demand{a, o}, make([]ratelimit.Result, 2))
	if !errors.Is(err, redislimit.ErrCrossSlot) || !errors.Is(err, ratelimit.ErrInvalidDemand) {
		t.Fatalf("cross-slot decision: err = %v, want ErrCrossSlot", err)
	}
	plain := newStore(t, c, redislimit.Options{})
	if tagOf(plain.Key(a)) != tagOf(plain.Key(o)) || tagOf(plain.Key(a)) != "{all}" {
		t.Fatalf("default layout: %s %s, want the {all} tag", plain.Key(a), plain.Key(o))
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	if _, err := redislimit.New(goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"}), redislimit.Options{}); !errors.Is(err, redislimit.ErrNoContextTimeout) {
		t.Errorf("client without ContextTimeoutEnabled: err = %v", err)
	}
	if _, err := redislimit.New(goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}}), redislimit.Options{}); !errors.Is(err, redislimit.ErrNoContextTimeout) {
		t.Errorf("cluster client without ContextTimeoutEnabled: err = %v", err)
	}
	if _, err := redislimit.New(goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}, ContextTimeoutEnabled: true}), redislimit.Options{}); err != nil {
		t.Errorf("ring with ContextTimeoutEnabled: %v", err)
	}
	ok := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
	if _, err := redislimit.New(ok, redislimit.Options{Prefix: "a{b}"}); err == nil {
		t.Error("a prefix with braces was accepted")
	}
	if _, err := redislimit.New(ok, redislimit.Options{ConcurrencyLease: time.Microsecond}); err == nil {
		t.Error("a 1µs lease was accepted")
	}
}

func TestCorruptStateIsAnError(t *testing.T) {
	t.Parallel()
	c := newClient(t, redisAddr(t))
	s := newStore(t, c, redislimit.Options{})
	d := ratelimit.Demand{Policy: policy(t, "p", "1/s"), Key: "k", Cost: 1}
	c.Set(context.Background(), s.Key(d), "not a number", time.Minute)
	if _, err := s.Decide(context.Background(), time.Now(), []ratelimit.Demand{d}, make([]ratelimit.Result, 1)); err == nil {
		t.Fatal("corrupt state: no error")
	}
	if v, _ := c.Get(context.Background(), s.Key(d)).Result(); v != "not a number" {
		t.Fatalf("corrupt state overwritten with %q", v)
	}
}

// ownRedis starts a private redis-server on a free loopback port, for
// tests that stop it. It is killed at the end of the test.
type ownRedis struct {
	addr string
	cmd  *exec.Cmd
}

func startRedis(t *testing.T) *ownRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if _, err2 := os.Stat("/usr/bin/redis-server"); err2 != nil {
			unavailable(t, "redis-server is not installed: "+err.Error())
		}
		bin = "/usr/bin/redis-server"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &ownRedis{addr: "127.0.0.1:" + port, cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	c := goredis.NewClient(&goredis.Options{Addr: r.addr, MaxRetries: -1})
	defer c.Close()
	poll.Until(t, 10*time.Second, func() bool { return c.Ping(context.Background()).Err() == nil }, "redis-server on %s did not start", r.addr)
	return r
}

type events struct {
	mu  sync.Mutex
	evs []ratelimit.Event
}

func (e *events) add(ev ratelimit.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

func (e *events) last() ratelimit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.evs[len(e.evs)-1]
}

// Redis stopped mid-test (killed, or frozen so that connections hang):
// fail_open rules fall back to the in-process limit and fail_closed rules
// answer 503 + Retry-After, each within the configured timeout.
func TestStoreDownMidTest(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"killed", "frozen"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			srv := startRedis(t)
			// A long ReadTimeout: only the context deadline can end a call
			// to a frozen server quickly.
			c := goredis.NewClient(&goredis.Options{Addr: srv.addr, ContextTimeoutEnabled: true,
				ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, DialTimeout: 30 * time.Second})
			t.Cleanup(func() { _ = c.Close() })
			s := newOwnStore(t, c, redislimit.Options{})
			const timeout = 100 * time.Millisecond
			evs := &events{}
			open := policy(t, "open", "100/s")
			openFallback := policy(t, "", "1/m burst 2")
			closed := policy(t, "closed", "100/s")
			mk := func(r ratelimit.Rule) http.Handler {
				mw, err := ratelimit.Middleware(ratelimit.Options{Rules: []ratelimit.Rule{r}, Store: s,
					Timeout: timeout, StoreBackoff: -1, OnDecision: evs.add})
				if err != nil {
					t.Fatal(err)
				}
				return mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
			}
			hOpen := mk(ratelimit.Rule{Policy: open, Key: ratelimit.Constant("k"), Fallback: openFallback})
			hClosed := mk(ratelimit.Rule{Policy: closed, Key: ratelimit.Constant("k"), OnStoreError: ratelimit.FailClosed})
			do := func(h http.Handler) (*httptest.ResponseRecorder, time.Duration) {
				w := httptest.NewRecorder()
				start := time.Now()
				h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
				return w, time.Since(start)
			}
			for _, h := range []http.Handler{hOpen, hClosed} {
				if w, _ := do(h); w.Code != http.StatusOK || !strings.Contains(w.Header().Get("RateLimit"), "r=99") {
					t.Fatalf("with Redis up: %d RateLimit=%q", w.Code, w.Header().Get("RateLimit"))
				}
			}
			switch how {
			case "killed":
				if err := srv.cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				_ = srv.cmd.Wait()
			case "frozen":
				if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
			}
			// The bound checked is the no-hang guarantee (the timeout plus
			// scheduling), not a performance figure: a call that ignored
			// the deadline would take the client's 30 s timeouts.
			const bound = timeout + 2*time.Second
			for i, want := range []int{http.StatusOK, http.StatusOK, http.StatusTooManyRequests} {
				w, took := do(hOpen)
				t.Logf("fail_open request %d with Redis %s: %d in %v", i, how, w.Code, took)
				if w.Code != want || took > bound {
					t.Fatalf("fail_open request %d with Redis %s: %d in %v, want %d within %v", i, how, w.Code, took, want, bound)
				}
				ev := evs.last()
				if !ev.Fallback || ev.Err == nil || ev.Policy != "open" {
					t.Fatalf("fail_open request %d: event %+v, want a fallback with the store error", i, ev)
				}
				if want == http.StatusTooManyRequests && (w.Header().Get("Retry-After") != "60" || w.Header().Get("RateLimit-Policy") != `"open";q=2;w=120`) {
					t.Fatalf("fallback denial: Retry-After=%q RateLimit-Policy=%q", w.Header().Get("Retry-After"), w.Header().Get("RateLimit-Policy"))
				}
			}
			w, took := do(hClosed)
			t.Logf("fail_closed request with Redis %s: %d in %v", how, w.Code, took)
			if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" || took > bound ||
				!strings.Contains(w.Body.String(), "rate-limit-store-unavailable") {
				t.Fatalf("fail_closed with Redis %s: %d in %v Retry-After=%q %s", how, w.Code, took, w.Header().Get("Retry-After"), w.Body)
			}
			if ev := evs.last(); ev.Outcome != ratelimit.OutcomeError || ev.Err == nil {
				t.Fatalf("fail_closed event %+v", ev)
			}
		})
	}
}

// Once the breaker opens, the store is skipped for OpenFor: an outage does
// not add the timeout to every request.
func TestStoreBackoffSkipsTheStore(t *testing.T) {
	t.Parallel()
	srv := startRedis(t)
	cnt := &counter{}
	c := newClient(t, srv.addr, cnt)
	s := newOwnStore(t, c, redislimit.Options{})
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	mw, err := ratelimit.Middleware(ratelimit.Options{
		Rules: []ratelimit.Rule{{Policy: policy(t, "p", "100/s"), Key: ratelimit.Constant("k")}},
		Store: s, Now: clock, Timeout: 200 * time.Millisecond,
		Breaker: ratelimit.NewBreaker(ratelimit.BreakerOptions{Failures: 1, OpenFor: 5 * time.Second}),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	serve := func() int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
		return w.Code
	}
	_ = srv.cmd.Process.Kill()
	_ = srv.cmd.Wait()
	if code := serve(); code != http.StatusOK {
		t.Fatalf("first request after the kill: %d", code)
	}
	n := cnt.n.Load()
	for range 10 {
		if code := serve(); code != http.StatusOK {
			t.Fatalf("during backoff: %d", code)
		}
	}
	if got := cnt.n.Load(); got != n {
		t.Fatalf("during the backoff the store was called %d times, want 0", got-n)
	}
	now = now.Add(6 * time.Second)
	serve()
	if got := cnt.n.Load(); got == n {
		t.Fatal("after the backoff the store was not tried again")
	}
}
