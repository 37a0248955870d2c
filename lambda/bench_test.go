package lambda_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
)

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":"ch_1","status":"succeeded"}`)
	})
}

// BenchmarkAdapter measures what serving an HTTP-shaped event costs over
// calling the same net/http handler directly: Direct is the handler on
// an httptest request; the others decode the event, convert it, run the
// handler and encode the response event (no idempotency layer).
func BenchmarkAdapter(b *testing.B) {
	const body = `{"amount":100,"currency":"eur"}`
	b.Run("Direct", func(b *testing.B) {
		h := okHandler()
		b.ReportAllocs()
		for b.Loop() {
			r := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(body))
			h.ServeHTTP(httptest.NewRecorder(), r)
		}
	})
	for _, tc := range httpEvents {
		if strings.Contains(tc.file, "headers-only") || strings.Contains(tc.file, "no-authorizer") {
			continue
		}
		ev := asPOST(b, eventFile(b, tc.file), body, map[string]string{"content-type": "application/json"})
		b.Run(tc.kind.String()+"/"+tc.file, func(b *testing.B) {
			h, _ := lambda.NewHTTPHandler(okHandler(), lambda.HTTPOptions{})
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.Invoke(ctx, ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInvocation runs whole invocations through the idempotency
// layer with a Lambda-like deadline (so the deadline guard runs too), and
// reports the store calls per invocation counted at the store (memory) or
// at the HTTP client (DynamoDB on minidyn): a new request costs 2, a
// replay 1.
func BenchmarkInvocation(b *testing.B) {
	for _, st := range []string{"memory", "dynamodb"} {
		b.Run(st, func(b *testing.B) {
			var calls atomic.Int64
			var s idempotency.Store
			if st == "memory" {
				s = countingStore{Store: newMemory(), n: &calls}
			} else {
				s = newDynamo(b, &calls)
			}
			h, _ := lambda.NewHTTPHandler(okHandler(), lambda.HTTPOptions{Config: lambda.Config{Store: s}})
			raw := eventFile(b, "apigw-v2-request-no-authorizer.json")
			ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
			defer cancel()
			b.Run("HTTPNew", func(b *testing.B) {
				var id [6]byte
				_, _ = rand.Read(id[:])
				evs := make([][]byte, b.N) // a fresh key per op, made before the clock starts
				for i := range evs {
					evs[i] = asPOST(b, raw, `{"amount":100}`, map[string]string{"idempotency-key": fmt.Sprintf("new-%x-%d", id, i)})
				}
				calls.Store(0)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := h.Invoke(ctx, evs[i]); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(calls.Load())/float64(b.N), "storecalls/op")
			})
			b.Run("HTTPReplay", func(b *testing.B) {
				ev := asPOST(b, raw, `{"amount":100}`, map[string]string{"idempotency-key": st + "-replay"})
				if _, err := h.Invoke(ctx, ev); err != nil {
					b.Fatal(err)
				}
				calls.Store(0)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := h.Invoke(ctx, ev); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(calls.Load())/float64(b.N), "storecalls/op")
			})
		})
	}
}
