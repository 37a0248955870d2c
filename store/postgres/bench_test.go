package postgres_test

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/postgres"
)

// BenchmarkConcurrentNewKeys: 100 goroutines each running new requests
// (claim, then complete) on fresh keys through Engine.Do, over a pool of
// 32 connections (the gateway's). ns/op is the wall time per request
// across all of them (1/throughput); p50/p99 are request latencies.
func BenchmarkConcurrentNewKeys(b *testing.B) {
	schema := testSchema(b)
	s := mustNew(b, newPool(b, pgx.QueryExecModeCacheStatement, 32, nil), postgres.Options{Schema: schema})
	if err := s.Migrate(context.Background()); err != nil {
		b.Fatalf("Migrate: %v", err)
	}
	e := idempotency.New(s, idempotency.Options{})
	fp := idempotency.FingerprintOf([]byte(`{"amount":100}`))
	result := []byte(`{"id":"ch_1","status":"succeeded"}`)
	fn := func(context.Context) ([]byte, error) { return result, nil }
	var (
		n   atomic.Int64
		mu  sync.Mutex
		lat []time.Duration
	)
	prefix := "bench/" + randomHex(6) + "/"
	b.ReportAllocs()
	b.SetParallelism(max(1, 100/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			if _, err := e.Do(ctx, prefix+strconv.FormatInt(n.Add(1), 10), fp, fn); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
