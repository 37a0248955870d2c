// Package gatewaybench holds micro-benchmarks of the per-request work that
// gateway.Gateway does besides proxying, each next to a cheaper
// alternative, so the findings in bench/gateway/README.md can be checked:
//
//	go test ./bench/gateway -run '^$' -bench . -benchmem
//
// The code under test mirrors gateway/gateway.go (ServeHTTP, finish,
// newRequestID, newProxy) as of this commit; it does not import its
// unexported parts.
package gatewaybench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRequestID: gateway.newRequestID (16 bytes of crypto/rand, hex)
// against a per-process random prefix plus a counter.
func BenchmarkRequestID(b *testing.B) {
	b.Run("crypto-rand-hex", func(b *testing.B) {
		for b.Loop() {
			var buf [16]byte
			_, _ = rand.Read(buf[:])
			_ = hex.EncodeToString(buf[:])
		}
	})
	b.Run("prefix-counter", func(b *testing.B) {
		var seq atomic.Uint64
		var p [8]byte
		_, _ = rand.Read(p[:])
		prefix := hex.EncodeToString(p[:]) + "-"
		for b.Loop() {
			_ = prefix + strconv.FormatUint(seq.Add(1), 36)
		}
	})
}

// BenchmarkMetrics: the three label lookups of Gateway.finish against
// observers resolved once per route (and per status code).
func BenchmarkMetrics(b *testing.B) {
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"route", "method", "code", "idempotency"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "d"}, []string{"route"})
	up := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "u"}, []string{"route"})
	inFlight := prometheus.NewGauge(prometheus.GaugeOpts{Name: "f"})
	b.Run("with-label-values", func(b *testing.B) {
		for b.Loop() {
			inFlight.Inc()
			reqs.WithLabelValues("payments", "POST", strconv.Itoa(201), "none").Inc()
			dur.WithLabelValues("payments").Observe(0.001)
			up.WithLabelValues("payments").Observe(0.0008)
			inFlight.Dec()
		}
	})
	b.Run("pre-resolved", func(b *testing.B) {
		type routeMetrics struct {
			dur, up prometheus.Observer
			mu      sync.RWMutex
			byCode  map[int]prometheus.Counter
		}
		rm := &routeMetrics{dur: dur.WithLabelValues("payments"), up: up.WithLabelValues("payments"), byCode: map[int]prometheus.Counter{}}
		counter := func(code int) prometheus.Counter {
			rm.mu.RLock()
			c := rm.byCode[code]
			rm.mu.RUnlock()
			if c == nil {
				c = reqs.WithLabelValues("payments", "POST", strconv.Itoa(code), "none")
				rm.mu.Lock()
				rm.byCode[code] = c
				rm.mu.Unlock()
			}
			return c
		}
		for b.Loop() {
			inFlight.Inc()
			counter(201).Inc()
			rm.dur.Observe(0.001)
			rm.up.Observe(0.0008)
			inFlight.Dec()
		}
	})
}

func accessAttrs() []slog.Attr {
	return []slog.Attr{
		slog.String("request_id", "3f9c2a7e0b1d4c5e8f6a7b8c9d0e1f2a"),
		slog.String("route", "payments"),
		slog.String("method", "POST"),
		slog.String("path", "/v1/payments"),
		slog.Int("status", 201),
		slog.Float64("duration_ms", 1.234),
		slog.Float64("upstream_ms", 1.001),
		slog.Int64("bytes", 76),
		slog.String("idempotency", "none"),
		slog.String("remote", "127.0.0.1"),
	}
}

func appendAccess(buf []byte) []byte {
	buf = append(buf, `{"time":"`...)
	buf = time.Now().UTC().AppendFormat(buf, time.RFC3339Nano)
	buf = append(buf, `","level":"INFO","msg":"request","request_id":`...)
	buf = strconv.AppendQuote(buf, "3f9c2a7e0b1d4c5e8f6a7b8c9d0e1f2a")
	buf = append(buf, `,"route":"payments","method":"POST","path":"/v1/payments","status":`...)
	buf = strconv.AppendInt(buf, 201, 10)
	buf = append(buf, `,"duration_ms":`...)
	buf = strconv.AppendFloat(buf, 1.234, 'f', -1, 64)
	buf = append(buf, `,"upstream_ms":`...)
	buf = strconv.AppendFloat(buf, 1.001, 'f', -1, 64)
	buf = append(buf, `,"bytes":76,"idempotency":"none","remote":"127.0.0.1"}`+"\n"...)
	return buf
}

// BenchmarkAccessLog: the slog JSON line of Gateway.finish, formatting
// only (io.Discard) and with its write(2) to a file, against a
// hand-written appender and against a 64 KiB buffer (nginx's
// access_log ... buffer=64k).
func BenchmarkAccessLog(b *testing.B) {
	ctx := context.Background()
	open := func(b *testing.B) *os.File {
		f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		return f
	}
	b.Run("slog-json-format-only", func(b *testing.B) {
		l := slog.New(slog.NewJSONHandler(io.Discard, nil))
		for b.Loop() {
			l.LogAttrs(ctx, slog.LevelInfo, "request", accessAttrs()...)
		}
	})
	b.Run("slog-json-write-per-line", func(b *testing.B) {
		l := slog.New(slog.NewJSONHandler(open(b), nil))
		for b.Loop() {
			l.LogAttrs(ctx, slog.LevelInfo, "request", accessAttrs()...)
		}
	})
	b.Run("append-json-write-per-line", func(b *testing.B) {
		f := open(b)
		var buf []byte
		for b.Loop() {
			buf = appendAccess(buf[:0])
			_, _ = f.Write(buf)
		}
	})
	b.Run("append-json-buffered-64k", func(b *testing.B) {
		f := open(b)
		var buf []byte
		var out []byte
		for b.Loop() {
			buf = appendAccess(buf[:0])
			out = append(out, buf...)
			if len(out) >= 64<<10 {
				_, _ = f.Write(out)
				out = out[:0]
			}
		}
	})
}

// BenchmarkContext: what newProxy and ServeHTTP do to the request
// context per request, on a parent that is cancelable like a server
// connection's.
func BenchmarkContext(b *testing.B) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	errTimeout := context.DeadlineExceeded
	r, _ := http.NewRequestWithContext(parent, http.MethodPost, "http://127.0.0.1/v1/payments", nil)
	type key struct{}
	b.Run("with-timeout-cause+cancel", func(b *testing.B) {
		for b.Loop() {
			ctx, cancel := context.WithTimeoutCause(r.Context(), 30*time.Second, errTimeout)
			_ = r.WithContext(ctx)
			cancel()
		}
	})
	b.Run("with-value+with-context", func(b *testing.B) {
		v := new(int)
		for b.Loop() {
			_ = r.WithContext(context.WithValue(r.Context(), key{}, v))
		}
	})
}
