package idemtest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/leveehq/levee/idempotency"
)

// Bench runs the standard store benchmarks through Engine.Do, so every
// store reports comparable numbers:
//
//   - NewRequest: a fresh key each op — claim, run, complete (2 round trips);
//   - Replay: the same completed key each op — one claim that returns the
//     stored result (1 round trip);
//   - NewRequestParallel: NewRequest from GOMAXPROCS*4 goroutines, for
//     throughput against a networked store.
func Bench(b *testing.B, s idempotency.Store) {
	e := idempotency.New(s, idempotency.Options{})
	ctx := context.Background()
	fp := idempotency.FingerprintOf([]byte(`{"amount":100}`))
	result := []byte(`{"id":"ch_1","status":"succeeded"}`)
	fn := func(context.Context) ([]byte, error) { return result, nil }
	prefix := "bench/" + newRunID() + "/"

	b.Run("NewRequest", func(b *testing.B) {
		b.ReportAllocs()
		keys := make([]string, b.N)
		for i := range keys {
			keys[i] = prefix + "new/" + strconv.Itoa(i)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := e.Do(ctx, keys[i], fp, fn); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Replay", func(b *testing.B) {
		b.ReportAllocs()
		key := prefix + "replay"
		if _, err := e.Do(ctx, key, fp, fn); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			r, err := e.Do(ctx, key, fp, fn)
			if err != nil || !r.Replayed {
				b.Fatalf("replay: %v %v", r.Replayed, err)
			}
		}
	})
	b.Run("NewRequestParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(4)
		var n atomic.Int64
		p := prefix + "par/"
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.Do(ctx, p+strconv.FormatInt(n.Add(1), 10), fp, fn); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
