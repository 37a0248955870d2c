package queuetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/proccpu"
	"github.com/leveehq/levee/queue"
)

// Bench runs the standard queue benchmarks on b, so every backend reports
// comparable numbers:
//
//   - EnqueueParallel: single-message Enqueue calls from 64 goroutines (a
//     gateway accepting async work), reporting accepted msgs/s, the
//     process's CPU per message and the p50 and p99 latency of one
//     Enqueue (durable when it returns);
//   - EnqueueDedupeParallel: the same, each message with a dedupe id of
//     its own (a gateway accepting webhooks);
//   - EndToEnd: Enqueue to the handler's call, one message at a time
//     through a running Worker, reporting p50 and p99.
func Bench(b *testing.B, newBackend func(b *testing.B) queue.Backend) {
	ctx := context.Background()
	b.Run("EnqueueParallel", func(b *testing.B) { enqueueParallel(b, newBackend, false) })
	b.Run("EnqueueDedupeParallel", func(b *testing.B) { enqueueParallel(b, newBackend, true) })
	b.Run("EndToEnd", func(b *testing.B) {
		q, err := queue.New(newBackend(b), queue.Config{Name: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		got := make(chan time.Time, 1)
		var n atomic.Int64
		w, err := q.NewWorker(queue.WorkerConfig{Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			n.Add(1)
			got <- time.Now()
			return nil
		})})
		if err != nil {
			b.Fatal(err)
		}
		_ = w.Start(ctx)
		defer w.Stop()
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t := time.Now()
			if _, err := q.Enqueue(ctx, &queue.Message{Payload: []byte(strconv.Itoa(i))}); err != nil {
				b.Fatal(err)
			}
			select {
			case at := <-got:
				lat = append(lat, at.Sub(t))
			case <-time.After(30 * time.Second):
				b.Fatal("not delivered within 30s")
			}
		}
		b.StopTimer()
		report(b, lat)
	})
}

// enqueueParallel is EnqueueParallel, each message with a dedupe id of
// its own when dedupe is set.
func enqueueParallel(b *testing.B, newBackend func(b *testing.B) queue.Backend, dedupe bool) {
	ctx := context.Background()
	q, err := queue.New(newBackend(b), queue.Config{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"id":"evt_1","type":"payment.succeeded","amount":100}`)
	var mu sync.Mutex
	var seq atomic.Int64
	lat := make([]time.Duration, 0, b.N)
	b.SetParallelism(32)
	b.ResetTimer()
	start, cpu0 := time.Now(), proccpu.Used()
	b.RunParallel(func(pb *testing.PB) {
		local := make([]time.Duration, 0, 1024)
		for pb.Next() {
			m := &queue.Message{Target: "https://svc.internal/hook", Payload: payload}
			if dedupe {
				// Hashed like the gateway's webhook keys: no order.
				sum := sha256.Sum256([]byte(strconv.FormatInt(seq.Add(1), 10)))
				m.DedupeID = "levee:webhook:bench:" + hex.EncodeToString(sum[:16])
			}
			t := time.Now()
			res, err := q.Enqueue(ctx, m)
			if err != nil {
				b.Error(err)
				return
			}
			if res[0].Duplicate {
				b.Errorf("message %d reported a duplicate: every message here is new", len(local))
				return
			}
			local = append(local, time.Since(t))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	elapsed, cpu := time.Since(start), proccpu.Used()-cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	// The process's CPU per message (the callers' share is small): what
	// an embedded backend's writer costs; near zero for a server's.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
	report(b, lat)
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
