package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeAccessLine writes what slog's JSONHandler writes for the same
// record, field for field, whatever the strings hold.
func FuzzAccessLineMatchesSlog(f *testing.F) {
	f.Add("/v1/pay", "abc-1", "", "")
	f.Add("/a\"b\\c\n\r\t\x00\x1f<>&", "id", "dial tcp: refused", "per-ip,global")
	f.Add("/\xff\xfe bad utf8 \u2028\u2029 é 😀", "", "x", "y")
	f.Fuzz(func(t *testing.T, path, id, upErr, limited string) {
		rec := accessRecord{time: time.Date(2026, 11, 27, 9, 30, 1, 123456789, time.UTC), requestID: id, route: "pay", method: "POST",
			path: path, status: 201, duration: 1234567 * time.Nanosecond, upstreamDur: 987 * time.Microsecond, bytes: 42,
			idempotency: "new", remote: "127.0.0.1", upstreamErr: upErr, limitedBy: limited}
		var fast, viaSlog bytes.Buffer
		writeAccessLine(&fast, &rec)
		h := slog.NewJSONHandler(&viaSlog, nil)
		g := &Gateway{access: slog.New(h)}
		g.logAccess(context.Background(), &rec)
		if !json.Valid(fast.Bytes()) || !strings.HasSuffix(fast.String(), "}\n") || strings.Count(fast.String(), "\n") != 1 {
			t.Fatalf("not one JSON line: %q", fast.String())
		}
		var a, b map[string]any
		if err := json.Unmarshal(fast.Bytes(), &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(viaSlog.Bytes(), &b); err != nil {
			t.Fatal(err)
		}
		if a["time"] != "2026-11-27T09:30:01.123Z" {
			t.Fatalf("time %v, want slog's millisecond RFC 3339", a["time"])
		}
		delete(a, "time")
		delete(b, "time") // slog stamps its own clock
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("levee: %s\nslog:  %s", fast.String(), viaSlog.String())
		}
	})
}
