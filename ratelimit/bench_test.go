package ratelimit_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/leveehq/levee/ratelimit"
)

// The in-process limiter next to golang.org/x/time/rate. Every benchmark
// advances its clock by 1 µs per call against a 1,000,000/s policy, so
// calls are admitted and state is written, the common case. The redis_rate
// comparison needs a server and lives in store/redis/redislimit.

func benchPolicy() ratelimit.Policy {
	return ratelimit.Policy{Name: "bench", Limit: 1_000_000, Period: time.Second, Burst: 1000}
}

// One key, like a single rate.Limiter.
func BenchmarkLocalAllowN(b *testing.B) {
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	p := benchPolicy()
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.AllowN(now, p, "client-1", 1)
	}
}

func BenchmarkXTimeRateAllowN(b *testing.B) {
	lim := rate.NewLimiter(rate.Limit(1_000_000), 1000)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		lim.AllowN(now, 1)
	}
}

const manyKeys = 100_000

func keyStrings(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "client-" + strconv.Itoa(i)
	}
	return keys
}

// 100,000 distinct keys in turn: the lookup a keyed limiter needs.
func BenchmarkLocalAllowNManyKeys(b *testing.B) {
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	p := benchPolicy()
	keys := keyStrings(manyKeys)
	now := t0
	for _, k := range keys {
		l.AllowN(now, p, k, 1)
	}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		l.AllowN(now, p, keys[i], 1)
		if i++; i == len(keys) {
			i = 0
		}
	}
}

// The usual way to key x/time/rate: a sync.Map of limiters.
func BenchmarkXTimeRateManyKeys(b *testing.B) {
	var m sync.Map
	keys := keyStrings(manyKeys)
	for _, k := range keys {
		m.Store(k, rate.NewLimiter(rate.Limit(1_000_000), 1000))
	}
	now := t0
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		v, _ := m.Load(keys[i])
		v.(*rate.Limiter).AllowN(now, 1)
		if i++; i == len(keys) {
			i = 0
		}
	}
}

// All cores, distinct keys per goroutine: Local's shards against one
// x/time/rate limiter per key in a sync.Map.
func BenchmarkLocalAllowNParallel(b *testing.B) {
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	p := benchPolicy()
	keys := keyStrings(manyKeys)
	for _, k := range keys {
		l.AllowN(t0, p, k, 1)
	}
	var base atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(base.Add(7919)) % len(keys)
		now := t0
		for pb.Next() {
			now = now.Add(time.Microsecond)
			l.AllowN(now, p, keys[i], 1)
			if i++; i == len(keys) {
				i = 0
			}
		}
	})
}

func BenchmarkXTimeRateParallel(b *testing.B) {
	var m sync.Map
	keys := keyStrings(manyKeys)
	for _, k := range keys {
		m.Store(k, rate.NewLimiter(rate.Limit(1_000_000), 1000))
	}
	var base atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := int(base.Add(7919)) % len(keys)
		now := t0
		for pb.Next() {
			now = now.Add(time.Microsecond)
			v, _ := m.Load(keys[i])
			v.(*rate.Limiter).AllowN(now, 1)
			if i++; i == len(keys) {
				i = 0
			}
		}
	})
}

// A request's three policies decided together, charged all or none.
func BenchmarkLocalDecide3(b *testing.B) {
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	ds := []ratelimit.Demand{
		{Policy: benchPolicy(), Key: "203.0.113.7", Cost: 1},
		{Policy: ratelimit.Policy{Name: "daily", Limit: 1_000_000_000, Period: 24 * time.Hour}, Key: "api-key-1", Cost: 1},
		{Policy: ratelimit.Policy{Name: "inflight", Kind: ratelimit.KindConcurrency, Limit: 100}, Key: "", Cost: 1},
	}
	rs := make([]ratelimit.Result, len(ds))
	ctx := context.Background()
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		tk, _ := l.Decide(ctx, now, ds, rs)
		_ = l.Release(ctx, ds, tk)
	}
}

// The whole middleware: key extraction, decision, headers.
func BenchmarkMiddlewareLocal(b *testing.B) {
	mw, err := ratelimit.Middleware(ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: benchPolicy(), Key: ratelimit.ClientIP(nil)},
		{Policy: ratelimit.Policy{Name: "daily", Limit: 1_000_000_000, Period: 24 * time.Hour}, Key: ratelimit.Header("X-Api-Key")},
	}})
	if err != nil {
		b.Fatal(err)
	}
	h := mw(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("X-Api-Key", "api-key-1")
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}

// Memory per active key, and what is left once the keys are idle and
// swept: 1,000,000 distinct keys through one Local. Reported as B/key
// (heap growth per key while all are active) and B/key-after-sweep.
func BenchmarkLocalMemory1M(b *testing.B) {
	const n = 1_000_000
	keys := keyStrings(n)
	p := ratelimit.Policy{Name: "mem", Limit: 1, Period: time.Hour}
	var perKey, after float64
	for b.Loop() {
		runtime.GC()
		var before, full, swept runtime.MemStats
		runtime.ReadMemStats(&before)
		l := ratelimit.NewLocal(ratelimit.LocalOptions{})
		for _, k := range keys {
			l.AllowN(t0, p, k, 1)
		}
		runtime.GC()
		runtime.ReadMemStats(&full)
		if l.Len() != n {
			b.Fatalf("Len %d", l.Len())
		}
		if left := l.Sweep(t0.Add(2 * time.Hour)); left != 0 {
			b.Fatalf("%d keys left after sweep", left)
		}
		runtime.GC()
		runtime.ReadMemStats(&swept)
		perKey += float64(int64(full.HeapAlloc)-int64(before.HeapAlloc)) / n
		after += float64(int64(swept.HeapAlloc)-int64(before.HeapAlloc)) / n
		runtime.KeepAlive(l)
	}
	b.ReportMetric(perKey/float64(b.N), "B/key")
	b.ReportMetric(after/float64(b.N), "B/key-after-sweep")
}
