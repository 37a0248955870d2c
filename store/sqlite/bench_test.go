package sqlite_test

import (
	"context"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/sqlite"
)

// BenchmarkConcurrentNewKeys is the gateway's worst SQLite case: 100
// goroutines each running new requests (claim, then complete) on fresh
// keys through Engine.Do, on one file. ns/op is the wall time per request
// across all of them (1/throughput).
func BenchmarkConcurrentNewKeys(b *testing.B) {
	s, err := sqlite.Open(filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	e := idempotency.New(s, idempotency.Options{})
	fp := idempotency.FingerprintOf([]byte(`{"amount":100}`))
	result := []byte(`{"id":"ch_1","status":"succeeded"}`)
	fn := func(context.Context) ([]byte, error) { return result, nil }
	var (
		n   atomic.Int64
		mu  sync.Mutex
		lat []time.Duration
	)
	b.ReportAllocs()
	b.SetParallelism(max(1, 100/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			if _, err := e.Do(ctx, "k/"+strconv.FormatInt(n.Add(1), 10), fp, fn); err != nil {
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
	reportLatency(b, lat)
}

// reportLatency adds the median and 99th percentile of the requests'
// latencies (in microseconds) to the benchmark's output.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
