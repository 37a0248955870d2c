package dynamodb

import (
	"crypto/rand"
	"net/http"
	"strings"
	"testing"

	"github.com/leveehq/levee/idempotency"
)

// BenchmarkEncodeResponse measures what Complete spends before its one
// request: encoding, and DEFLATE for responses over 4 KiB (kept only when
// smaller). "small" is never compressed; "json-96KB" compresses;
// "random-300KB" is tried and stored plain.
func BenchmarkEncodeResponse(b *testing.B) {
	s, err := New(nopAPI{}, Options{Table: "t"})
	if err != nil {
		b.Fatal(err)
	}
	random := make([]byte, 300<<10)
	_, _ = rand.Read(random)
	hdr := http.Header{"Content-Type": {"application/json"}}
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"small", []byte(`{"id":"ch_123","amount":100,"currency":"usd"}`)},
		{"json-96KB", []byte(strings.Repeat(`{"id":"ch_123","amount":100,"currency":"usd"},`, 2000))},
		{"random-300KB", random},
	} {
		b.Run(tc.name, func(b *testing.B) {
			resp := idempotency.Response{Status: 200, Header: hdr, Body: tc.body}
			b.SetBytes(int64(len(tc.body)))
			b.ReportAllocs()
			var stored int
			for b.Loop() {
				enc, _, err := s.encodeResponse("key", resp)
				if err != nil {
					b.Fatal(err)
				}
				stored = len(enc)
			}
			b.ReportMetric(float64(stored), "stored-bytes")
		})
	}
}

type nopAPI struct{ API }
