package webhook_test

import (
	"errors"
	"testing"
	"time"

	wh "github.com/leveehq/levee/webhook"
)

// The tolerance edges, for every scheme that signs a timestamp: exactly at
// the bound is accepted on both sides, one second past is refused with the
// direction named, and the error carries the times.
func TestToleranceEdges(t *testing.T) {
	t.Parallel()
	const tol = 5 * time.Minute
	tests := []struct {
		name string
		now  time.Time // the receiver's clock; the event is signed at t0
		want error
	}{
		{"same second", t0, nil},
		{"now has a fraction of a second", t0.Add(999 * time.Millisecond), nil},
		{"exactly tolerance old", t0.Add(tol), nil},
		{"tolerance plus 1ns old", t0.Add(tol + time.Nanosecond), wh.ErrStaleTimestamp},
		{"one second past, stale", t0.Add(tol + time.Second), wh.ErrStaleTimestamp},
		{"a day old", t0.Add(24 * time.Hour), wh.ErrStaleTimestamp},
		{"exactly tolerance ahead", t0.Add(-tol), nil},
		{"one second past, future", t0.Add(-tol - time.Second), wh.ErrFutureTimestamp},
		{"a day ahead", t0.Add(-24 * time.Hour), wh.ErrFutureTimestamp},
	}
	schemes := newSchemes(t, secretNew)
	for _, name := range []string{"standard-webhooks", "stripe", "slack", "hmac"} {
		s := schemes[name]
		h := signed(t, s, "evt_42", body, t0)
		for _, tt := range tests {
			ev, err := s.Verify(h, body, tt.now)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Errorf("%s, %s: err = %v, want %v", name, tt.name, err, tt.want)
				continue
			}
			if err == nil {
				if !ev.Timestamp.Equal(t0) {
					t.Errorf("%s: Timestamp = %v, want %v", name, ev.Timestamp, t0)
				}
				continue
			}
			var te *wh.TimestampError
			if !errors.As(err, &te) || !te.Timestamp.Equal(t0) || !te.Now.Equal(tt.now) || te.Tolerance != tol {
				t.Errorf("%s, %s: %#v is not the expected *TimestampError", name, tt.name, err)
			}
		}
	}
}

func TestToleranceConfigurable(t *testing.T) {
	t.Parallel()
	s := must(wh.NewStripe(wh.Config{Secrets: []string{"k"}, Tolerance: 30 * time.Second}))
	h := signed(t, s, "", body, t0)
	if _, err := s.Verify(h, body, t0.Add(30*time.Second)); err != nil {
		t.Errorf("at the configured bound: %v", err)
	}
	if _, err := s.Verify(h, body, t0.Add(31*time.Second)); !errors.Is(err, wh.ErrStaleTimestamp) {
		t.Errorf("past the configured bound: %v", err)
	}
	if _, err := s.Verify(h, body, t0.Add(-31*time.Second)); !errors.Is(err, wh.ErrFutureTimestamp) {
		t.Errorf("ahead of the configured bound: %v", err)
	}
}

// A stale or future timestamp with a bad signature is reported as a bad
// signature: the timestamp errors mean "authentic but replayed".
func TestSignatureCheckedBeforeTimestamp(t *testing.T) {
	t.Parallel()
	s := must(wh.NewSlack(wh.Config{Secrets: []string{"k"}}))
	h := signed(t, s, "", body, t0)
	tampered := append([]byte("x"), body...)
	for _, now := range []time.Time{t0.Add(time.Hour), t0.Add(-time.Hour)} {
		if _, err := s.Verify(h, tampered, now); !errors.Is(err, wh.ErrBadSignature) {
			t.Errorf("now %v: err = %v, want ErrBadSignature", now, err)
		}
	}
}
