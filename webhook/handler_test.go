package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	wh "github.com/leveehq/levee/webhook"
)

// sink records accepted events; fail makes the next Accept calls fail.
type sink struct {
	mu     sync.Mutex
	events []wh.Event
	fail   int           // number of Accept calls left to fail
	gate   chan struct{} // when set, Accept waits for it
}

func (s *sink) Accept(ctx context.Context, ev wh.Event) error {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail > 0 {
		s.fail--
		return errors.New("disk full at /var/lib/levee/queue.db")
	}
	ev.Body = append([]byte(nil), ev.Body...)
	s.events = append(s.events, ev)
	return nil
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// dedupe is an in-memory Dedupe with the contract of the idempotency engine:
// a claim is held while the sink runs; a second Claim either waits for it
// (wait) or gets ErrInFlight.
type dedupe struct {
	mu       sync.Mutex
	seen     map[string]bool
	inflight map[string]chan struct{}
	wait     bool
	claimErr error
	doneErr  error
	released int
	waiting  int // Claim calls waiting for an in-flight claim
}

func newDedupe() *dedupe {
	return &dedupe{seen: map[string]bool{}, inflight: map[string]chan struct{}{}}
}

func (d *dedupe) Claim(ctx context.Context, ev wh.Event) (func(context.Context, error) error, bool, error) {
	key := ev.Source + "\x00" + ev.ID
	for {
		d.mu.Lock()
		if d.claimErr != nil {
			d.mu.Unlock()
			return nil, false, d.claimErr
		}
		if d.seen[key] {
			d.mu.Unlock()
			return nil, true, nil
		}
		ch, busy := d.inflight[key]
		if !busy {
			ch = make(chan struct{})
			d.inflight[key] = ch
			d.mu.Unlock()
			return func(_ context.Context, sinkErr error) error {
				d.mu.Lock()
				defer d.mu.Unlock()
				delete(d.inflight, key)
				close(ch)
				if sinkErr == nil {
					d.seen[key] = true
				} else {
					d.released++
				}
				return d.doneErr
			}, false, nil
		}
		if !d.wait {
			d.mu.Unlock()
			return nil, false, wh.ErrInFlight
		}
		d.waiting++
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		d.mu.Lock()
		d.waiting--
		d.mu.Unlock()
	}
}

type fixture struct {
	scheme signingScheme
	sink   *sink
	dedupe *dedupe
	h      *wh.Handler
	mu     sync.Mutex
	res    []wh.Result
}

func newFixture(t *testing.T, s signingScheme, opts wh.Options) *fixture {
	t.Helper()
	f := &fixture{scheme: s, sink: &sink{}}
	if opts.Dedupe == nil {
		f.dedupe = newDedupe()
		opts.Dedupe = f.dedupe
	}
	if opts.Now == nil {
		opts.Now = func() time.Time { return t0 }
	}
	opts.OnResult = func(_ *http.Request, r wh.Result) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.res = append(f.res, r)
	}
	f.h = must(wh.NewHandler(s, f.sink, opts))
	return f
}

func (f *fixture) last() wh.Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.res[len(f.res)-1]
}

func (f *fixture) send(t *testing.T, h http.Header, b []byte) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/webhooks/x", bytes.NewReader(b))
	for k, v := range h {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func stdScheme() signingScheme {
	return must(wh.NewStandardWebhooks(wh.Config{Secrets: []string{secretNew}}))
}

func TestHandlerAcceptsThenDedupes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, stdScheme(), wh.Options{Source: "acme"})
	h := signed(t, f.scheme, "msg_1", body, t0)
	for i, want := range []string{"accepted", "duplicate", "duplicate"} {
		w := f.send(t, h, body)
		if w.Code != http.StatusAccepted || w.Body.String() != `{"id":"msg_1","status":"`+want+`"}` ||
			w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("delivery %d: %d %s %v", i, w.Code, w.Body, w.Header())
		}
		if got := f.last(); string(got.Outcome) != want || got.Event.ID != "msg_1" || got.Event.Source != "acme" {
			t.Fatalf("delivery %d: result %+v", i, got)
		}
	}
	if n := f.sink.count(); n != 1 {
		t.Fatalf("sink got %d events, want 1", n)
	}
	ev := f.sink.events[0]
	if ev.ID != "msg_1" || ev.Source != "acme" || ev.Scheme != "standard-webhooks" || !bytes.Equal(ev.Body, body) || ev.Header.Get("Webhook-Id") != "msg_1" {
		t.Fatalf("sink event = %+v", ev)
	}
}

// A sink failure answers 503 with Retry-After and never marks the event
// seen: the sender's retry reaches the sink again.
func TestHandlerSinkFailureNeverMarksSeen(t *testing.T) {
	t.Parallel()
	f := newFixture(t, stdScheme(), wh.Options{RetryAfter: 3 * time.Second})
	f.sink.fail = 2
	h := signed(t, f.scheme, "msg_1", body, t0)
	for i := range 2 {
		w := f.send(t, h, body)
		p := decodeProblem(t, w, http.StatusServiceUnavailable, wh.TypeUnavailable)
		if w.Header().Get("Retry-After") != "3" || strings.Contains(p.Detail, "disk full") {
			t.Fatalf("attempt %d: Retry-After %q, detail %q", i, w.Header().Get("Retry-After"), p.Detail)
		}
		if r := f.last(); r.Outcome != wh.OutcomeFailed || !errors.Is(r.Err, wh.ErrSink) || !strings.Contains(r.Err.Error(), "disk full") {
			t.Fatalf("attempt %d: result %+v", i, r)
		}
	}
	if f.dedupe.released != 2 || f.sink.count() != 0 {
		t.Fatalf("released %d claims, sink has %d events", f.dedupe.released, f.sink.count())
	}
	if w := f.send(t, h, body); w.Code != http.StatusAccepted || !strings.Contains(w.Body.String(), "accepted") {
		t.Fatalf("retry after the sink recovered: %d %s", w.Code, w.Body)
	}
	if w := f.send(t, h, body); !strings.Contains(w.Body.String(), "duplicate") || f.sink.count() != 1 {
		t.Fatalf("after acceptance: %s, sink has %d", w.Body, f.sink.count())
	}
}

// The same event delivered twice at once is handed to the sink once and
// both senders get 202, when the Dedupe waits for the in-flight claim; and
// the second gets 409 with Retry-After when it does not.
func TestHandlerConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	for _, wait := range []bool{true, false} {
		f := newFixture(t, stdScheme(), wh.Options{})
		f.dedupe.wait = wait
		f.sink.gate = make(chan struct{})
		h := signed(t, f.scheme, "msg_1", body, t0)
		codes := make(chan int, 2)
		go func() { codes <- f.send(t, h, body).Code }()
		state := func(cond func(d *dedupe) bool) func() bool {
			return func() bool { f.dedupe.mu.Lock(); defer f.dedupe.mu.Unlock(); return cond(f.dedupe) }
		}
		// The first request holds the claim (its sink is blocked), then the second arrives.
		poll.Until(t, 5*time.Second, state(func(d *dedupe) bool { return len(d.inflight) == 1 }), "first request never claimed")
		var second *httptest.ResponseRecorder
		if wait {
			go func() { codes <- f.send(t, h, body).Code }()
			poll.Until(t, 5*time.Second, state(func(d *dedupe) bool { return d.waiting == 1 }), "second request never waited")
		} else {
			second = f.send(t, h, body)
		}
		close(f.sink.gate)
		got := []int{<-codes}
		if wait {
			got = append(got, <-codes)
			if got[0] != http.StatusAccepted || got[1] != http.StatusAccepted {
				t.Errorf("waiting dedupe: codes %v, want both 202", got)
			}
		} else {
			decodeProblem(t, second, http.StatusConflict, wh.TypeInFlight)
			if second.Header().Get("Retry-After") != "1" || got[0] != http.StatusAccepted {
				t.Errorf("non-waiting dedupe: first %d, second Retry-After %q", got[0], second.Header().Get("Retry-After"))
			}
		}
		if n := f.sink.count(); n != 1 {
			t.Errorf("wait=%v: sink got %d events, want 1", wait, n)
		}
	}
}

func TestHandlerRejections(t *testing.T) {
	t.Parallel()
	std := stdScheme()
	good := signed(t, std, "msg_1", body, t0)
	with := func(k, v string) http.Header { h := good.Clone(); h.Set(k, v); return h }
	without := func(k string) http.Header { h := good.Clone(); h.Del(k); return h }
	slack := must(wh.NewSlack(wh.Config{Secrets: []string{"k"}}))
	notJSON := []byte("a=b")
	tests := []struct {
		name   string
		scheme signingScheme
		opts   wh.Options
		header http.Header
		body   []byte
		status int
		typ    string
		err    error
	}{
		{"missing header", std, wh.Options{}, without("Webhook-Signature"), body, 400, wh.TypeHeaderMissing, wh.ErrMissingHeader},
		{"malformed header", std, wh.Options{}, with("Webhook-Timestamp", "soon"), body, 400, wh.TypeHeaderMalformed, wh.ErrMalformedHeader},
		{"bad signature", std, wh.Options{}, good, append([]byte(" "), body...), 403, wh.TypeSignatureInvalid, wh.ErrBadSignature},
		{"stale", std, wh.Options{Now: func() time.Time { return t0.Add(6 * time.Minute) }}, good, body, 400, wh.TypeTimestampStale, wh.ErrStaleTimestamp},
		{"future", std, wh.Options{Now: func() time.Time { return t0.Add(-6 * time.Minute) }}, good, body, 400, wh.TypeTimestampFuture, wh.ErrFutureTimestamp},
		{"too large", std, wh.Options{MaxBodyBytes: int64(len(body) - 1)}, good, body, 413, wh.TypeBodyTooLarge, wh.ErrBodyTooLarge},
		{"malformed JSON", slack, wh.Options{IDPath: "event_id"}, signed(t, slack, "", notJSON, t0), notJSON, 400, wh.TypeJSONMalformed, wh.ErrMalformedJSON},
		{"id path absent", std, wh.Options{IDPath: "data.object.missing"}, good, body, 422, wh.TypeIDMissing, wh.ErrMissingID},
		{"no id to dedupe", slack, wh.Options{}, signed(t, slack, "", notJSON, t0), notJSON, 422, wh.TypeIDMissing, wh.ErrMissingID},
		{"dedupe down", std, wh.Options{Dedupe: &dedupe{claimErr: errors.New("redis: connection refused")}}, good, body, 503, wh.TypeUnavailable, wh.ErrSink},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.scheme, tt.opts)
			w := f.send(t, tt.header, tt.body)
			p := decodeProblem(t, w, tt.status, tt.typ)
			if f.sink.count() != 0 {
				t.Error("the sink was called")
			}
			r := f.last()
			if !errors.Is(r.Err, tt.err) || r.Status != tt.status || r.Type != tt.typ {
				t.Errorf("result %+v, want err %v", r, tt.err)
			}
			if want := wh.OutcomeRejected; tt.status < 500 && r.Outcome != want {
				t.Errorf("outcome %q, want %q", r.Outcome, want)
			}
			for _, leak := range []string{secretNew, strings.TrimPrefix(secretNew, "whsec_"), good.Get("Webhook-Signature")[3:]} {
				if strings.Contains(w.Body.String(), leak) || strings.Contains(p.Detail, leak) {
					t.Errorf("answer %s shows a secret or signature", w.Body)
				}
			}
		})
	}
}

// A body over the limit is refused whether or not it announced its length,
// and one that cannot be read is 400 request-canceled.
func TestHandlerBodyReading(t *testing.T) {
	t.Parallel()
	f := newFixture(t, stdScheme(), wh.Options{MaxBodyBytes: 10})
	r := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader(strings.Repeat("x", 11))))
	if r.ContentLength != -1 {
		t.Fatal("test setup: want an unknown length")
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	decodeProblem(t, w, 413, wh.TypeBodyTooLarge)
	var tl *wh.BodyTooLargeError
	if !errors.As(f.last().Err, &tl) || tl.Limit != 10 {
		t.Errorf("err %v, want *BodyTooLargeError{10}", f.last().Err)
	}

	r = httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader("abc"), errReader{}))
	w = httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	decodeProblem(t, w, 400, wh.TypeBodyUnreadable)

	// Exactly at the limit is read and verified (here: no headers, so 400 missing).
	w = f.send(t, nil, []byte(strings.Repeat("x", 10)))
	decodeProblem(t, w, 400, wh.TypeHeaderMissing)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// IDPath replaces the scheme's id header as the dedupe key.
func TestHandlerIDPath(t *testing.T) {
	t.Parallel()
	f := newFixture(t, stdScheme(), wh.Options{IDPath: "data.object.id"})
	if w := f.send(t, signed(t, f.scheme, "msg_1", body, t0), body); w.Code != 202 || !strings.Contains(w.Body.String(), `"pi_1"`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	// Another delivery id, same object id: a duplicate.
	if w := f.send(t, signed(t, f.scheme, "msg_2", body, t0), body); !strings.Contains(w.Body.String(), "duplicate") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

// When marking the event seen fails after the sink accepted it, the sender
// still gets 202 (the event is durable) and OnResult reports the failure.
func TestHandlerDoneFailureAfterAccept(t *testing.T) {
	t.Parallel()
	f := newFixture(t, stdScheme(), wh.Options{})
	f.dedupe.doneErr = errors.New("store timeout")
	w := f.send(t, signed(t, f.scheme, "msg_1", body, t0), body)
	if w.Code != 202 || f.last().Outcome != wh.OutcomeAccepted || f.last().Err == nil {
		t.Fatalf("%d, result %+v", w.Code, f.last())
	}
}

func TestNewHandlerErrors(t *testing.T) {
	t.Parallel()
	s, k := stdScheme(), &sink{}
	for name, fn := range map[string]func() (*wh.Handler, error){
		"nil scheme":    func() (*wh.Handler, error) { return wh.NewHandler(nil, k, wh.Options{}) },
		"nil sink":      func() (*wh.Handler, error) { return wh.NewHandler(s, nil, wh.Options{}) },
		"negative max":  func() (*wh.Handler, error) { return wh.NewHandler(s, k, wh.Options{MaxBodyBytes: -1}) },
		"negative wait": func() (*wh.Handler, error) { return wh.NewHandler(s, k, wh.Options{RetryAfter: -1}) },
		"bad id path":   func() (*wh.Handler, error) { return wh.NewHandler(s, k, wh.Options{IDPath: "data..id"}) },
	} {
		if _, err := fn(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

type problemDoc struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Source string `json:"source"`
}

const problemBase = "https://github.com/leveehq/levee/blob/main/docs/problems.md#"

func decodeProblem(t *testing.T, w *httptest.ResponseRecorder, status int, slug string) problemDoc {
	t.Helper()
	var p problemDoc
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("answer %d %q is not JSON: %v", w.Code, w.Body, err)
	}
	if w.Code != status || p.Status != status || p.Type != problemBase+slug || p.Title == "" || p.Detail == "" ||
		w.Header().Get("Content-Type") != "application/problem+json" || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("answer %d %v %s, want %d %s", w.Code, w.Header(), w.Body, status, slug)
	}
	return p
}

// Over a real connection: a signed event is accepted, a chunked body over
// the limit is 413, and the duplicate is absorbed.
func TestHandlerOverHTTP(t *testing.T) {
	t.Parallel()
	s := must(wh.NewStripe(wh.Config{Secrets: []string{"whsec_live"}}))
	f := newFixture(t, s, wh.Options{MaxBodyBytes: 4096, Now: time.Now})
	srv := httptest.NewServer(f.h)
	defer srv.Close()
	post := func(h http.Header, r io.Reader) *http.Response {
		req, err := http.NewRequest(http.MethodPost, srv.URL+"/webhooks/stripe", r)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp
	}
	h := signed(t, s, "", body, time.Now())
	for i, want := range []int{202, 202} {
		if resp := post(h, bytes.NewReader(body)); resp.StatusCode != want {
			t.Fatalf("delivery %d: %d", i, resp.StatusCode)
		}
	}
	big := bytes.Repeat([]byte("x"), 5000)
	resp := post(signed(t, s, "", big, time.Now()), io.MultiReader(bytes.NewReader(big))) // no Content-Length: chunked
	if resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("chunked oversized body: %d %v", resp.StatusCode, resp.Header)
	}
	if f.sink.count() != 1 {
		t.Fatalf("sink has %d events, want 1", f.sink.count())
	}
}

type panicSink struct{}

func (panicSink) Accept(context.Context, wh.Event) error { panic("sink bug") }

// A panicking sink releases the dedupe claim before the panic goes on.
func TestHandlerSinkPanicReleasesClaim(t *testing.T) {
	t.Parallel()
	d := newDedupe()
	s := stdScheme()
	h := must(wh.NewHandler(s, panicSink{}, wh.Options{Dedupe: d, Now: func() time.Time { return t0 }}))
	r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
	r.Header = signed(t, s, "msg_1", body, t0)
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic was swallowed")
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), r)
	}()
	if d.released != 1 || len(d.inflight) != 0 || len(d.seen) != 0 {
		t.Fatalf("released %d, in flight %d, seen %d", d.released, len(d.inflight), len(d.seen))
	}
}
