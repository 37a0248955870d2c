package resilience_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

// flaky is a real HTTP server that answers from a script and records
// what each attempt carried.
type flaky struct {
	mu      sync.Mutex
	answers []func(w http.ResponseWriter)
	got     []attemptSeen
	srv     *httptest.Server
}

type attemptSeen struct {
	key  string
	body string
	at   time.Time
}

func newFlaky(t *testing.T, tls bool, answers ...func(w http.ResponseWriter)) *flaky {
	return newFlakyConns(t, tls, nil, answers...)
}

func newFlakyConns(t *testing.T, tls bool, connState func(net.Conn, http.ConnState), answers ...func(w http.ResponseWriter)) *flaky {
	f := &flaky{answers: answers}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.got = append(f.got, attemptSeen{key: r.Header.Get("Idempotency-Key"), body: string(b), at: time.Now()})
		a := f.answers[min(len(f.got)-1, len(f.answers)-1)]
		f.mu.Unlock()
		a(w)
	})
	f.srv = httptest.NewUnstartedServer(h)
	f.srv.Config.ConnState = connState
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the bad-certificate test's handshake errors
	if tls {
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	return f
}

func (f *flaky) seen() []attemptSeen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]attemptSeen(nil), f.got...)
}

func status(code int, kv ...string) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(kv); i += 2 {
			w.Header().Set(kv[i], kv[i+1])
		}
		w.WriteHeader(code)
		io.WriteString(w, http.StatusText(code))
	}
}

func client(t *testing.T, s resilience.Settings, base http.RoundTripper) *http.Client {
	t.Helper()
	if base == nil {
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		base = tr
	}
	return &http.Client{Transport: &resilience.Transport{Base: base, Executor: mustNew(t, s)}}
}

// TestRetryAfterWaitsOnTheWire: 503 + Retry-After: 2 is waited out, in
// both forms, never earlier.
func TestRetryAfterWaitsOnTheWire(t *testing.T) {
	t.Parallel()
	for _, form := range []string{"seconds", "date"} {
		t.Run(form, func(t *testing.T) {
			t.Parallel()
			ra := func(w http.ResponseWriter) {
				v := "2"
				if form == "date" { // HTTP-dates have whole seconds: 3 s ahead is at least 2 s
					v = time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
				}
				status(503, "Retry-After", v)(w)
			}
			f := newFlaky(t, false, ra, status(200))
			resp, err := client(t, resilience.Settings{}, nil).Get(f.srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			closeResp(resp)
			s := f.seen()
			if resp.StatusCode != 200 || len(s) != 2 {
				t.Fatalf("status %d after %d attempts", resp.StatusCode, len(s))
			}
			if gap := s[1].at.Sub(s[0].at); gap < 2*time.Second {
				t.Errorf("retried after %v, before the 2 s the server asked for", gap)
			}
		})
	}
}

func TestRetryAfter3600FailsFastOnTheWire(t *testing.T) {
	t.Parallel()
	f := newFlaky(t, false, status(503, "Retry-After", "3600"))
	_, err := client(t, resilience.Settings{Name: "partner"}, nil).Get(f.srv.URL)
	var ra *resilience.RetryAfterError
	if !errors.As(err, &ra) || ra.RetryAfter != time.Hour || len(f.seen()) != 1 {
		t.Fatalf("err = %v after %d attempts", err, len(f.seen()))
	}
}

func TestPOSTKeysAndBodiesOnTheWire(t *testing.T) {
	t.Parallel()
	fast := resilience.RetrySettings{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}
	body := strings.Repeat("charge=100&currency=eur;", 100)

	t.Run("no key: once", func(t *testing.T) {
		f := newFlaky(t, false, status(503))
		resp, err := client(t, resilience.Settings{Retry: fast}, nil).Post(f.srv.URL, "text/plain", strings.NewReader(body))
		if err != nil || resp.StatusCode != 503 || len(f.seen()) != 1 {
			t.Fatalf("%v %v after %d attempts", resp, err, len(f.seen()))
		}
		closeResp(resp)
	})
	for _, mode := range []string{"own key, GetBody", "own key, buffered body", "AutoKey"} {
		t.Run(mode, func(t *testing.T) {
			f := newFlaky(t, false, status(503), status(502), status(200))
			s := resilience.Settings{Retry: fast}
			var rd io.Reader = strings.NewReader(body) // NewRequest sets GetBody
			if mode != "own key, GetBody" {
				rd = io.MultiReader(strings.NewReader(body)) // no GetBody: the transport buffers it
			}
			req, _ := http.NewRequest("POST", f.srv.URL, rd)
			if mode == "AutoKey" {
				s.Retry.AutoKey = true
			} else {
				req.Header.Set("Idempotency-Key", "order-42")
			}
			hdrBefore := req.Header.Clone()
			resp, err := client(t, s, nil).Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Fatal(resp, err)
			}
			closeResp(resp)
			seen := f.seen()
			if len(seen) != 3 {
				t.Fatalf("%d attempts", len(seen))
			}
			for i, a := range seen {
				if a.key == "" || a.key != seen[0].key || a.body != body {
					t.Errorf("attempt %d: key %q (first %q), body of %d bytes", i, a.key, seen[0].key, len(a.body))
				}
			}
			if mode != "AutoKey" && seen[0].key != "order-42" {
				t.Errorf("key %q", seen[0].key)
			}
			if len(req.Header) != len(hdrBefore) || req.Header.Get("Idempotency-Key") != hdrBefore.Get("Idempotency-Key") {
				t.Error("the caller's request was modified")
			}
		})
	}
	t.Run("body over the buffer limit: once", func(t *testing.T) {
		f := newFlaky(t, false, status(503), status(200))
		req, _ := http.NewRequest("POST", f.srv.URL, io.MultiReader(strings.NewReader(body)))
		req.Header.Set("Idempotency-Key", "k")
		c := &http.Client{Transport: &resilience.Transport{Executor: mustNew(t, resilience.Settings{Retry: fast}), MaxBufferedBody: 10}}
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != 503 || len(f.seen()) != 1 || f.seen()[0].body != body {
			t.Fatalf("%v %v after %d attempts", resp, err, len(f.seen()))
		}
		closeResp(resp)
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	})
}

func TestAnswersAttemptedOnceOnTheWire(t *testing.T) {
	t.Parallel()
	for _, code := range []int{400, 401, 404, 409, 422, 501} {
		f := newFlaky(t, false, status(code))
		resp, err := client(t, resilience.Settings{}, nil).Get(f.srv.URL)
		if err != nil || resp.StatusCode != code || len(f.seen()) != 1 {
			t.Errorf("%d: %v %v after %d attempts", code, resp, err, len(f.seen()))
		}
		closeResp(resp)
	}
}

func TestBadCertificateAttemptedOnce(t *testing.T) {
	t.Parallel()
	var handshakes int
	var mu sync.Mutex
	f := newFlakyConns(t, true, func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			handshakes++
			mu.Unlock()
		}
	}, status(200))
	_, err := client(t, resilience.Settings{}, nil).Get(f.srv.URL) // the client does not trust the test CA
	mu.Lock()
	defer mu.Unlock()
	if err == nil || handshakes != 1 {
		t.Fatalf("err %v after %d connections; want one", err, handshakes)
	}
}

func TestConnectErrorRetriedOnTheWire(t *testing.T) {
	t.Parallel()
	f := newFlaky(t, false, status(200))
	u := f.srv.URL
	f.srv.Close() // nothing listens: dials are refused
	_, err := client(t, resilience.Settings{Retry: resilience.RetrySettings{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}}, nil).Post(u, "text/plain", strings.NewReader("x"))
	var ee *resilience.ExceededError
	if !errors.As(err, &ee) || ee.Attempts != 3 {
		t.Fatalf("err = %v", err)
	}
}

func TestSecondaryThroughRoundTripTo(t *testing.T) {
	t.Parallel()
	down := newFlaky(t, false, status(503))
	up := newFlaky(t, false, status(200))
	u, _ := url.Parse(up.srv.URL)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	sec := mustNew(t, resilience.Settings{Name: "secondary"})
	s := resilience.Settings{Retry: resilience.RetrySettings{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond},
		Secondary: &resilience.SecondarySettings{Executor: sec, Send: resilience.RoundTripTo(tr, u, "")}}
	req, _ := http.NewRequest("POST", down.srv.URL+"/v1/charges", bytes.NewReader([]byte("amount=5")))
	req.Header.Set("Idempotency-Key", "k9")
	resp, err := client(t, s, tr).Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	}
	closeResp(resp)
	if got := up.seen(); len(got) != 1 || got[0].key != "k9" || got[0].body != "amount=5" || len(down.seen()) != 3 {
		t.Fatalf("secondary saw %+v; primary %d attempts", got, len(down.seen()))
	}
}

func TestCallerContextWinsOnTheWire(t *testing.T) {
	t.Parallel()
	hang := make(chan struct{})
	f := newFlaky(t, false, func(w http.ResponseWriter) { <-hang })
	defer close(hang)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL, nil)
	_, err := client(t, resilience.Settings{}, nil).Do(req)
	if !errors.Is(err, context.DeadlineExceeded) || len(f.seen()) != 1 {
		t.Fatalf("err %v after %d attempts", err, len(f.seen()))
	}
}

func TestUnsafeRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	target := newFlaky(t, false, status(200))
	f := newFlaky(t, false, status(307, "Location", target.srv.URL))
	c := client(t, resilience.Settings{}, nil)
	c.CheckRedirect = resilience.CheckRedirect
	resp, err := c.Post(f.srv.URL, "text/plain", strings.NewReader("pay"))
	if err != nil || resp.StatusCode != 307 || len(f.seen()) != 1 || len(target.seen()) != 0 {
		t.Fatalf("POST: %v %v; %d + %d requests", resp, err, len(f.seen()), len(target.seen()))
	}
	closeResp(resp)
	resp, err = c.Get(f.srv.URL)
	if err != nil || resp.StatusCode != 200 || len(target.seen()) != 1 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	closeResp(resp)
}

// recordRT answers 200 and records the requests it was given.
type recordRT struct{ got []*http.Request }

func (r *recordRT) RoundTrip(req *http.Request) (*http.Response, error) {
	r.got = append(r.got, req)
	return &http.Response{StatusCode: 200, Body: http.NoBody, Request: req}, nil
}

// When the caller's context ends before the attempt timeout would, the
// attempt runs on the caller's own context (no context derived, the
// request not copied); with a later caller deadline, the attempt gets a
// context of its own, ending at the attempt timeout.
func TestAttemptOnCallerDeadline(t *testing.T) {
	t.Parallel()
	rec := &recordRT{}
	rt := &resilience.Transport{Base: rec, Executor: mustNew(t, resilience.Settings{AttemptTimeout: 5 * time.Second})}
	short, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	long, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	for _, ctx := range []context.Context{short, long} {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://127.0.0.1:1/x", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		closeResp(resp)
	}
	if len(rec.got) != 2 {
		t.Fatalf("%d attempts", len(rec.got))
	}
	if rec.got[0].Context() != short {
		t.Error("caller deadline 2s < attempt timeout 5s: the attempt did not run on the caller's context")
	}
	dl, ok := rec.got[1].Context().Deadline()
	if ld, _ := long.Deadline(); rec.got[1].Context() == long || !ok || !dl.Before(ld) || time.Until(dl) > 5*time.Second {
		t.Errorf("caller deadline 1h: attempt deadline %v (ok %v), want within 5s", time.Until(dl), ok)
	}
}
