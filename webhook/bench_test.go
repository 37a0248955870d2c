package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	wh "github.com/leveehq/levee/webhook"
)

// benchBody is a 1.5 KB Stripe-like event.
var benchBody = []byte(`{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","api_version":"2024-06-20","created":1686089970,` +
	`"data":{"object":{"id":"pi_3NG8Du2eZvKYlo2C0l4IGtIq","object":"payment_intent","amount":2000,"currency":"usd",` +
	`"metadata":{"order_id":"6735"},"description":"` + strings.Repeat("x", 1200) + `"}},"type":"payment_intent.succeeded"}`)

// BenchmarkVerify measures Verify per scheme for a 1.5 KB body, with one
// secret and with two (a rotation: the signature matches the second).
func BenchmarkVerify(b *testing.B) {
	for _, secrets := range [][]string{{secretNew}, {secretOld, secretNew}} {
		receiver := newSchemes(b, secrets...)
		sender := newSchemes(b, secretNew)
		names := make([]string, 0, len(receiver))
		for n := range receiver {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, name := range names {
			s := receiver[name]
			h := signed(b, sender[name], "msg_1", benchBody, t0)
			b.Run(fmt.Sprintf("%s/secrets=%d", name, len(secrets)), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(benchBody)))
				for b.Loop() {
					if _, err := s.Verify(h, benchBody, t0); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkIDFromJSON(b *testing.B) {
	for _, path := range []string{"id", "data.object.id"} {
		b.Run(path, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := wh.IDFromJSON(benchBody, path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type nopSink struct{}

func (nopSink) Accept(context.Context, wh.Event) error { return nil }

// BenchmarkHandler is one whole ingest (read, verify, id from the body,
// sink) through ServeHTTP, without a network or a Dedupe.
func BenchmarkHandler(b *testing.B) {
	s := must(wh.NewStripe(wh.Config{Secrets: []string{"whsec_bench"}}))
	h := must(wh.NewHandler(s, nopSink{}, wh.Options{Now: func() time.Time { return t0 }}))
	hdr := signed(b, s, "", benchBody, t0)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(benchBody))
		r.Header = hdr
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusAccepted {
			b.Fatal(w.Code, w.Body)
		}
	}
}

// BenchmarkIDFromJSONDecode is the same lookup by a full encoding/json
// decode (the fuzz test's reference), for comparison in one run.
func BenchmarkIDFromJSONDecode(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := referenceID(benchBody, "data.object.id"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJSONValid is json.Valid alone on the same body: the part of
// IDFromJSON (and of Stripe's Verify) that checks the body is JSON.
func BenchmarkJSONValid(b *testing.B) {
	for b.Loop() {
		if !json.Valid(benchBody) {
			b.Fatal("invalid")
		}
	}
}
