package redisresilience_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/resilience"
	rlredis "github.com/leveehq/levee/store/redis/redislimit"
	"github.com/leveehq/levee/store/redis/redisresilience"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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
		msg := "Redis is not reachable at " + addr + " (set LEVEE_REDIS_ADDR): " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return addr
}

func newClient(t testing.TB, addr string) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// prefix returns a key prefix unique to the test, whose keys are deleted
// at the end (never FLUSHALL/FLUSHDB: the server is shared).
func prefix(t testing.TB, c *goredis.Client) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	p := "levee:restest:" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, p+"*", 100).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return p
}

// replica is one process's view: its own client, store and breaker.
type replica struct {
	b       *resilience.Breaker
	mu      sync.Mutex
	changes []string
}

func newReplica(t *testing.T, addr, pfx string, s resilience.BreakerSettings) *replica {
	st, err := redisresilience.New(newClient(t, addr), redisresilience.Options{Prefix: pfx})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := &replica{}
	s.Store = st
	s.OnStateChange = func(_ string, from, to resilience.BreakerState) {
		r.mu.Lock()
		r.changes = append(r.changes, from.String()+">"+to.String())
		r.mu.Unlock()
	}
	if r.b, err = resilience.NewBreaker("partner", s); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *replica) call(t *testing.T, now time.Time, o resilience.Outcome) error {
	t.Helper()
	tk, err := r.b.Allow(context.Background(), now)
	if err == nil {
		r.b.Done(context.Background(), now, tk, o)
	}
	return err
}

// TestSharedBreakerCycle: two replicas share one breaker through Redis:
// failures seen by A open it for B; B's probe closes it for A.
func TestSharedBreakerCycle(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	pfx := prefix(t, newClient(t, addr))
	cool := 400 * time.Millisecond
	s := resilience.BreakerSettings{ConsecutiveFailures: 3, Cooldown: cool, Sync: time.Hour}
	a, b := newReplica(t, addr, pfx, s), newReplica(t, addr, pfx, s)
	fail, ok := resilience.Outcome{StatusCode: 503}, resilience.Outcome{StatusCode: 200}
	now := time.Now()
	if err := b.call(t, now, ok); err != nil { // B's view: closed, fresh for Sync
		t.Fatal(err)
	}
	for i := range 3 {
		if err := a.call(t, now, fail); err != nil {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	if a.b.State() != resilience.BreakerOpen {
		t.Fatalf("A: %v after 3 failures", a.b.State())
	}
	// B admits from its fresh closed view, but recording the outcome
	// tells it the breaker is open (the outcome, from an older period,
	// does not count).
	if err := b.call(t, now, fail); err != nil {
		t.Fatal(err)
	}
	err := b.call(t, now, ok)
	var oe *resilience.OpenError
	if !errors.As(err, &oe) || oe.Remaining(now) <= 0 || oe.Remaining(now) > cool {
		t.Fatalf("B: %v, want open with at most %v left", err, cool)
	}
	time.Sleep(cool + 50*time.Millisecond) // the server's clock runs the cooldown
	tk, err := b.b.Allow(context.Background(), time.Now())
	if err != nil || b.b.State() != resilience.BreakerHalfOpen {
		t.Fatalf("B after the cooldown: %v, %v", err, b.b.State())
	}
	if err := a.call(t, time.Now(), ok); !errors.Is(err, resilience.ErrBreakerOpen) {
		t.Fatalf("A got a second probe slot: %v", err)
	}
	b.b.Done(context.Background(), time.Now(), tk, ok)
	if b.b.State() != resilience.BreakerClosed {
		t.Fatalf("B: %v after a good probe", b.b.State())
	}
	if err := a.call(t, time.Now().Add(cool), ok); err != nil || a.b.State() != resilience.BreakerClosed {
		t.Fatalf("A: %v, %v; want closed", err, a.b.State())
	}
	for name, r := range map[string]*replica{"A": a, "B": b} {
		r.mu.Lock()
		t.Logf("%s saw %v", name, r.changes)
		if len(r.changes) == 0 || r.changes[len(r.changes)-1] != "open>closed" && r.changes[len(r.changes)-1] != "half_open>closed" {
			t.Errorf("%s: transitions %v end elsewhere than closed", name, r.changes)
		}
		r.mu.Unlock()
	}
}

func TestSharedBreakerFailureRatio(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	pfx := prefix(t, newClient(t, addr))
	s := resilience.BreakerSettings{ConsecutiveFailures: -1, FailureRatio: 0.5, MinCalls: 6, Window: 10 * time.Second, Cooldown: time.Minute, Sync: time.Nanosecond}
	a, b := newReplica(t, addr, pfx, s), newReplica(t, addr, pfx, s)
	now := time.Now()
	for i := range 6 { // alternate replicas and outcomes: 3 of 6 fail
		r := []*replica{a, b}[i%2]
		o := resilience.Outcome{StatusCode: []int{200, 200, 500, 500, 200, 500}[i]}
		if err := r.call(t, now, o); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if err := a.call(t, now.Add(time.Millisecond), resilience.Outcome{StatusCode: 200}); !errors.Is(err, resilience.ErrBreakerOpen) {
		t.Fatalf("3 of 6 failing over two replicas did not open the shared breaker: %v", err)
	}
}

func TestSharedPauses(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	c := newClient(t, addr)
	pfx := prefix(t, c)
	a, _ := redisresilience.New(c, redisresilience.Options{Prefix: pfx})
	b, _ := redisresilience.New(newClient(t, addr), redisresilience.Options{Prefix: pfx})
	ctx := context.Background()
	if d, err := b.Paused(ctx, time.Now(), "crm"); err != nil || d != 0 {
		t.Fatalf("paused before any pause: %v %v", d, err)
	}
	if err := a.Pause(ctx, time.Now(), "crm", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.Pause(ctx, time.Now(), "crm", time.Second); err != nil { // never shortens
		t.Fatal(err)
	}
	if d, err := b.Paused(ctx, time.Now(), "crm"); err != nil || d < 29*time.Second || d > 30*time.Second {
		t.Fatalf("B sees %v %v, want about 30s", d, err)
	}
	// Through the executors: a 429 answered to A's caller pauses B's.
	send429 := func(context.Context, *resilience.Call) (*http.Response, error) {
		h := http.Header{}
		h.Set("Retry-After", "20")
		return &http.Response{StatusCode: 429, Header: h, Body: http.NoBody}, nil
	}
	mk := func(st *redisresilience.Store) *resilience.Executor {
		e, err := resilience.New(resilience.Settings{Name: "bank", Retry: resilience.RetrySettings{MaxAttempts: 1}, Pace: &resilience.PaceSettings{Store: st}})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	resp, err := mk(a).Do(ctx, &resilience.Call{Send: send429})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	_, err = mk(b).Do(ctx, &resilience.Call{Send: send429})
	var pe *resilience.PacedError
	if !errors.As(err, &pe) || pe.Reason != resilience.PacedPause || pe.Wait < 19*time.Second {
		t.Fatalf("replica B was not paused: %v", err)
	}
}

func TestStoreDownFailsOpen(t *testing.T) {
	t.Parallel()
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	st, _ := redisresilience.New(c, redisresilience.Options{})
	b, _ := resilience.NewBreaker("x", resilience.BreakerSettings{Store: st, ConsecutiveFailures: 1})
	for range 3 {
		tk, err := b.Allow(context.Background(), time.Now())
		if err != nil {
			t.Fatalf("a store outage closed the door: %v", err)
		}
		b.Done(context.Background(), time.Now(), tk, resilience.Outcome{StatusCode: 503})
	}
	if _, err := st.Acquire(context.Background(), time.Now(), "x", resilience.BreakerConfig{HalfOpenProbes: 1}); err == nil {
		t.Error("Acquire on a dead server returned no error")
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := redisresilience.New(c, redisresilience.Options{}); !errors.Is(err, redisresilience.ErrNoContextTimeout) {
		t.Fatalf("err = %v", err)
	}
}

// TestSharedQuotaExactly: two replicas sharing one third-party quota of
// 100 through store/redis/redislimit send exactly 100 attempts between them.
func TestSharedQuotaExactly(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	c := newClient(t, addr)
	pfx := prefix(t, c)
	pol, err := ratelimit.ParsePolicy("100/h")
	if err != nil {
		t.Fatal(err)
	}
	pol.Name = "partner-hourly"
	var sent atomic.Int64
	send := func(context.Context, *resilience.Call) (*http.Response, error) {
		sent.Add(1)
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	}
	var replicas []*resilience.Executor
	for range 2 {
		st, err := rlredis.New(newClient(t, addr), rlredis.Options{Prefix: pfx + "rl:"})
		if err != nil {
			t.Fatal(err)
		}
		e, err := resilience.New(resilience.Settings{Name: "partner", Limit: &resilience.LimitSettings{Store: st, Policies: []ratelimit.Policy{pol}, MaxWait: -1}})
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, e)
	}
	var wg sync.WaitGroup
	var paced atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				resp, err := replicas[w%2].Do(context.Background(), &resilience.Call{Send: send})
				if errors.Is(err, resilience.ErrPaced) {
					paced.Add(1)
				} else if err != nil {
					t.Error(err)
				} else {
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	if sent.Load() != 100 || paced.Load() != 60 {
		t.Fatalf("%d sent, %d paced; want exactly 100 and 60", sent.Load(), paced.Load())
	}
}
