package webhook_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	wh "github.com/leveehq/levee/webhook"
)

// onceSink dedupes by Source+ID in its Accept, like a queue whose enqueue
// checks a dedupe id atomically.
type onceSink struct {
	mu     sync.Mutex
	seen   map[string]bool
	stored int
	fail   int
}

func (s *onceSink) Accept(ctx context.Context, ev wh.Event) error {
	_, err := s.AcceptOnce(ctx, ev)
	return err
}

func (s *onceSink) AcceptOnce(_ context.Context, ev wh.Event) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return false, errors.New("disk full")
	}
	k := ev.Source + "\x00" + ev.ID
	if s.seen[k] {
		return true, nil
	}
	s.seen[k] = true
	s.stored++
	return false, nil
}

// TestHandlerSinkDedupes: with Options.SinkDedupes the sink's own dedupe
// is the only one: an event stored once, its redeliveries (also
// concurrent ones) answered 202 "duplicate", a failed write never marks
// it seen, and the options checked.
func TestHandlerSinkDedupes(t *testing.T) {
	t.Parallel()
	s := &onceSink{seen: map[string]bool{}, fail: 1}
	var mu sync.Mutex
	var outcomes []wh.Outcome
	h, err := wh.NewHandler(stdScheme(), s, wh.Options{Source: "acme", SinkDedupes: true, Now: func() time.Time { return t0 },
		OnResult: func(_ *http.Request, r wh.Result) { mu.Lock(); outcomes = append(outcomes, r.Outcome); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	scheme := stdScheme()
	hdr := signed(t, scheme, "msg_1", body, t0)
	send := func() *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/webhooks/x", bytes.NewReader(body))
		for k, v := range hdr {
			r.Header[k] = v
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	if w := send(); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("failed write: %d %s, want 503", w.Code, w.Body)
	}
	if w := send(); w.Code != http.StatusAccepted || w.Body.String() != `{"id":"msg_1","status":"accepted"}` {
		t.Fatalf("retry after the failure: %d %s", w.Code, w.Body)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if w := send(); w.Code != http.StatusAccepted || w.Body.String() != `{"id":"msg_1","status":"duplicate"}` {
				t.Errorf("redelivery: %d %s", w.Code, w.Body)
			}
		})
	}
	wg.Wait()
	if s.stored != 1 {
		t.Fatalf("stored %d times, want 1", s.stored)
	}
	mu.Lock()
	if len(outcomes) != 10 || outcomes[0] != wh.OutcomeFailed || outcomes[1] != wh.OutcomeAccepted || outcomes[9] != wh.OutcomeDuplicate {
		t.Fatalf("outcomes %v", outcomes)
	}
	mu.Unlock()

	if _, err := wh.NewHandler(stdScheme(), &sink{}, wh.Options{SinkDedupes: true}); err == nil {
		t.Fatal("SinkDedupes with a sink that does not dedupe: no error")
	}
	if _, err := wh.NewHandler(stdScheme(), s, wh.Options{SinkDedupes: true, Dedupe: newDedupe()}); err == nil {
		t.Fatal("SinkDedupes with a Dedupe too: no error")
	}
}
