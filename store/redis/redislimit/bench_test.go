package redislimit_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/store/redis/redislimit"
)

// Throughput at 50 concurrent callers, the way a busy gateway calls the
// store: BenchmarkRedisDecide (levee's store, 1 and 4 policies per
// decision), BenchmarkRedisRate (github.com/go-redis/redis_rate, one
// policy per call) and BenchmarkRedisEVALSHAFloor (redis-benchmark running
// the same decision script, with no client-side work: the floor). Each
// reports decisions/s; the stores also report round trips per decision.
// Keys are drawn from 100,000 at random; the policy (100/s) admits them.

const callers = 50

func parallelism() int { return (callers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0) }

func benchClient(b *testing.B, hooks ...goredis.Hook) *goredis.Client {
	addr := redisAddr(b)
	c := goredis.NewClient(&goredis.Options{Addr: addr, ContextTimeoutEnabled: true, PoolSize: callers + 10, MinIdleConns: callers})
	for _, h := range hooks {
		c.AddHook(h)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

func reportRate(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "decisions/s")
}

func BenchmarkRedisDecide(b *testing.B) {
	for _, n := range []int{1, 4, -4} {
		name := "policies=" + strconv.Itoa(n)
		if n < 0 {
			n, name = -n, "policies=4,calendar" // 3 rate policies and a calendar quota
		}
		b.Run(name, func(b *testing.B) {
			cnt := &counter{}
			c := benchClient(b, cnt)
			// Rate keys expire by themselves within 10 ms (100/s
			// policies); calendar keys are deleted at the end.
			prefix := "levee:rlbench:" + randHex(4) + ":"
			s := newOwnStore(b, c, redislimit.Options{Prefix: prefix})
			pols := make([]ratelimit.Policy, n)
			for i := range pols {
				pols[i] = policy(b, "p"+strconv.Itoa(i), "100/s")
			}
			if strings.HasSuffix(name, "calendar") {
				pols[n-1] = policy(b, "q", "1000000000/day calendar")
				b.Cleanup(func() { deletePrefix(c, prefix) })
			}
			b.SetParallelism(parallelism())
			b.ReportAllocs()
			b.ResetTimer()
			before, start := cnt.n.Load(), time.Now()
			b.RunParallel(func(pb *testing.PB) {
				ds := make([]ratelimit.Demand, n)
				rs := make([]ratelimit.Result, n)
				ctx := context.Background()
				for pb.Next() {
					key := strconv.Itoa(rand.IntN(100_000))
					for i := range ds {
						ds[i] = ratelimit.Demand{Policy: pols[i], Key: key, Cost: 1}
					}
					if _, err := s.Decide(ctx, time.Time{}, ds, rs); err != nil {
						b.Error(err)
						return
					}
				}
			})
			reportRate(b, start)
			b.ReportMetric(float64(cnt.n.Load()-before)/float64(b.N), "roundtrips/op")
		})
	}
}

// BenchmarkRedisMiddleware is one decision through the middleware (one
// rule), which runs the store call on its own goroutine under the
// breaker's stall watch: compare BenchmarkRedisDecide/policies=1.
func BenchmarkRedisMiddleware(b *testing.B) {
	c := benchClient(b)
	s := newOwnStore(b, c, redislimit.Options{Prefix: "levee:rlbench:" + randHex(4) + ":"})
	mw, err := ratelimit.Middleware(ratelimit.Options{Store: s, Rules: []ratelimit.Rule{
		{Policy: policy(b, "p", "100/s"), Key: ratelimit.Header("X-K")},
	}})
	if err != nil {
		b.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	b.SetParallelism(parallelism())
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		w := httptest.NewRecorder()
		for pb.Next() {
			r.Header.Set("X-K", strconv.Itoa(rand.IntN(100_000)))
			h.ServeHTTP(w, r)
		}
	})
	reportRate(b, start)
}

func BenchmarkRedisRate(b *testing.B) {
	cnt := &counter{}
	c := benchClient(b, cnt)
	lim := redis_rate.NewLimiter(c)
	prefix := "levee:rlbench:" + randHex(4) + ":"
	limit := redis_rate.PerSecond(100)
	lim.Allow(context.Background(), prefix+"warm", limit) // load the script
	b.SetParallelism(parallelism())
	b.ReportAllocs()
	b.ResetTimer()
	before, start := cnt.n.Load(), time.Now()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := lim.Allow(ctx, prefix+strconv.Itoa(rand.IntN(100_000)), limit); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, start)
	b.ReportMetric(float64(cnt.n.Load()-before)/float64(b.N), "roundtrips/op")
}

// The floor: redis-benchmark (-c 50) running EVALSHA of the same script
// with the same arguments as BenchmarkRedisDecide, as
// bench/redis-evalsha-floor.sh does. Skipped without redis-benchmark.
func BenchmarkRedisEVALSHAFloor(b *testing.B) {
	addr := redisAddr(b)
	bin, err := exec.LookPath("redis-benchmark")
	if err != nil {
		b.Skip("redis-benchmark not installed")
	}
	c := benchClient(b)
	sha, err := c.ScriptLoad(context.Background(), redislimit.DecideScript()).Result()
	if err != nil {
		b.Fatal(err)
	}
	host, port, _ := strings.Cut(addr, ":")
	for _, n := range []int{1, 4} {
		b.Run("policies="+strconv.Itoa(n), func(b *testing.B) {
			prefix := "levee:rlbench:" + randHex(4) + ":{all}:r:"
			args := []string{"-h", host, "-p", port, "-c", strconv.Itoa(callers), "-n", strconv.Itoa(max(b.N, 10_000)),
				"-r", "100000", "--csv", "EVALSHA", sha, strconv.Itoa(n)}
			for i := range n {
				args = append(args, prefix+strconv.Itoa(i)+":__rand_int__")
			}
			args = append(args, "0")
			for range n { // 100/s: interval 10000 µs, burst 100 → 1000000 µs, cost 1
				args = append(args, "r", "10000", "1000000", "1")
			}
			cmd := exec.Command(bin, args...)
			cmd.Stderr = os.Stderr
			b.ResetTimer()
			out, err := cmd.Output()
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
			if err != nil || len(rows) < 2 || len(rows[1]) < 2 {
				b.Fatalf("unexpected redis-benchmark output %q: %v", out, err)
			}
			rps, err := strconv.ParseFloat(rows[1][1], 64)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(rps, "decisions/s")
			b.ReportMetric(1, "roundtrips/op")
		})
	}
}
