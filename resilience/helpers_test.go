package resilience_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leveehq/levee/resilience"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is an injected clock whose timers fire at once, moving the
// clock forward by their duration: waits take no wall time and are
// recorded.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newFakeClock() *fakeClock { return &fakeClock{now: epoch} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

func (c *fakeClock) NewTimer(d time.Duration) resilience.Timer {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.sleeps = append(c.sleeps, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	c.mu.Unlock()
	return fakeTimer(ch)
}

type fakeTimer chan time.Time

func (t fakeTimer) C() <-chan time.Time { return t }
func (t fakeTimer) Stop() bool          { return false }

// script is a Send that plays back outcomes, recording each attempt.
type script struct {
	mu       sync.Mutex
	steps    []step
	attempts []seen
}

type step struct {
	status int
	header http.Header
	err    error
}

type seen struct {
	n   int
	key string
}

func (s *script) send(_ context.Context, c *resilience.Call) (*http.Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts = append(s.attempts, seen{n: c.Attempt(), key: c.Key})
	st := s.steps[min(len(s.attempts)-1, len(s.steps)-1)]
	if st.err != nil {
		return nil, st.err
	}
	h := st.header
	if h == nil {
		h = http.Header{}
	}
	return &http.Response{StatusCode: st.status, Header: h, Body: io.NopCloser(strings.NewReader("body"))}, nil
}

func (s *script) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.attempts)
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func mustNew(t testing.TB, s resilience.Settings) *resilience.Executor {
	t.Helper()
	e, err := resilience.New(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// recorder is an Observer that keeps events.
type recorder struct {
	mu     sync.Mutex
	events []resilience.Event
	tries  []resilience.AttemptInfo
}

func (r *recorder) Attempt(ctx context.Context, a resilience.AttemptInfo) (context.Context, func(resilience.Outcome)) {
	r.mu.Lock()
	r.tries = append(r.tries, a)
	r.mu.Unlock()
	return ctx, func(resilience.Outcome) {}
}

func (r *recorder) Event(_ context.Context, e resilience.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) kinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		s := e.Kind.String()
		if e.Reason != "" {
			s += ":" + e.Reason
		}
		if e.Kind == resilience.EventBreakerTransition {
			s += ":" + e.From.String() + ">" + e.To.String()
		}
		out = append(out, s)
	}
	return out
}

func closeResp(resp *http.Response) {
	if resp != nil && resp.Body != nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
}
