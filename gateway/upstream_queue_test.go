package gateway_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
)

// seenReq is one request an upstream received.
type seenReq struct {
	method, path, query, key, ctype, body string
}

// recorder is an upstream that records every request and answers as
// mode says: "ok" 200, "fail" 500, "unavailable" 503, "slowfirst" 200
// after 2.5s to the first request with a given body, at once to the next
// ones.
type recorder struct {
	srv  *httptest.Server
	mode atomic.Value
	mu   sync.Mutex
	reqs []seenReq
}

func newRecorder(t *testing.T, mode string) *recorder {
	t.Helper()
	rc := &recorder{}
	rc.mode.Store(mode)
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		first := true
		for _, old := range rc.reqs {
			first = first && old.body != string(b)
		}
		rc.reqs = append(rc.reqs, seenReq{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Idempotency-Key"), r.Header.Get("Content-Type"), string(b)})
		rc.mu.Unlock()
		switch rc.mode.Load().(string) {
		case "fail":
			w.WriteHeader(http.StatusInternalServerError)
		case "unavailable":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "slowfirst":
			if first {
				time.Sleep(2500 * time.Millisecond)
			}
			fmt.Fprint(w, "late")
		default:
			fmt.Fprint(w, "done")
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *recorder) seen() []seenReq {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]seenReq(nil), rc.reqs...)
}

// queueFallbackConfig is a gateway whose upstream partner (at url, with
// the fields of upstreamExtra, its retry block at least) falls back to the queue "later" targeting it; the
// queue store is its own SQLite file, qdb.
func queueFallbackConfig(t *testing.T, url, upstreamExtra, qdb string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %s}}
queue_store: {type: sqlite, sqlite: {path: %s}}
upstreams:
  - name: partner
    url: %s
    timeout: 5s
    fallback: {queue: later}
%squeues:
  - name: later
    target: partner
    path: /later
    backoff_base: 50ms
    backoff_max: 200ms
    max_attempts: 100
routes:
  - name: api
    match: {path_prefix: /v1}
    upstream: partner
    timeout: 5s
`, testAdminToken, filepath.Join(t.TempDir(), "levee.db"), qdb, url, upstreamExtra)
}

type accepted struct {
	ID     string `json:"id"`
	Queue  string `json:"queue"`
	Status string `json:"status"`
}

// wantQueued checks resp is the queue fallback's 202 and returns the
// message id.
func wantQueued(t *testing.T, what string, resp *http.Response, body string) string {
	t.Helper()
	var a accepted
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get(gateway.QueuedHeader) != "true" {
		t.Fatalf("%s: %d %s=%q %q, want 202 queued", what, resp.StatusCode, gateway.QueuedHeader, resp.Header.Get(gateway.QueuedHeader), body)
	}
	if err := json.Unmarshal([]byte(body), &a); err != nil || a.ID == "" || a.Queue != "later" || a.Status != "queued" {
		t.Fatalf("%s: body %q (%v)", what, body, err)
	}
	if loc := resp.Header.Get("Location"); loc != "/later/"+a.ID {
		t.Fatalf("%s: Location %q, want /later/%s", what, loc, a.ID)
	}
	return a.ID
}

// With the breaker open, a POST (direct path) and a chunked PATCH
// (ReverseProxy path) are answered 202 with a message id; once the
// upstream recovers each is delivered exactly once, with its method,
// path, query, body, Content-Type and Idempotency-Key, and its status
// reads delivered. The 500 that opened the breaker (a GET) passed
// through, and a GET while open is not queued.
//
// The same through an egress route (its prefix stripped: the queued
// message keeps the path the upstream would have got).
func TestUpstreamQueueFallbackBreakerOpen(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"/v1", "/egress/partner/v1"} {
		t.Run(strings.ReplaceAll(prefix, "/", "_"), func(t *testing.T) {
			t.Parallel()
			breakerOpenQueues(t, prefix)
		})
	}
}

func breakerOpenQueues(t *testing.T, prefix string) {
	up := newRecorder(t, "fail")
	g := startGateway(t, queueFallbackConfig(t, up.srv.URL+"/api", "    retry: {max_attempts: 1}\n    breaker: {consecutive_failures: 1, cooldown: 2s}\n",
		filepath.Join(t.TempDir(), "queue.db"))+
		"  - name: egress\n    match: {path_prefix: /egress/partner}\n    upstream: partner\n    egress: true\n    timeout: 5s\n")

	if resp, _ := do(t, "GET", g.base+"/v1/trip", "", false); resp.StatusCode != 500 {
		t.Fatalf("trip: %d, want the upstream's 500", resp.StatusCode)
	}
	up.mode.Store("ok")
	if resp, body := do(t, "GET", g.base+"/v1/read", "", false); resp.StatusCode != 503 || resp.Header.Get(gateway.QueuedHeader) != "" {
		t.Fatalf("GET while open: %d %q, want 503 not queued", resp.StatusCode, body)
	}
	resp, body := do(t, "POST", g.base+prefix+"/charges?x=1", `{"amount":1}`, false, "Idempotency-Key", "k-post", "Content-Type", "application/json")
	idPost := wantQueued(t, "POST", resp, body)
	resp, body = do(t, "PATCH", g.base+prefix+"/charges/ch_2", `{"amount":22}`, true, "Idempotency-Key", "k-patch", "Content-Type", "application/json")
	idPatch := wantQueued(t, "chunked PATCH", resp, body)
	if idPost == idPatch {
		t.Fatalf("one id for two messages: %s", idPost)
	}

	writes := func() []seenReq {
		var out []seenReq
		for _, r := range up.seen() {
			if r.method != "GET" {
				out = append(out, r)
			}
		}
		return out
	}
	waitFor(t, "both queued writes delivered", func() bool { return len(writes()) >= 2 })
	time.Sleep(300 * time.Millisecond) // a second delivery would show up here
	got := map[string]seenReq{}
	for _, r := range writes() {
		if _, dup := got[r.key]; dup {
			t.Fatalf("key %q delivered twice: %+v", r.key, writes())
		}
		got[r.key] = r
	}
	want := map[string]seenReq{
		"k-post":  {"POST", "/api/v1/charges", "x=1", "k-post", "application/json", `{"amount":1}`},
		"k-patch": {"PATCH", "/api/v1/charges/ch_2", "", "k-patch", "application/json", `{"amount":22}`},
	}
	if len(got) != len(want) {
		t.Fatalf("delivered %+v, want %+v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("delivered %+v, want %+v", got[k], w)
		}
	}
	for _, id := range []string{idPost, idPatch} {
		waitFor(t, "status delivered", func() bool {
			_, body := do(t, "GET", g.base+"/later/"+id, "", false)
			var st gateway.MessageStatus
			return json.Unmarshal([]byte(body), &st) == nil && st.Status == "delivered"
		})
	}
	if n := metric(t, g, "levee_resilience_fallbacks_total", "upstream", "partner", "kind", "queue"); n != 2 {
		t.Errorf("levee_resilience_fallbacks_total{kind=queue} = %v, want 2", n)
	}
	if n := metric(t, g, "levee_queue_enqueued_total", "queue", "later", "source", "fallback"); n != 2 {
		t.Errorf("levee_queue_enqueued_total{source=fallback} = %v, want 2", n)
	}
	// Queued while the breaker was open (2s): the first deliveries were
	// refused by it before sending, under the kind the upstream's own
	// metric uses.
	if n := metric(t, g, "levee_queue_deferred_total", "queue", "later", "kind", "circuit_open"); n < 1 {
		t.Errorf("levee_queue_deferred_total{kind=circuit_open} = %v, want at least 1", n)
	}
}

// A POST that timed out after it was sent is not queued without a key
// (the upstream may have done it): the client gets 504; with a key the
// upstream deduplicates (retry.dedupes_keys) it is queued and delivered
// once more, with that key. The keyless one never reaches the upstream
// again.
func TestUpstreamQueueFallbackSentNotQueuedWithoutKey(t *testing.T) {
	t.Parallel()
	up := newRecorder(t, "slowfirst")
	g := startGateway(t, queueFallbackConfig(t, up.srv.URL, "    attempt_timeout: 800ms\n    retry: {max_attempts: 1, dedupes_keys: true}\n",
		filepath.Join(t.TempDir(), "queue.db")))
	resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":1}`, false)
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(gateway.QueuedHeader) != "" {
		t.Fatalf("keyless timed-out POST: %d %q, want 504 not queued", resp.StatusCode, body)
	}
	if typ := problemTypeOf(t, body); typ != "upstream-timeout" {
		t.Fatalf("keyless timed-out POST: problem %q", typ)
	}
	resp, body = do(t, "POST", g.base+"/v1/charges", `{"amount":2}`, false, "Idempotency-Key", "k2")
	wantQueued(t, "keyed timed-out POST", resp, body)
	count := func(b string) (n int, keys []string) {
		for _, r := range up.seen() {
			if r.body == b {
				n++
				keys = append(keys, r.key)
			}
		}
		return n, keys
	}
	waitFor(t, "the keyed POST delivered again", func() bool { n, _ := count(`{"amount":2}`); return n >= 2 })
	time.Sleep(300 * time.Millisecond)
	if n, keys := count(`{"amount":2}`); n != 2 || keys[0] != "k2" || keys[1] != "k2" {
		t.Fatalf("keyed POST seen %d times with keys %q, want twice with k2", n, keys)
	}
	if n, _ := count(`{"amount":1}`); n != 1 {
		t.Fatalf("keyless POST seen %d times, want once (never queued)", n)
	}
}

// A keyless POST the upstream answered 503 reached it: it may have done
// the work before answering, so it is not queued (that would send it
// again) on either client path (a body with a length, a chunked one); the
// client gets the 503. A keyed one, for an upstream that dedupes keys, is
// queued and delivered again with its key.
func TestUpstreamQueueFallbackAnsweredNotQueuedWithoutKey(t *testing.T) {
	t.Parallel()
	up := newRecorder(t, "unavailable")
	g := startGateway(t, queueFallbackConfig(t, up.srv.URL, "    retry: {max_attempts: 1, dedupes_keys: true}\n",
		filepath.Join(t.TempDir(), "queue.db")))
	for _, chunked := range []bool{false, true} {
		b := fmt.Sprintf(`{"amount":1,"chunked":%v}`, chunked)
		resp, body := do(t, "POST", g.base+"/v1/charges", b, chunked)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(gateway.QueuedHeader) != "" {
			t.Fatalf("keyless POST answered 503 (chunked %v): %d %q, want the 503, not queued", chunked, resp.StatusCode, body)
		}
	}
	resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":2}`, false, "Idempotency-Key", "k2")
	wantQueued(t, "keyed POST answered 503", resp, body)
	count := func(b string) int {
		n := 0
		for _, r := range up.seen() {
			if r.body == b {
				n++
			}
		}
		return n
	}
	waitFor(t, "the keyed POST delivered again", func() bool { return count(`{"amount":2}`) >= 2 })
	time.Sleep(300 * time.Millisecond) // a queued keyless one would be delivered by now too
	for _, chunked := range []bool{false, true} {
		if n := count(fmt.Sprintf(`{"amount":1,"chunked":%v}`, chunked)); n != 1 {
			t.Fatalf("keyless POST (chunked %v) seen %d times, want once (never queued)", chunked, n)
		}
	}
}

// A refused connection (nothing sent) queues a keyless POST on both
// paths, never a GET; when the enqueue fails (an insert trigger on the
// queue's table) the client gets the original problem, not a 202.
func TestUpstreamQueueFallbackEnqueueFails(t *testing.T) {
	t.Parallel()
	qdb := filepath.Join(t.TempDir(), "queue.db")
	g := startGateway(t, queueFallbackConfig(t, downURL(t), "    retry: {max_attempts: 1}\n", qdb))
	for _, chunked := range []bool{false, true} {
		resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":3}`, chunked)
		wantQueued(t, fmt.Sprintf("down, chunked=%v", chunked), resp, body)
	}
	if resp, body := do(t, "GET", g.base+"/v1/charges", "", false); resp.StatusCode != 502 || resp.Header.Get(gateway.QueuedHeader) != "" {
		t.Fatalf("GET while down: %d %q, want 502 not queued", resp.StatusCode, body)
	}

	db, err := sql.Open("sqlite", "file:"+qdb+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TRIGGER no_insert BEFORE INSERT ON levee_queue_messages BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
		t.Fatal(err)
	}
	for _, chunked := range []bool{false, true} {
		resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":4}`, chunked)
		if resp.StatusCode != 502 || resp.Header.Get(gateway.QueuedHeader) != "" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
			t.Fatalf("enqueue failing, chunked=%v: %d %s %q, want the original 502 problem", chunked, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if typ := problemTypeOf(t, body); typ != "upstream-unavailable" {
			t.Fatalf("enqueue failing, chunked=%v: problem %q", chunked, typ)
		}
	}
	if n := metric(t, g, "levee_resilience_fallbacks_total", "upstream", "partner", "kind", "queue"); n != 2 {
		t.Errorf("levee_resilience_fallbacks_total{kind=queue} = %v, want 2", n)
	}
}

// fallback.queue naming an unknown queue, or a queue that does not
// deliver to that upstream, is refused with file:line and field.
func TestUpstreamQueueFallbackConfigErrors(t *testing.T) {
	t.Parallel()
	cfg := func(fallback, target string) string {
		q := ""
		if target != "" {
			q = fmt.Sprintf("queues:\n  - name: later\n    target: %s\n", target)
		}
		return fmt.Sprintf(`listen: 127.0.0.1:0
store: {type: memory}
upstreams:
  - name: partner
    url: http://127.0.0.1:1
    fallback: %s
  - name: other
    url: http://127.0.0.1:2
%sroutes:
  - name: api
    match: {path_prefix: /v1}
    upstream: partner
`, fallback, q)
	}
	for _, c := range []struct{ fallback, target, want string }{
		{"{queue: later}", "partner", ""},
		{"{queue: later}", "partner/v1/x", ""},
		{"{queue: later}", "", `x.yaml:6: upstreams[0].fallback.queue: unknown queue "later" (no queues: configured`},
		{"{queue: nosuch}", "partner", `x.yaml:6: upstreams[0].fallback.queue: unknown queue "nosuch" (queues: later)`},
		{"{queue: later}", "other", `x.yaml:6: upstreams[0].fallback.queue: queue "later" delivers to "other", not to upstream "partner"`},
		{"{queue: later}", "http://127.0.0.1:3/x", `x.yaml:6: upstreams[0].fallback.queue: queue "later" delivers to "http://127.0.0.1:3/x", not to upstream "partner"`},
	} {
		_, err := parseString(cfg(c.fallback, c.target))
		if c.want == "" {
			if err != nil {
				t.Errorf("%s / %s: valid config refused: %v", c.fallback, c.target, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s / %s: err = %v, want %q", c.fallback, c.target, err, c.want)
		}
	}
}

// On a route with an idempotency block the 202 is what the key stores:
// the client's retry gets the same message id (Idempotent-Replayed), and
// the write is queued once.
func TestUpstreamQueueFallbackIdempotentRetry(t *testing.T) {
	t.Parallel()
	g := startGateway(t, queueFallbackConfig(t, downURL(t), "    retry: {max_attempts: 1}\n", filepath.Join(t.TempDir(), "queue.db"))+"    idempotency: {}\n")
	resp, body := do(t, "POST", g.base+"/v1/charges", `{"amount":5}`, false, "Idempotency-Key", "same")
	id := wantQueued(t, "first", resp, body)
	resp, body2 := do(t, "POST", g.base+"/v1/charges", `{"amount":5}`, false, "Idempotency-Key", "same")
	if id2 := wantQueued(t, "retry", resp, body2); id2 != id || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: id %s (first %s), Idempotent-Replayed %q", id2, id, resp.Header.Get("Idempotent-Replayed"))
	}
	if n := metric(t, g, "levee_queue_enqueued_total", "queue", "later", "source", "fallback"); n != 1 {
		t.Fatalf("enqueued %v times, want once", n)
	}
}
