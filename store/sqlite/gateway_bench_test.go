package sqlite

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/proccpu"
)

// BenchmarkGatewayNewKeys is the store's share of the gateway's new
// idempotent request: 100 goroutines each claim a fresh random key of the
// gateway's shape (64 hex characters, as idempotency.ScopedKey makes) and
// complete it with a small JSON response and its headers, on one file.
// ns/op is wall time per request across all of them (1/throughput); it
// also reports the mean group-commit batch and the request latency.
func BenchmarkGatewayNewKeys(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	fp := idempotency.FingerprintOf([]byte(`{"amount":100}`))
	resp := idempotency.Response{Status: 200, Header: http.Header{
		"Content-Type": {"application/json"}, "Request-Id": {"req_0123456789abcdef"},
	}, Body: []byte(`{"id":"ch_1","object":"charge","amount":100,"currency":"usd","status":"succeeded"}`)}
	var (
		mu  sync.Mutex
		lat []time.Duration
	)
	b.ReportAllocs()
	b.SetParallelism(max(1, 100/runtime.GOMAXPROCS(0)))
	b0, o0 := s.w.Stats()
	cpu0 := proccpu.Used()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		var raw [32]byte
		var mine []time.Duration
		for pb.Next() {
			_, _ = rand.Read(raw[:])
			key := hex.EncodeToString(raw[:])
			start := time.Now()
			now := time.Now()
			res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: key, Fingerprint: fp, Token: 1,
				Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(24 * time.Hour)})
			if err != nil || !res.Claimed {
				b.Errorf("claim: %+v %v", res, err)
				return
			}
			if err := s.Complete(ctx, key, 1, resp, now, now.Add(24*time.Hour)); err != nil {
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
	b.ReportMetric(float64((proccpu.Used()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	b1, o1 := s.w.Stats()
	if b1 > b0 {
		b.ReportMetric(float64(o1-o0)/float64(b1-b0), "ops/batch")
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	}
}
