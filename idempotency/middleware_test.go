package idempotency_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/memory"
)

type counter struct{ n atomic.Int64 }

func (c *counter) handler(status int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.n.Add(1)
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Location", "/charges/1")
		w.Header().Set("Set-Cookie", "secret=1")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	})
}

func do(h http.Handler, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func problemType(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json (status %d, body %s)", ct, w.Code, w.Body)
	}
	var p struct {
		Type   string `json:"type"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body %q: %v", w.Body, err)
	}
	if p.Status != w.Code {
		t.Fatalf("problem status %d != response status %d", p.Status, w.Code)
	}
	return p.Type[strings.Index(p.Type, "#")+1:]
}

func TestMiddlewareKeyHandling(t *testing.T) {
	t.Parallel()
	var c counter
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	opt := e.Middleware(idempotency.HTTPOptions{})(c.handler(201, `{"ok":true}`))
	req := e.Middleware(idempotency.HTTPOptions{Required: true})(c.handler(201, `{"ok":true}`))

	if w := do(opt, "POST", "/x", `{}`); w.Code != 201 || c.n.Load() != 1 {
		t.Fatalf("optional, no key: %d (calls %d), want pass-through", w.Code, c.n.Load())
	}
	if w := do(opt, "POST", "/x", `{}`); w.Code != 201 || c.n.Load() != 2 || w.Header().Get("Idempotent-Replayed") != "" {
		t.Fatal("optional, no key: second call must run again, nothing stored")
	}
	w := do(req, "POST", "/x", `{}`)
	if w.Code != 400 || problemType(t, w) != "idempotency-key-missing" {
		t.Fatalf("required, no key: %d %s", w.Code, w.Body)
	}
	w = do(opt, "POST", "/x", `{}`, "Idempotency-Key", "a", "Idempotency-Key", "b")
	if w.Code != 400 || problemType(t, w) != "idempotency-key-invalid" || !strings.Contains(w.Body.String(), "2 times") {
		t.Fatalf("key sent twice: %d %s", w.Code, w.Body)
	}
	w = do(opt, "POST", "/x", `{}`, "Idempotency-Key", "has space")
	if w.Code != 400 || problemType(t, w) != "idempotency-key-invalid" {
		t.Fatalf("malformed key: %d %s", w.Code, w.Body)
	}
	w = do(opt, "POST", "/x", `{}`, "Idempotency-Key", strings.Repeat("k", 256))
	if w.Code != 400 || !strings.Contains(w.Body.String(), "256 characters") {
		t.Fatalf("long key: %d %s", w.Code, w.Body)
	}
	// Quoted and bare forms are the same key.
	before := c.n.Load()
	do(opt, "POST", "/x", `{}`, "Idempotency-Key", `"k1"`)
	w = do(opt, "POST", "/x", `{}`, "Idempotency-Key", `k1`)
	if w.Header().Get("Idempotent-Replayed") != "true" || c.n.Load() != before+1 {
		t.Fatalf(`"k1" and k1 are different keys: replayed=%q`, w.Header().Get("Idempotent-Replayed"))
	}
	// GET is never stored, even with a key.
	before = c.n.Load()
	do(req, "GET", "/x", "", "Idempotency-Key", "g")
	do(req, "GET", "/x", "", "Idempotency-Key", "g")
	if c.n.Load() != before+2 {
		t.Fatal("GET with a key was deduplicated")
	}
	// PUT is not covered by default.
	before = c.n.Load()
	do(req, "PUT", "/x", "{}")
	if c.n.Load() != before+1 {
		t.Fatal("PUT without a key was refused under Required")
	}
}

func TestMiddlewareReplayIsByteIdentical(t *testing.T) {
	t.Parallel()
	var c counter
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{})(c.handler(201, "{\"id\":1}\n\x00binary"))
	first := do(h, "POST", "/x", `{"a":1,"b":2}`, "Idempotency-Key", "k", "Content-Type", "application/json", "X-Request-Id", "1")
	second := do(h, "POST", "/x", `{"b":2, "a":1}`, "Idempotency-Key", "k", "Content-Type", "application/json", "X-Request-Id", "2")
	if c.n.Load() != 1 {
		t.Fatalf("executed %d times", c.n.Load())
	}
	if second.Code != 201 || second.Body.String() != first.Body.String() || second.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay = %d %q, want 201 %q with Idempotent-Replayed", second.Code, second.Body, first.Body)
	}
	if first.Header().Get("Idempotent-Replayed") != "" {
		t.Fatal("the first response is marked replayed")
	}
	if second.Header().Get("Location") != "/charges/1" || second.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("allow-listed headers missing from replay: %v", second.Header())
	}
	if second.Header().Get("Set-Cookie") != "" {
		t.Fatal("Set-Cookie (not allow-listed) was replayed")
	}
	// A different query is a different request.
	w := do(h, "POST", "/x?y=1", `{"a":1,"b":2}`, "Idempotency-Key", "k", "Content-Type", "application/json")
	if w.Code != 422 || problemType(t, w) != "idempotency-key-mismatch" {
		t.Fatalf("different query, same key: %d, want 422", w.Code)
	}
}

func TestMiddlewareFingerprintHeaders(t *testing.T) {
	t.Parallel()
	var c counter
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{FingerprintHeaders: []string{"X-Account"}})(c.handler(200, "ok"))
	do(h, "POST", "/x", "body", "Idempotency-Key", "k", "X-Account", "1")
	if w := do(h, "POST", "/x", "body", "Idempotency-Key", "k", "X-Account", "2"); w.Code != 422 {
		t.Fatalf("fingerprinted header changed: %d, want 422", w.Code)
	}
}

func TestMiddlewareBodyLimits(t *testing.T) {
	t.Parallel()
	var c counter
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{MaxRequestBody: 10})(c.handler(200, "ok"))
	w := do(h, "POST", "/x", strings.Repeat("x", 11), "Idempotency-Key", "k")
	if w.Code != 413 || problemType(t, w) != "request-body-too-large" || c.n.Load() != 0 {
		t.Fatalf("oversized body: %d, calls %d", w.Code, c.n.Load())
	}
	// Unknown length (chunked) is bounded too.
	req := httptest.NewRequest("POST", "/x", io.MultiReader(strings.NewReader(strings.Repeat("y", 11))))
	req.ContentLength = -1
	req.Header.Set("Idempotency-Key", "k2")
	rw := httptest.NewRecorder()
	h.ServeHTTP(rw, req)
	if rw.Code != 413 {
		t.Fatalf("oversized chunked body: %d", rw.Code)
	}
	// The handler sees the whole body that was buffered.
	var got string
	echo := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = string(b)
	}))
	do(echo, "POST", "/x", "hello body", "Idempotency-Key", "k3")
	if got != "hello body" {
		t.Fatalf("handler read %q", got)
	}
}

func TestMiddlewareOversizedResponseNeverReexecutes(t *testing.T) {
	t.Parallel()
	var c counter
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	big := strings.Repeat("z", 100)
	h := e.Middleware(idempotency.HTTPOptions{MaxStoredBody: 10})(c.handler(201, big))
	first := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if first.Code != 201 || first.Body.String() != big {
		t.Fatalf("first response = %d %d bytes, want the full 201", first.Code, first.Body.Len())
	}
	second := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if c.n.Load() != 1 {
		t.Fatalf("executed %d times, want once", c.n.Load())
	}
	if second.Code != 409 || problemType(t, second) != "idempotency-response-not-stored" || !strings.Contains(second.Body.String(), `"original_status":201`) {
		t.Fatalf("replay of an oversized response = %d %s", second.Code, second.Body)
	}
}

// failingStore fails every operation, like an unreachable backend.
type failingStore struct{}

var errDown = errors.New("connection refused")

func (failingStore) Claim(context.Context, idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errDown
}
func (failingStore) Renew(context.Context, string, uint64, time.Time, time.Time, time.Time) error {
	return errDown
}
func (failingStore) Complete(context.Context, string, uint64, idempotency.Response, time.Time, time.Time) error {
	return errDown
}
func (failingStore) Release(context.Context, string, uint64) error { return errDown }
func (failingStore) MarkUnknown(context.Context, string, uint64, time.Time, time.Time) error {
	return errDown
}
func (failingStore) Lookup(context.Context, string, time.Time) (*idempotency.Record, error) {
	return nil, errDown
}
func (failingStore) Features() idempotency.Features { return idempotency.Features{List: true} }
func (failingStore) List(context.Context, idempotency.ListRequest) ([]idempotency.Record, error) {
	return nil, errDown
}

func TestMiddlewareStoreDown(t *testing.T) {
	t.Parallel()
	var c counter
	var outcomes []idempotency.Outcome
	closed := idempotency.New(failingStore{}, idempotency.Options{OnEvent: func(_ context.Context, ev idempotency.Event) {
		outcomes = append(outcomes, ev.Outcome)
	}})
	w := do(closed.Middleware(idempotency.HTTPOptions{})(c.handler(201, "ok")), "POST", "/x", "{}", "Idempotency-Key", "k")
	if w.Code != 503 || w.Header().Get("Retry-After") != "1" || problemType(t, w) != "idempotency-store-unavailable" || c.n.Load() != 0 {
		t.Fatalf("fail closed: %d Retry-After=%q calls=%d", w.Code, w.Header().Get("Retry-After"), c.n.Load())
	}
	if len(outcomes) != 1 || outcomes[0] != idempotency.OutcomeStoreError {
		t.Fatalf("outcomes = %v, want [store_error]", outcomes)
	}
	open := idempotency.New(failingStore{}, idempotency.Options{FailOpen: true})
	w = do(open.Middleware(idempotency.HTTPOptions{})(c.handler(201, "ok")), "POST", "/x", "{}", "Idempotency-Key", "k")
	if w.Code != 201 || c.n.Load() != 1 {
		t.Fatalf("fail open: %d calls=%d, want the handler to run", w.Code, c.n.Load())
	}
}

func TestDo(t *testing.T) {
	t.Parallel()
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	ctx := context.Background()
	fp := idempotency.FingerprintOf([]byte(`{"order":42}`))
	var runs int
	fn := func(context.Context) ([]byte, error) { runs++; return []byte(fmt.Sprint("result-", runs)), nil }
	r1, err := e.Do(ctx, "order-42", fp, fn)
	if err != nil || r1.Replayed || string(r1.Value) != "result-1" {
		t.Fatalf("first Do = %+v, %v", r1, err)
	}
	r2, err := e.Do(ctx, "order-42", fp, fn)
	if err != nil || !r2.Replayed || string(r2.Value) != "result-1" || runs != 1 {
		t.Fatalf("second Do = %+v, %v (runs %d)", r2, err, runs)
	}
	if _, err := e.Do(ctx, "order-42", idempotency.FingerprintOf([]byte(`{"order":43}`)), fn); !errors.Is(err, idempotency.ErrMismatch) || runs != 1 {
		t.Fatalf("mismatched Do = %v, want ErrMismatch", err)
	}
	// An error releases the key: the next call runs again.
	boom := errors.New("boom")
	if _, err := e.Do(ctx, "order-43", fp, func(context.Context) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("failing Do = %v", err)
	}
	if r, err := e.Do(ctx, "order-43", fp, fn); err != nil || r.Replayed {
		t.Fatalf("Do after a failure = %+v, %v, want a fresh run", r, err)
	}
	// A panic releases too, and is re-raised.
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		_, _ = e.Do(ctx, "order-44", fp, func(context.Context) ([]byte, error) { panic("x") })
	}()
	if r, err := e.Do(ctx, "order-44", fp, fn); err != nil || r.Replayed {
		t.Fatalf("Do after a panic = %+v, %v", r, err)
	}
	// Store down: fail closed by default, fn does not run.
	before := runs
	if _, err := idempotency.New(failingStore{}, idempotency.Options{}).Do(ctx, "k", fp, fn); !errors.Is(err, idempotency.ErrStoreUnavailable) || !errors.Is(err, errDown) || runs != before {
		t.Fatalf("Do on a down store = %v", err)
	}
}

func TestDoInFlight(t *testing.T) {
	t.Parallel()
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{RetryAfter: 3 * time.Second})
	ctx := context.Background()
	fp := idempotency.FingerprintOf(nil)
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := e.Do(ctx, "k", fp, func(context.Context) ([]byte, error) { close(entered); <-release; return nil, nil })
		done <- err
	}()
	<-entered
	_, err := e.Do(ctx, "k", fp, func(context.Context) ([]byte, error) { t.Error("ran twice"); return nil, nil })
	var ife *idempotency.InFlightError
	if !errors.As(err, &ife) || ife.RetryAfter != 3*time.Second || !errors.Is(err, idempotency.ErrInFlight) {
		t.Fatalf("concurrent Do = %v, want *InFlightError with RetryAfter 3s", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestMemoryStoreCapacity(t *testing.T) {
	t.Parallel()
	s := memory.New(memory.Options{MaxEntries: 64}) // one per shard
	e := idempotency.New(s, idempotency.Options{Retention: time.Minute})
	ctx := context.Background()
	fn := func(context.Context) ([]byte, error) { return nil, nil }
	var capErr error
	for i := 0; i < 1000 && capErr == nil; i++ {
		_, capErr = e.Do(ctx, fmt.Sprint("k", i), idempotency.Fingerprint{}, fn)
	}
	if !errors.Is(capErr, idempotency.ErrCapacity) || !errors.Is(capErr, idempotency.ErrStoreUnavailable) {
		t.Fatalf("filling a 64-entry store: %v, want ErrCapacity", capErr)
	}
	if s.Len() > 64 {
		t.Fatalf("store holds %d entries, cap 64", s.Len())
	}
	// Expired records are reclaimed to make room.
	if n := s.Sweep(time.Now().Add(2 * time.Minute)); n == 0 || s.Len() != 0 {
		t.Fatalf("Sweep removed %d, %d left", n, s.Len())
	}
}

// A client that hangs up mid-request does not cancel the handler: the work
// finishes and is recorded, and the retry gets the replay.
func TestMiddlewareClientDisconnectStillRecords(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	ctx, hangUp := context.WithCancel(context.Background())
	h := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		hangUp() // the client goes away while the charge runs
		if err := r.Context().Err(); err != nil {
			t.Errorf("the handler's context was canceled by the client: %v", err)
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"charged":true}`)
	}))
	req := httptest.NewRequest("POST", "/x", strings.NewReader("{}")).WithContext(ctx)
	req.Header.Set("Idempotency-Key", "k")
	h.ServeHTTP(httptest.NewRecorder(), req)
	w := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if w.Code != 201 || w.Body.String() != `{"charged":true}` || w.Header().Get("Idempotent-Replayed") != "true" || runs.Load() != 1 {
		t.Fatalf("retry after a disconnect: %d %q replayed=%q runs=%d", w.Code, w.Body, w.Header().Get("Idempotent-Replayed"), runs.Load())
	}
}

// A handler that produced a status and then aborted (a proxied upstream
// answered 201, then the body copy failed) took effect: the retry learns
// it ran instead of running it again.
func TestMiddlewareAbortAfterStatusIsRecorded(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{MaxStoredBody: 4})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "a large body that streams") // over MaxStoredBody: streaming
		panic(http.ErrAbortHandler)
	}))
	func() {
		defer func() { recover() }()
		do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	}()
	w := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if runs.Load() != 1 || w.Code != 409 || problemType(t, w) != "idempotency-response-not-stored" {
		t.Fatalf("retry after an aborted 201: %d %s runs=%d", w.Code, w.Body, runs.Load())
	}
}

// A handler that calls runtime.Goexit (t.FailNow in a handler, say) must
// not leave the key claimed until the lease ends.
func TestMiddlewareGoexitReleases(t *testing.T) {
	t.Parallel()
	var runs atomic.Int64
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			runtime.Goexit()
		}
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	}()
	<-done
	if w := do(h, "POST", "/x", "{}", "Idempotency-Key", "k"); w.Code != 201 || runs.Load() != 2 {
		t.Fatalf("retry after Goexit: %d runs=%d, want a fresh 201", w.Code, runs.Load())
	}
}

// lookupFails answers claims but fails every lookup.
type lookupFails struct{ idempotency.Store }

func (lookupFails) Lookup(context.Context, string, time.Time) (*idempotency.Record, error) {
	return nil, errDown
}

// FailOpen applies to a failed claim only: a failed poll while waiting for
// an in-flight duplicate must not run the duplicate.
func TestFailOpenNeverRunsAnInFlightDuplicate(t *testing.T) {
	t.Parallel()
	e := idempotency.New(lookupFails{memory.New(memory.Options{})}, idempotency.Options{
		FailOpen: true, InFlightWait: time.Second, PollInterval: time.Millisecond})
	var runs atomic.Int64
	entered, release := make(chan struct{}), make(chan struct{})
	h := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			close(entered)
			<-release
		}
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan struct{})
	go func() { defer close(done); do(h, "POST", "/x", "{}", "Idempotency-Key", "k") }()
	<-entered
	w := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	close(release)
	<-done
	if w.Code != 409 || runs.Load() != 1 {
		t.Fatalf("duplicate while the store's lookups fail: %d runs=%d, want 409 and one run", w.Code, runs.Load())
	}
}

// A caller that gave up is not a store failure: no store_error outcome, and
// FailOpen does not run the function.
func TestCanceledCallerIsNotAStoreFailure(t *testing.T) {
	t.Parallel()
	var outcomes []idempotency.Outcome
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{FailOpen: true,
		OnEvent: func(_ context.Context, ev idempotency.Event) { outcomes = append(outcomes, ev.Outcome) }})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	_, err := e.Do(ctx, "k", idempotency.Fingerprint{}, func(context.Context) ([]byte, error) { ran = true; return nil, nil })
	if !errors.Is(err, context.Canceled) || errors.Is(err, idempotency.ErrStoreUnavailable) || ran {
		t.Fatalf("Do with a canceled context: err=%v ran=%v", err, ran)
	}
	if len(outcomes) == 1 && outcomes[0] == idempotency.OutcomeStoreError {
		t.Fatal("a canceled caller was counted as a store error")
	}
}

// An outer body limit smaller than MaxRequestBody still answers 413.
func TestOuterBodyLimitIs413(t *testing.T) {
	t.Parallel()
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	inner := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 10)
		inner.ServeHTTP(w, r)
	})
	req := httptest.NewRequest("POST", "/x", io.MultiReader(strings.NewReader(strings.Repeat("x", 100))))
	req.ContentLength = -1
	req.Header.Set("Idempotency-Key", "k")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != 413 {
		t.Fatalf("chunked body over an outer limit: %d %s", w.Code, w.Body)
	}
}

// DESIGN.md: keys are scoped by route (two scopes never share a key); the
// fingerprint covers method and path (same key and body elsewhere: 422);
// GET/HEAD/OPTIONS are never stored even when listed in Methods.
func TestMiddlewareScopeMethodAndSafeMethods(t *testing.T) {
	t.Parallel()
	eng := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	var c counter
	charges := eng.Middleware(idempotency.HTTPOptions{Scope: "charges", Methods: []string{"GET", "POST", "PATCH"}})(c.handler(201, `{"ok":true}`))
	refunds := eng.Middleware(idempotency.HTTPOptions{Scope: "refunds"})(c.handler(201, `{"ok":true}`))
	key := []string{"Idempotency-Key", "k-1", "Content-Type", "application/json"}

	do(charges, "POST", "/charges", `{"a":1}`, key...)
	do(refunds, "POST", "/charges", `{"a":1}`, key...)
	if n := c.n.Load(); n != 2 {
		t.Fatalf("the same key under two scopes ran %d times, want 2 (scopes never share keys)", n)
	}
	for _, tc := range []struct{ method, target string }{{"PATCH", "/charges"}, {"POST", "/charges/other"}} {
		if w := do(charges, tc.method, tc.target, `{"a":1}`, key...); w.Code != 422 {
			t.Fatalf("same key and body, %s %s: %d, want 422 (method and path are fingerprinted)", tc.method, tc.target, w.Code)
		}
	}
	for range 2 {
		if w := do(charges, "GET", "/charges", "", "Idempotency-Key", "k-get"); w.Header().Get("Idempotent-Replayed") != "" {
			t.Fatal("a GET was replayed")
		}
	}
	if n := c.n.Load(); n != 4 {
		t.Fatalf("handler ran %d times, want 4: two GETs with one key both run (never stored)", n)
	}
}

func TestReportUnknownOutcomeNeedsAClaim(t *testing.T) {
	t.Parallel()
	if idempotency.ReportUnknownOutcome(context.Background(), errors.New("x")) {
		t.Fatal("ReportUnknownOutcome outside any middleware = true")
	}
	var got []bool
	report := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, idempotency.ReportUnknownOutcome(r.Context(), nil))
		w.WriteHeader(http.StatusGatewayTimeout)
	})
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{})(report)
	do(h, "POST", "/x", "{}")                      // no key: passes through
	do(h, "GET", "/x", "", "Idempotency-Key", "k") // not covered
	open := idempotency.New(failingStore{}, idempotency.Options{FailOpen: true})
	do(open.Middleware(idempotency.HTTPOptions{})(report), "POST", "/x", "{}", "Idempotency-Key", "k") // unprotected
	if len(got) != 3 || got[0] || got[1] || got[2] {
		t.Fatalf("reports without a claim = %v, want three false", got)
	}
}

// A proxy that reports the outcome unknown and then aborts (a response cut
// after its head) holds the key: the recorded status does not turn it into
// a stored response, and the retry never reaches the handler.
func TestReportUnknownOutcomeThenAbortHolds(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	var outcomes []idempotency.Outcome
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{OnEvent: func(_ context.Context, ev idempotency.Event) {
		outcomes = append(outcomes, ev.Outcome)
	}})
	h := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusCreated)
		if !idempotency.ReportUnknownOutcome(r.Context(), errors.New("response body cut")) {
			t.Error("report refused")
		}
		panic(http.ErrAbortHandler)
	}))
	func() {
		defer func() { _ = recover() }()
		do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	}()
	w := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if w.Code != http.StatusConflict || problemType(t, w) != "idempotency-outcome-unknown" || calls.Load() != 1 {
		t.Fatalf("retry = %d %s (calls %d), want 409 idempotency-outcome-unknown", w.Code, w.Body, calls.Load())
	}
	if len(outcomes) != 2 || outcomes[0] != idempotency.OutcomeUnknown || outcomes[1] != idempotency.OutcomeHeld {
		t.Fatalf("outcomes = %v, want [unknown held]", outcomes)
	}
}

// A report made after the handler returned (a goroutine it left behind)
// is refused and changes nothing: the response was already settled.
func TestReportUnknownOutcomeAfterReturnIsRefused(t *testing.T) {
	t.Parallel()
	late := make(chan context.Context, 1)
	var c counter
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{})
	h := e.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		late <- r.Context()
		c.handler(201, "ok").ServeHTTP(w, r)
	}))
	do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if idempotency.ReportUnknownOutcome(<-late, errors.New("too late")) {
		t.Fatal("a report after the handler returned was accepted")
	}
	w := do(h, "POST", "/x", "{}", "Idempotency-Key", "k")
	if w.Code != 201 || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry = %d, want the stored 201 replayed", w.Code)
	}
}

func TestOperatorCallsOnADownStore(t *testing.T) {
	t.Parallel()
	e := idempotency.New(failingStore{}, idempotency.Options{})
	ctx := context.Background()
	var se *idempotency.StoreError
	if _, err := e.Inspect(ctx, "k"); !errors.As(err, &se) || se.Op != "lookup" || !errors.Is(err, errDown) {
		t.Fatalf("Inspect = %v, want a *StoreError for lookup", err)
	}
	if err := e.Resolve(ctx, "k", idempotency.Resolution{}); !errors.As(err, &se) || !errors.Is(err, idempotency.ErrStoreUnavailable) {
		t.Fatalf("Resolve = %v, want a *StoreError", err)
	}
	if _, err := e.List(ctx, idempotency.StateUnknown, "", 0); !errors.As(err, &se) || se.Op != "list" {
		t.Fatalf("List = %v, want a *StoreError for list", err)
	}
}

func TestStateStrings(t *testing.T) {
	t.Parallel()
	for _, s := range []idempotency.State{idempotency.StateInProgress, idempotency.StateCompleted, idempotency.StateUnknown} {
		got, err := idempotency.ParseState(s.String())
		if err != nil || got != s {
			t.Fatalf("ParseState(%q) = %v, %v", s.String(), got, err)
		}
	}
	if _, err := idempotency.ParseState("done"); !errors.Is(err, idempotency.ErrInvalidState) {
		t.Fatalf("ParseState(done) = %v, want ErrInvalidState", err)
	}
	if got := idempotency.State(9).String(); got != "State(9)" {
		t.Fatalf("State(9).String() = %q", got)
	}
}

func FuzzParseState(f *testing.F) {
	for _, s := range []string{"in_progress", "completed", "unknown", "", "Unknown", "State(3)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := idempotency.ParseState(s)
		if err != nil {
			if !errors.Is(err, idempotency.ErrInvalidState) {
				t.Fatalf("ParseState(%q) error %v does not wrap ErrInvalidState", s, err)
			}
			return
		}
		if st.String() != s {
			t.Fatalf("ParseState(%q) = %v, whose String is %q", s, st, st.String())
		}
	})
}

// TestRenewalFiringAtOnce: a renewal timer that fires before Begin has
// stored it in the lease (a tiny RenewEvery, or a descheduled goroutine)
// must find it there, not a nil timer (it used to panic, or race).
func TestRenewalFiringAtOnce(t *testing.T) {
	t.Parallel()
	e := idempotency.New(memory.New(memory.Options{}), idempotency.Options{RenewEvery: time.Nanosecond})
	ctx := context.Background()
	for i := range 300 {
		lease, _, err := e.Begin(ctx, fmt.Sprint("k", i), idempotency.Fingerprint{})
		if err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
		if err := lease.Complete(ctx, idempotency.Response{Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
}
