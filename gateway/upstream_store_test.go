package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
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
		msg := "Redis is not reachable at " + addr + " (set LEVEE_REDIS_ADDR): " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return addr
}

// dropKeys deletes the keys under prefix when the test ends.
func dropKeys(t *testing.T, addr, prefix string) {
	t.Cleanup(func() {
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, _ := c.Keys(ctx, prefix+"*").Result()
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
}

// Two gateways sharing Redis see one quota and one breaker: the quota's
// slots are spent across both, and the breaker one trips rejects the
// other's requests without I/O.
func TestSharedUpstreamAcrossGateways(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	var calls atomic.Int64
	srv := newFlaky(t, func(int64, http.ResponseWriter) {})
	srv.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path != "/v1/ok" {
			w.WriteHeader(500)
		}
	})
	pair := func(policies string) (a, b *running) {
		prefix := fmt.Sprintf("levee:test:gw-upstream:%d:", time.Now().UnixNano())
		dropKeys(t, addr, prefix)
		cfg := upstreamConfig(srv.srv.URL, ", max_attempts: 1}\n    shared: true"+policies+"\n    #{", "") +
			fmt.Sprintf("upstream_store: {type: redis, redis: {addr: %q, prefix: %q}}\n", addr, prefix)
		return startGateway(t, cfg), startGateway(t, cfg)
	}

	a, b := pair("\n    limit: {policies: [2/minute burst 2]}")
	for i, g := range []*running{a, b} {
		if resp, _ := do(t, "GET", g.base+"/v1/ok", "", false); resp.StatusCode != 200 {
			t.Fatalf("quota, gateway %d: %d", i, resp.StatusCode)
		}
	}
	if resp, body := do(t, "GET", a.base+"/v1/ok", "", false); resp.StatusCode != 429 || problemTypeOf(t, body) != "upstream-quota-exhausted" {
		t.Fatalf("past the shared quota: %d %q", resp.StatusCode, body)
	}
	if calls.Load() != 2 {
		t.Fatalf("quota: %d calls, want 2", calls.Load())
	}

	calls.Store(0)
	a, b = pair(breakerCfg)
	for i := 0; i < 2; i++ {
		if resp, _ := do(t, "GET", a.base+"/v1/fail", "", false); resp.StatusCode != 500 {
			t.Fatalf("breaker, request %d: %d", i, resp.StatusCode)
		}
	}
	resp, body := do(t, "GET", b.base+"/v1/fail", "", false)
	if resp.StatusCode != 503 || problemTypeOf(t, body) != "upstream-circuit-open" || calls.Load() != 2 {
		t.Fatalf("the other gateway: %d %q, %d calls", resp.StatusCode, body, calls.Load())
	}
}
