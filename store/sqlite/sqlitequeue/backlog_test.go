package sqlitequeue_test

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/queue"
)

// rssMiB reads the process's resident set size (Linux; 0 elsewhere).
func rssMiB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkBacklog fills the queue with LEVEE_BENCH_BACKLOG messages
// (default 100,000) and reports the RSS before and after, then measures
// claim+ack throughput (one op = one message delivered) on top of that
// backlog:
//
//	go test -run '^$' -bench Backlog -benchtime 5000x ./store/sqlite/sqlitequeue/
func BenchmarkBacklog(b *testing.B) {
	n := 100_000
	if v := os.Getenv("LEVEE_BENCH_BACKLOG"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	if b.N == 1 {
		n = 1000 // the testing package's probe run: not worth a full fill
	}
	be := open(b, filepath.Join(b.TempDir(), "backlog.db"))
	q, err := queue.New(be, queue.Config{Name: "backlog"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	runtime.GC()
	before := rssMiB()
	payload := make([]byte, 200)
	start := time.Now()
	for i := 0; i < n; i += 500 {
		batch := make([]*queue.Message, 0, 500)
		for j := i; j < min(i+500, n); j++ {
			batch = append(batch, &queue.Message{Target: "t" + strconv.Itoa(j%16), Payload: payload})
		}
		if _, err := q.Enqueue(ctx, batch...); err != nil {
			b.Fatal(err)
		}
	}
	fill := time.Since(start)
	runtime.GC()
	after := rssMiB()
	b.ResetTimer()
	now := time.Now()
	for done := 0; done < b.N; {
		cs, err := be.Claim(ctx, queue.ClaimRequest{Queue: "backlog", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 8, PerTarget: 2})
		if err != nil || len(cs) == 0 {
			b.Fatalf("claim: %d, %v", len(cs), err)
		}
		for _, c := range cs {
			if err := be.Ack(ctx, c.Queue, c.ID, c.Token); err != nil {
				b.Fatal(err)
			}
		}
		done += len(cs)
	}
	b.StopTimer()
	runtime.GC()
	b.ReportMetric(before, "rss-empty-MiB")
	b.ReportMetric(after, "rss-full-MiB")
	b.ReportMetric(rssMiB(), "rss-end-MiB")
	b.ReportMetric(float64(n)/fill.Seconds(), "fill-msgs/s")
}
