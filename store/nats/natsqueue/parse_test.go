package natsqueue

import (
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/leveehq/levee/queue"
)

// FuzzParseMessage: the parser never panics on any header; what natsMsg
// writes it reads back unchanged, and the header value it writes never
// holds a CR or LF (which would break or inject into the header block);
// invalid UTF-8 is refused.
func FuzzParseMessage(f *testing.F) {
	f.Add("id1", "https://t.example/x", "evt", `{"id":"a","enqueued_at":"2026-01-02T03:04:05Z"}`, []byte("body"))
	f.Add("", "", "", "", []byte(nil))
	f.Add("x\r\nLevee-Meta: {}", "t\n", "\x00", `{"id":`, []byte{0})
	f.Add("\xff", "", "", `{"id":1}`, []byte{})
	f.Fuzz(func(t *testing.T, id, target, dedupe, raw string, body []byte) {
		h := nats.Header{}
		h.Set(hMeta, raw)
		_, _ = parseMessage("q", h, body) // must not panic

		b := &Backend{opts: Options{Prefix: "P"}}
		m := &queue.Message{ID: id, Queue: "q", Target: target, DedupeID: dedupe, Payload: body,
			Headers: http.Header{"X-A": {raw}}, EnqueuedAt: time.Unix(0, int64(len(raw))*1e9+7).UTC()}
		nm, err := b.natsMsg(m)
		valid := utf8.ValidString(id) && utf8.ValidString(target) && utf8.ValidString(dedupe) && utf8.ValidString(raw)
		if !valid {
			if !errors.Is(err, ErrInvalidUTF8) {
				t.Fatalf("invalid UTF-8 accepted: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if v := nm.Header.Get(hMeta); strings.ContainsAny(v, "\r\n") {
			t.Fatalf("header value holds CR/LF: %q", v)
		}
		got, err := parseMessage("q", nm.Header, nm.Data)
		if id == "" {
			if err == nil {
				t.Fatal("a message without an id parsed")
			}
			return
		}
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if got.ID != m.ID || got.Target != m.Target || got.DedupeID != m.DedupeID || string(got.Payload) != string(m.Payload) ||
			!got.EnqueuedAt.Equal(m.EnqueuedAt) || !reflect.DeepEqual(got.Headers, m.Headers) {
			t.Fatalf("round trip: %+v, want %+v", got, m)
		}
	})
}
