package gateway_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/internal/proccpu"
)

// ingestProfile, when set, is where BenchmarkWebhookIngest writes a CPU
// profile of the sending window alone (-test.cpuprofile also covers the
// drain after it, which is deliveries only):
//
//	./gw.test -test.run '^$' -test.bench 'WebhookIngest/sqlite' -test.benchtime 10000x -ingestprofile ingest.prof
var ingestProfile = flag.String("ingestprofile", "", "write a CPU profile of BenchmarkWebhookIngest's sending window to this file")

// BenchmarkWebhookIngest measures the gateway's webhook ingest end to end
// on each queue store: signed Standard Webhooks events POSTed by 16
// concurrent senders, each answered 202 once verified, deduplicated and
// stored durably, then delivered by the queue's worker to a local
// receiver. It reports accepted/s, the ingest latency (POST to 202) and
// the delivery latency (POST to the receiver) at p50 and p99.
//
//	go test -run '^$' -bench WebhookIngest -benchtime 5000x ./gateway/
func BenchmarkWebhookIngest(b *testing.B) {
	for _, name := range []string{"sqlite", "postgres", "nats"} {
		b.Run(name, func(b *testing.B) {
			var store string
			switch name {
			case "sqlite":
				store = fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(b.TempDir(), "levee.db"))
			case "postgres":
				_, schema := pgSchema(b)
				store = fmt.Sprintf("store: {type: postgres, postgres: {url: %q, schema: %s}}\nqueue_store: {type: postgres, postgres: {schema: %s}}\n", postgresURL(), schema, schema)
			case "nats":
				server, prefix := natsPrefix(b)
				store = fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\nqueue_store: {type: nats, nats: {url: %q, prefix: %s}}\n",
					filepath.Join(b.TempDir(), "levee.db"), server, prefix)
			}
			var mu sync.Mutex
			var e2e []time.Duration
			recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var ev struct{ Sent int64 }
				body, _ := io.ReadAll(r.Body)
				if json.Unmarshal(body, &ev) == nil && ev.Sent > 0 {
					mu.Lock()
					e2e = append(e2e, time.Since(time.Unix(0, ev.Sent)))
					mu.Unlock()
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			defer recv.Close()
			g := startGateway(b, asyncConfig(store, recv.URL+"/events"))
			var seq atomic.Int64
			var lmu sync.Mutex
			var ingest []time.Duration
			b.SetParallelism(8) // 16 senders on this 2-core machine
			b.ResetTimer()
			stopProfile := startIngestProfile(b, name)
			start, cpu0 := time.Now(), proccpu.Used()
			b.RunParallel(func(pb *testing.PB) {
				client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
				var mine []time.Duration
				for pb.Next() {
					id := fmt.Sprintf("evt_%d", seq.Add(1))
					t0 := time.Now()
					req := signedWebhook(b, g.base, id, fmt.Sprintf(`{"sent":%d}`, t0.UnixNano()), t0)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusAccepted {
						b.Errorf("%s: %d", id, resp.StatusCode)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				lmu.Lock()
				ingest = append(ingest, mine...)
				lmu.Unlock()
			})
			elapsed, cpu := time.Since(start), proccpu.Used()-cpu0
			stopProfile()
			b.StopTimer()
			n := int(seq.Load())
			if !poll.Wait(120*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(e2e) >= n }) {
				mu.Lock()
				b.Fatalf("%d of %d events delivered", len(e2e), n)
			}
			b.ReportMetric(float64(len(ingest))/elapsed.Seconds(), "accepted/s")
			// The CPU the whole process (senders, gateway, deliveries, the
			// receiver) used while the events were sent, in cores: below
			// the machine's count, something other than CPU bounds ingest.
			b.ReportMetric(cpu.Seconds()/elapsed.Seconds(), "cpu-cores")
			b.ReportMetric(pct(ingest, 50), "ingest-p50-ms")
			b.ReportMetric(pct(ingest, 99), "ingest-p99-ms")
			mu.Lock()
			b.ReportMetric(pct(e2e, 50), "delivery-p50-ms")
			b.ReportMetric(pct(e2e, 99), "delivery-p99-ms")
			mu.Unlock()
		})
	}
}

// startIngestProfile starts the -ingestprofile CPU profile (one file per
// store: the name gets "-<store>" before its extension) and returns what
// stops it.
func startIngestProfile(b *testing.B, store string) func() {
	if *ingestProfile == "" {
		return func() {}
	}
	ext := filepath.Ext(*ingestProfile)
	f, err := os.Create(strings.TrimSuffix(*ingestProfile, ext) + "-" + store + ext)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

func pct(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[(len(s)-1)*p/100]) / float64(time.Millisecond)
}
