package lambda_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
	"github.com/leveehq/levee/ratelimit"
)

// httpEvents are aws-lambda-go's HTTP-shaped test events, one per kind.
var httpEvents = []struct {
	file string
	kind lambda.EventKind
}{
	{"apigw-request.json", lambda.EventAPIGatewayV1},
	{"apigw-v2-request-no-authorizer.json", lambda.EventAPIGatewayV2},
	{"lambda-urls-request.json", lambda.EventAPIGatewayV2},
	{"alb-lambda-target-request-headers-only.json", lambda.EventALB},
	{"alb-lambda-target-request-multivalue-headers.json", lambda.EventALB},
}

// asPOST turns a test event into a POST carrying body and the given
// headers (lower-case names, as the services send them).
func asPOST(t testing.TB, ev []byte, body string, headers map[string]string) []byte {
	return editJSON(t, ev, func(m map[string]any) {
		m["body"] = body
		m["isBase64Encoded"] = false
		if m["version"] == "2.0" {
			m["requestContext"].(map[string]any)["http"].(map[string]any)["method"] = "POST"
		} else {
			m["httpMethod"] = "POST"
		}
		if h, ok := m["headers"].(map[string]any); ok {
			for k, v := range headers {
				h[k] = v
			}
		}
		if h, ok := m["multiValueHeaders"].(map[string]any); ok {
			for k, v := range headers {
				h[k] = []any{v}
			}
		}
	})
}

// httpResponse is the part of the three response events the tests read.
type httpResponse struct {
	StatusCode        int                 `json:"statusCode"`
	StatusDescription string              `json:"statusDescription"`
	Headers           map[string]string   `json:"headers"`
	MultiValueHeaders map[string][]string `json:"multiValueHeaders"`
	Body              string              `json:"body"`
}

func (r httpResponse) header(name string) string {
	for k, v := range r.Headers {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	for k, v := range r.MultiValueHeaders {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func invokeHTTP(t testing.TB, ctx context.Context, h *lambda.HTTPHandler, ev []byte) httpResponse {
	t.Helper()
	out, err := h.Invoke(ctx, ev)
	if err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	var r httpResponse
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("response %s: %v", out, err)
	}
	return r
}

// charge is a payment handler that counts its executions.
func charge(n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		id := n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"charge":"ch_%d","request":%q}`, id, b)
	})
}

// TestHTTPEventsDuplicatesExecuteOnce runs each kind of HTTP-shaped event
// through the gateway's middleware: the duplicate is replayed byte for
// byte with Idempotent-Replayed, a reused key with another body is 422,
// and the handler ran once.
func TestHTTPEventsDuplicatesExecuteOnce(t *testing.T) {
	stores(t, func(t *testing.T, s idempotency.Store, calls *atomic.Int64) {
		for _, tc := range httpEvents {
			t.Run(tc.file, func(t *testing.T) {
				var n atomic.Int64
				h, err := lambda.NewHTTPHandler(charge(&n), lambda.HTTPOptions{Config: lambda.Config{Store: s}})
				if err != nil {
					t.Fatal(err)
				}
				raw := eventFile(t, tc.file)
				key := map[string]string{"idempotency-key": "pay-" + tc.file, "content-type": "application/json"}
				ev := asPOST(t, raw, `{"amount": 100, "currency": "eur"}`, key)
				if kind, err := lambda.DetectHTTPEvent(ev); err != nil || kind != tc.kind {
					t.Fatalf("DetectHTTPEvent = %v, %v; want %v", kind, err, tc.kind)
				}

				calls.Store(0)
				first := invokeHTTP(t, invocationCtx(t, time.Minute), h, ev)
				if first.StatusCode != http.StatusCreated || first.header("Idempotent-Replayed") != "" {
					t.Fatalf("first: %d replayed=%q %s", first.StatusCode, first.header("Idempotent-Replayed"), first.Body)
				}
				if got := calls.Load(); got != 2 {
					t.Errorf("a new request cost %d store round trips, want 2", got)
				}
				calls.Store(0)
				// Same request, key order and whitespace changed: the same fingerprint.
				dup := asPOST(t, raw, `{"currency":"eur","amount":100}`, key)
				second := invokeHTTP(t, invocationCtx(t, time.Minute), h, dup)
				if got, want := calls.Load(), replayRoundTrips(t); got != want {
					t.Errorf("a replay cost %d store round trips, want %d", got, want)
				}
				if second.StatusCode != http.StatusCreated || second.Body != first.Body || second.header("Idempotent-Replayed") != "true" {
					t.Fatalf("replay: %d %q replayed=%q; want 201 %q true", second.StatusCode, second.Body, second.header("Idempotent-Replayed"), first.Body)
				}
				other := invokeHTTP(t, invocationCtx(t, time.Minute), h, asPOST(t, raw, `{"amount": 999}`, key))
				if other.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(other.Body, "idempotency-key-mismatch") {
					t.Fatalf("reused key, other body: %d %s; want 422 idempotency-key-mismatch", other.StatusCode, other.Body)
				}
				if ct := other.header("Content-Type"); ct != "application/problem+json" {
					t.Errorf("422 Content-Type %q", ct)
				}
				if got := n.Load(); got != 1 {
					t.Fatalf("the handler ran %d times, want 1", got)
				}
				if tc.kind == lambda.EventALB && !strings.HasPrefix(first.StatusDescription, "201 ") {
					t.Errorf("ALB statusDescription %q", first.StatusDescription)
				}
				multi := strings.Contains(tc.file, "multivalue")
				if tc.kind == lambda.EventALB && multi != (len(first.MultiValueHeaders) > 0) {
					t.Errorf("ALB response headers: multiValueHeaders %v, headers %v; the request used multi-value headers: %v", first.MultiValueHeaders, first.Headers, multi)
				}
			})
		}
	})
}

// TestHTTPMissingKeyRequired checks that HTTPOptions pass straight to the
// middleware: a required key is 400 problem+json, no execution.
func TestHTTPMissingKeyRequired(t *testing.T) {
	var n atomic.Int64
	h, _ := lambda.NewHTTPHandler(charge(&n), lambda.HTTPOptions{
		Config: lambda.Config{Store: countingStore{Store: newMemory(), n: new(atomic.Int64)}},
		HTTP:   idempotency.HTTPOptions{Required: true},
	})
	r := invokeHTTP(t, invocationCtx(t, time.Minute), h, asPOST(t, eventFile(t, "apigw-v2-request-no-authorizer.json"), `{}`, nil))
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(r.Body, "idempotency-key-missing") || n.Load() != 0 {
		t.Fatalf("%d %s (ran %d)", r.StatusCode, r.Body, n.Load())
	}
}

// TestHTTPTimeoutHoldsKey: a handler still charging at the invocation's
// margin is given up on; the invocation answers 504, and its retry is
// answered 409 idempotency-outcome-unknown without running again.
func TestHTTPTimeoutHoldsKey(t *testing.T) {
	stores(t, func(t *testing.T, s idempotency.Store, _ *atomic.Int64) {
		var n atomic.Int64
		stuck := make(chan struct{})
		t.Cleanup(func() { close(stuck) })
		slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			select { // the charge never answers before the deadline
			case <-stuck:
			case <-time.After(time.Minute):
			}
			w.WriteHeader(http.StatusCreated)
		})
		h, _ := lambda.NewHTTPHandler(slow, lambda.HTTPOptions{Config: lambda.Config{Store: s, DeadlineMargin: 100 * time.Millisecond}})
		ev := asPOST(t, eventFile(t, "apigw-request.json"), `{"amount":1}`, map[string]string{"idempotency-key": "k-timeout"})

		first := invokeHTTP(t, invocationCtx(t, 300*time.Millisecond), h, ev)
		if first.StatusCode != http.StatusGatewayTimeout || !strings.Contains(first.Body, "upstream-timeout") {
			t.Fatalf("first: %d %s; want 504 upstream-timeout", first.StatusCode, first.Body)
		}
		retry := invokeHTTP(t, invocationCtx(t, time.Minute), h, ev)
		if retry.StatusCode != http.StatusConflict || !strings.Contains(retry.Body, "idempotency-outcome-unknown") {
			t.Fatalf("retry: %d %s; want 409 idempotency-outcome-unknown", retry.StatusCode, retry.Body)
		}
		if got := n.Load(); got != 1 {
			t.Fatalf("the handler ran %d times, want 1", got)
		}
		key, _ := idempotency.KeyFor("", "", "k-timeout")
		rec, err := idempotency.New(s, idempotency.Options{}).Inspect(context.Background(), key)
		if err != nil || rec.State != idempotency.StateUnknown {
			t.Fatalf("record: %+v, %v; want state unknown", rec, err)
		}
	})
}

// TestHTTPLeaseEndsAtDeadline: the claim of an invocation whose process
// died (no margin rule here) lapses at its deadline, not after
// Options.Lease.
func TestHTTPLeaseEndsAtDeadline(t *testing.T) {
	s := newMemory()
	var leaseUntil time.Time
	inspect := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, _ := idempotency.KeyFor("", "", "k-lease")
		rec, err := idempotency.New(s, idempotency.Options{}).Inspect(r.Context(), key)
		if err != nil {
			t.Error(err)
			return
		}
		leaseUntil = rec.LeaseUntil
		w.WriteHeader(http.StatusOK)
	})
	h, _ := lambda.NewHTTPHandler(inspect, lambda.HTTPOptions{Config: lambda.Config{Store: s,
		Options: idempotency.Options{Lease: time.Hour}, DeadlineMargin: -1}})
	ctx := invocationCtx(t, 10*time.Second)
	deadline, _ := ctx.Deadline()
	invokeHTTP(t, ctx, h, asPOST(t, eventFile(t, "apigw-request.json"), `{}`, map[string]string{"idempotency-key": "k-lease"}))
	if leaseUntil.After(deadline.Add(10*time.Millisecond)) || leaseUntil.Before(deadline.Add(-time.Second)) {
		t.Fatalf("the claim's lease ends at %v; the invocation's deadline is %v", leaseUntil, deadline)
	}
}

// TestHTTPRateLimitMiddleware: ratelimit.Middleware runs in front of the
// idempotency layer: the denied request is 429 and claims no key.
func TestHTTPRateLimitMiddleware(t *testing.T) {
	p, _ := ratelimit.ParsePolicy("1/minute")
	p.Name = "per-key"
	rl, err := ratelimit.Middleware(ratelimit.Options{Rules: []ratelimit.Rule{{Policy: p, Key: ratelimit.Header("X-Api-Key")}}})
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var calls atomic.Int64
	h, _ := lambda.NewHTTPHandler(charge(&n), lambda.HTTPOptions{
		Config:     lambda.Config{Store: countingStore{Store: newMemory(), n: &calls}},
		Middleware: []func(http.Handler) http.Handler{rl},
	})
	raw := eventFile(t, "apigw-v2-request-no-authorizer.json")
	a := invokeHTTP(t, invocationCtx(t, time.Minute), h, asPOST(t, raw, `{}`, map[string]string{"x-api-key": "k", "idempotency-key": "a"}))
	calls.Store(0)
	b := invokeHTTP(t, invocationCtx(t, time.Minute), h, asPOST(t, raw, `{}`, map[string]string{"x-api-key": "k", "idempotency-key": "b"}))
	if a.StatusCode != http.StatusCreated || b.StatusCode != http.StatusTooManyRequests || b.header("Retry-After") == "" || !strings.Contains(b.Body, "rate-limited") {
		t.Fatalf("first %d, second %d %q %s; want 201 then 429 with Retry-After", a.StatusCode, b.StatusCode, b.header("Retry-After"), b.Body)
	}
	if a.header("RateLimit-Policy") == "" {
		t.Errorf("no RateLimit-Policy on the admitted response")
	}
	if calls.Load() != 0 || n.Load() != 1 {
		t.Fatalf("the denied request made %d store calls and the handler ran %d times", calls.Load(), n.Load())
	}
}

func TestInvokeRejectsOtherEvents(t *testing.T) {
	h, _ := lambda.NewHTTPHandler(http.NotFoundHandler(), lambda.HTTPOptions{})
	for _, f := range []string{"sqs-event.json", "kinesis-event.json"} {
		if _, err := h.Invoke(context.Background(), eventFile(t, f)); !errors.Is(err, lambda.ErrEvent) {
			t.Errorf("%s: %v; want ErrEvent", f, err)
		}
	}
	if _, err := h.Invoke(context.Background(), []byte(`{`)); !errors.Is(err, lambda.ErrEvent) {
		t.Errorf("malformed JSON: %v; want ErrEvent", err)
	}
}

// FuzzDetectHTTPEvent: the event probe never panics, and answers a kind
// exactly when it returns no error.
func FuzzDetectHTTPEvent(f *testing.F) {
	for _, tc := range httpEvents {
		f.Add(eventFile(f, tc.file))
	}
	f.Add([]byte(`{"version":"2.0"}`))
	f.Add([]byte(`{"requestContext":{"elb":null}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := lambda.DetectHTTPEvent(b)
		if (err == nil) == (k == lambda.EventUnknown) {
			t.Fatalf("kind %v with error %v", k, err)
		}
	})
}

// TestHTTPTenantsAndInFlight: tenants are scoped (one key, two tenants,
// two executions); a duplicate while the first invocation runs is 409
// idempotency-in-flight with Retry-After; a base64 body is fingerprinted
// decoded (the same bytes sent plain replay).
func TestHTTPTenantsAndInFlight(t *testing.T) {
	var n atomic.Int64
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		if r.Header.Get("x-block") != "" {
			<-release
		}
		charge(&n).ServeHTTP(w, r)
	})
	h, _ := lambda.NewHTTPHandler(api, lambda.HTTPOptions{
		Config: lambda.Config{Store: newMemory()},
		HTTP:   idempotency.HTTPOptions{TenantHeader: "Authorization"},
	})
	raw := eventFile(t, "apigw-v2-request-no-authorizer.json")
	for _, tenant := range []string{"Bearer a", "Bearer b", "Bearer a"} {
		r := invokeHTTP(t, invocationCtx(t, time.Minute), h, asPOST(t, raw, `{"x":1}`, map[string]string{"idempotency-key": "same", "authorization": tenant}))
		if r.StatusCode != http.StatusCreated {
			t.Fatalf("%s: %d %s", tenant, r.StatusCode, r.Body)
		}
	}
	if n.Load() != 2 {
		t.Fatalf("two tenants, one key: ran %d times, want 2", n.Load())
	}

	for len(entered) > 0 {
		<-entered
	}
	blocked := asPOST(t, raw, `{"x":2}`, map[string]string{"idempotency-key": "slow", "x-block": "1"})
	done := make(chan []byte, 1)
	ctx := invocationCtx(t, time.Minute)
	go func() { // no t.Fatal off the test goroutine: the answer is checked below
		out, err := h.Invoke(ctx, blocked)
		if err != nil {
			out = []byte(err.Error())
		}
		done <- out
	}()
	<-entered // the first invocation holds the key and runs
	dup := invokeHTTP(t, invocationCtx(t, time.Minute), h, blocked)
	close(release)
	var first httpResponse
	if out := <-done; json.Unmarshal(out, &first) != nil {
		t.Fatalf("first: %s", out)
	}
	if dup.StatusCode != http.StatusConflict || !strings.Contains(dup.Body, "idempotency-in-flight") || dup.header("Retry-After") == "" {
		t.Fatalf("concurrent duplicate: %d %q %s", dup.StatusCode, dup.header("Retry-After"), dup.Body)
	}
	if first.StatusCode != http.StatusCreated {
		t.Fatalf("first: %d %s", first.StatusCode, first.Body)
	}

	b64 := editJSON(t, asPOST(t, raw, "", map[string]string{"idempotency-key": "b64", "content-type": "application/json"}), func(m map[string]any) {
		m["body"], m["isBase64Encoded"] = "eyJhbW91bnQiOjV9", true // {"amount":5}
	})
	plain := asPOST(t, raw, `{"amount": 5}`, map[string]string{"idempotency-key": "b64", "content-type": "application/json"})
	a := invokeHTTP(t, invocationCtx(t, time.Minute), h, b64)
	b := invokeHTTP(t, invocationCtx(t, time.Minute), h, plain)
	if a.StatusCode != http.StatusCreated || b.header("Idempotent-Replayed") != "true" || a.Body != b.Body || !strings.Contains(a.Body, `amount\":5`) {
		t.Fatalf("base64 %d %s; plain %d %s", a.StatusCode, a.Body, b.StatusCode, b.Body)
	}
}
