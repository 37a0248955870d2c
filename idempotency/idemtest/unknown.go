package idemtest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/fakeclock"
)

// The unknown-outcome state is part of the Store contract, not an optional
// feature: a store that cannot hold a key in StateUnknown fails these tests.

func testFeatures(t *testing.T, h Harness, _ keys) {
	s := h.NewStore(t)
	if a, b := s.Features(), s.Features(); a != b {
		t.Fatalf("Features() changed between calls: %+v then %+v", a, b)
	}
}

// claimAndMark claims key at t0 and marks it unknown at t0+1s, retained
// for an hour.
func claimAndMark(t *testing.T, s idempotency.Store, key string) idempotency.ClaimRequest {
	t.Helper()
	req := claimReq(key, fpOf("x"), t0)
	mustClaim(t, s, req)
	if err := s.MarkUnknown(context.Background(), req.Key, req.Token, t0.Add(time.Second), t0.Add(time.Hour)); err != nil {
		t.Fatalf("MarkUnknown: %v", err)
	}
	return req
}

func testUnknownHolds(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimAndMark(t, s, k.key("a"))
	rec, err := s.Lookup(ctx, req.Key, t0.Add(2*time.Second))
	if err != nil {
		t.Fatalf("Lookup after MarkUnknown: %v", err)
	}
	if rec.State != idempotency.StateUnknown || rec.Token != req.Token || rec.Fingerprint != req.Fingerprint || rec.Response != nil {
		t.Fatalf("record after MarkUnknown = %+v, want unknown, token %d, no response", rec, req.Token)
	}
	if !rec.LeaseUntil.Equal(t0.Add(time.Second)) || !rec.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("times after MarkUnknown: lease %v expires %v, want %v (when it became unknown) and %v",
			rec.LeaseUntil, rec.ExpiresAt, t0.Add(time.Second), t0.Add(time.Hour))
	}
	// Long past the original lease (30 s), before retention ends: held.
	for _, at := range []time.Time{req.LeaseUntil, req.LeaseUntil.Add(time.Minute), t0.Add(time.Hour - time.Millisecond)} {
		ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, at))
		if ex.State != idempotency.StateUnknown || ex.Token != req.Token {
			t.Fatalf("claim at %v blocked by %+v, want the unknown record", at, ex)
		}
		if ex.Claimable(at) {
			t.Fatalf("the store returned a record Claimable at %v", at)
		}
	}
	// The holder cannot renew or mark it again: the lease is over.
	if err := s.Renew(ctx, req.Key, req.Token, t0, t0.Add(time.Minute), t0.Add(2*time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Renew of an unknown record = %v, want ErrFenced", err)
	}
	if err := s.MarkUnknown(ctx, req.Key, req.Token, t0, t0.Add(2*time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("second MarkUnknown = %v, want ErrFenced", err)
	}
	if rec, err := s.Lookup(ctx, req.Key, t0.Add(2*time.Second)); err != nil || !rec.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("a fenced call changed the unknown record: %+v, %v", rec, err)
	}
}

func testUnknownFenced(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	if err := s.MarkUnknown(ctx, req.Key, req.Token+1, t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("MarkUnknown with a wrong token = %v, want ErrFenced", err)
	}
	if err := s.MarkUnknown(ctx, k.key("missing"), req.Token, t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("MarkUnknown of a missing key = %v, want ErrFenced", err)
	}
	if rec, err := s.Lookup(ctx, req.Key, t0); err != nil || rec.State != idempotency.StateInProgress {
		t.Fatalf("a fenced MarkUnknown changed the record: %+v, %v", rec, err)
	}
	if err := s.Complete(ctx, req.Key, req.Token, sampleResponse(), t0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkUnknown(ctx, req.Key, req.Token, t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("MarkUnknown of a completed record = %v, want ErrFenced", err)
	}
	if ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0)); ex.State != idempotency.StateCompleted {
		t.Fatalf("state = %v, want completed", ex.State)
	}
	// A stale holder (lease lapsed, key taken over) cannot mark the new claim.
	stale := claimReq(k.key("b"), fpOf("x"), t0)
	mustClaim(t, s, stale)
	fresh := claimReq(stale.Key, stale.Fingerprint, stale.LeaseUntil)
	mustClaim(t, s, fresh)
	if err := s.MarkUnknown(ctx, stale.Key, stale.Token, fresh.Now, fresh.Now.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("stale MarkUnknown = %v, want ErrFenced", err)
	}
	if rec, err := s.Lookup(ctx, stale.Key, fresh.Now); err != nil || rec.State != idempotency.StateInProgress || rec.Token != fresh.Token {
		t.Fatalf("after a stale MarkUnknown: %+v, %v; want the new holder's claim", rec, err)
	}
}

func testUnknownRetention(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimAndMark(t, s, k.key("a"))
	exp := t0.Add(time.Hour)
	if _, err := s.Lookup(ctx, req.Key, exp); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup of an unknown record at its expiry = %v, want ErrNotFound", err)
	}
	mustClaim(t, s, claimReq(req.Key, fpOf("anything after retention"), exp))
}

func testUnknownRelease(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimAndMark(t, s, k.key("a"))
	if err := s.Release(ctx, req.Key, req.Token+1); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Release of an unknown record with a wrong token = %v, want ErrFenced", err)
	}
	if err := s.Release(ctx, req.Key, req.Token); err != nil {
		t.Fatalf("Release of an unknown record with its token: %v", err)
	}
	if _, err := s.Lookup(ctx, req.Key, t0.Add(2*time.Second)); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup after releasing an unknown record = %v, want ErrNotFound", err)
	}
	mustClaim(t, s, claimReq(req.Key, req.Fingerprint, t0.Add(3*time.Second)))
}

func testUnknownComplete(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimAndMark(t, s, k.key("a"))
	want := sampleResponse()
	if err := s.Complete(ctx, req.Key, req.Token+1, want, t0, t0.Add(48*time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Complete of an unknown record with a wrong token = %v, want ErrFenced", err)
	}
	if err := s.Complete(ctx, req.Key, req.Token, want, t0.Add(2*time.Second), t0.Add(48*time.Hour)); err != nil {
		t.Fatalf("Complete of an unknown record with its token: %v", err)
	}
	ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0.Add(2*time.Hour)))
	if ex.State != idempotency.StateCompleted || ex.Response == nil || !ex.ExpiresAt.Equal(t0.Add(48*time.Hour)) {
		t.Fatalf("after resolving with a response: %+v, want completed until %v", ex, t0.Add(48*time.Hour))
	}
	if err := equalResponse(ex.Response, &want); err != nil {
		t.Fatalf("resolved response: %v", err)
	}
	if err := s.Release(ctx, req.Key, req.Token); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Release after resolving = %v, want ErrFenced", err)
	}
}

func testUnknownConcurrent(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	req := claimAndMark(t, s, k.key("a"))
	at := req.LeaseUntil.Add(time.Minute) // the lease is long gone
	const n = 20
	var won atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			res, err := s.Claim(context.Background(), claimReq(req.Key, req.Fingerprint, at))
			if err != nil {
				t.Errorf("Claim: %v", err)
				return
			}
			if res.Claimed {
				won.Add(1)
			} else if res.Existing != nil && res.Existing.State != idempotency.StateUnknown {
				t.Errorf("blocked by %+v, want the unknown record", res.Existing)
			}
		}()
	}
	close(start)
	wg.Wait()
	if won.Load() != 0 {
		t.Fatalf("%d concurrent claims took over an unknown record, want 0", won.Load())
	}
}

// unknownUpstream writes the whole request "upstream", reports the answer
// lost, and answers 504 like a proxy whose upstream timed out.
type unknownUpstream struct {
	calls    atomic.Int64
	reported atomic.Int64
}

func (u *unknownUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := u.calls.Add(1)
	if n == 1 {
		if idempotency.ReportUnknownOutcome(r.Context(), errors.New("upstream timeout after the request was sent")) {
			u.reported.Add(1)
		}
		w.WriteHeader(http.StatusGatewayTimeout)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(`{"charge":2}`))
}

// problemOf returns the anchor of a problem+json reply's type.
func problemOf(r reply) string {
	var p struct {
		Type string `json:"type"`
	}
	if r.ctype != "application/problem+json" || json.Unmarshal([]byte(r.body), &p) != nil {
		return ""
	}
	return p.Type[strings.Index(p.Type, "#")+1:]
}

type eventLog struct {
	mu  sync.Mutex
	evs []idempotency.Event
}

func (l *eventLog) add(_ context.Context, ev idempotency.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

func (l *eventLog) outcomes() []idempotency.Outcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]idempotency.Outcome, len(l.evs))
	for i, ev := range l.evs {
		out[i] = ev.Outcome
	}
	return out
}

func (l *eventLog) last() idempotency.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.evs[len(l.evs)-1]
}

func testHTTPUnknownHeld(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	clk := fakeclock.New(time.Now())
	var log eventLog
	o := idempotency.Options{Lease: 10 * time.Second, Retention: time.Hour, RenewEvery: -1, OnEvent: log.add}
	u := &unknownUpstream{}
	c := client{t, mw(newEngine(s, clk, o), u)}
	first := c.post(k.key("k"), `{"amount":5}`)
	if first.status != http.StatusGatewayTimeout || u.reported.Load() != 1 {
		t.Fatalf("first request = %+v (reported %d), want the handler's 504 and the report accepted", first, u.reported.Load())
	}
	ev := log.last()
	if ev.Outcome != idempotency.OutcomeUnknown || ev.Err == nil || !strings.Contains(ev.Err.Error(), "upstream timeout") {
		t.Fatalf("event = %+v, want outcome unknown with the reported cause", ev)
	}
	if ev.Key != idempotency.ScopedKey("charges", "", k.key("k")) {
		t.Fatalf("event key %q, want the scoped key", ev.Key)
	}
	rec, err := s.Lookup(context.Background(), ev.Key, clk.Now())
	if err != nil || rec.State != idempotency.StateUnknown {
		t.Fatalf("record = %+v, %v; want unknown", rec, err)
	}
	for _, step := range []time.Duration{0, 10 * time.Second, 30 * time.Minute} {
		clk.Advance(step)
		r := c.post(k.key("k"), `{"amount":5}`)
		if r.status != http.StatusConflict || problemOf(r) != "idempotency-outcome-unknown" || r.retry != "" || r.replayed {
			t.Fatalf("retry %v later = %+v, want 409 idempotency-outcome-unknown without Retry-After", step, r)
		}
		if got := log.last().Outcome; got != idempotency.OutcomeHeld {
			t.Fatalf("retry outcome %q, want held", got)
		}
	}
	if r := c.post(k.key("k"), `{"amount":6}`); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("other body on a held key = %d, want 422 (mismatch beats held)", r.status)
	}
	if u.calls.Load() != 1 {
		t.Fatalf("the handler ran %d times while the key was held, want 1", u.calls.Load())
	}
	clk.Advance(30 * time.Minute) // retention (1h from the report) ends
	if r := c.post(k.key("k"), `{"amount":5}`); r.status != http.StatusCreated || u.calls.Load() != 2 {
		t.Fatalf("after retention = %+v (calls %d), want a fresh execution", r, u.calls.Load())
	}
}

func testHTTPUnknownRelease(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	var log eventLog
	u := &unknownUpstream{}
	e := newEngine(s, nil, idempotency.Options{OnEvent: log.add})
	c := client{t, e.Middleware(idempotency.HTTPOptions{Scope: "charges", OnUnknownOutcome: idempotency.UnknownOutcomeRelease})(u)}
	if r := c.post(k.key("k"), `{}`); r.status != http.StatusGatewayTimeout {
		t.Fatalf("first = %+v", r)
	}
	if ev := log.last(); ev.Outcome != idempotency.OutcomeReleased || !errors.Is(ev.Err, idempotency.ErrOutcomeUnknown) {
		t.Fatalf("event = %+v, want released with an error matching ErrOutcomeUnknown", ev)
	}
	if r := c.post(k.key("k"), `{}`); r.status != http.StatusCreated || u.calls.Load() != 2 {
		t.Fatalf("retry under release = %+v (calls %d), want it executed", r, u.calls.Load())
	}
}

func testHTTPUnknownReplicas(t *testing.T, h Harness, k keys) {
	s1 := h.NewStore(t)
	s2 := h.Replica(t, s1)
	clk := fakeclock.New(time.Now())
	o := idempotency.Options{Lease: 10 * time.Second, RenewEvery: -1}
	u := &unknownUpstream{}
	a := client{t, mw(newEngine(s1, clk, o), u)}
	b := client{t, mw(newEngine(s2, clk, o), u)}
	a.post(k.key("k"), `{}`)
	clk.Advance(time.Minute)
	if r := b.post(k.key("k"), `{}`); r.status != http.StatusConflict || problemOf(r) != "idempotency-outcome-unknown" || u.calls.Load() != 1 {
		t.Fatalf("retry on the other replica = %+v (calls %d), want 409 idempotency-outcome-unknown", r, u.calls.Load())
	}
}

func testDoUnknown(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	clk := fakeclock.New(time.Now())
	var log eventLog
	e := newEngine(s, clk, idempotency.Options{Lease: 10 * time.Second, RenewEvery: -1, OnEvent: log.add})
	ctx := context.Background()
	fp := fpOf("payload")
	lost := errors.New("connection reset after the request was sent")
	var runs atomic.Int64
	_, err := e.Do(ctx, k.key("k"), fp, func(context.Context) ([]byte, error) {
		runs.Add(1)
		return nil, idempotency.UnknownOutcome(lost)
	})
	if !errors.Is(err, lost) || !errors.Is(err, idempotency.ErrOutcomeUnknown) {
		t.Fatalf("Do = %v, want fn's error (matching ErrOutcomeUnknown and its cause)", err)
	}
	var ue *idempotency.OutcomeUnknownError
	if errors.As(err, &ue) {
		t.Fatalf("the first call's error is an *OutcomeUnknownError (%v): that type is for calls refused while held", err)
	}
	if got := log.outcomes(); len(got) != 1 || got[0] != idempotency.OutcomeUnknown {
		t.Fatalf("outcomes = %v, want [unknown]", got)
	}
	clk.Advance(time.Minute) // past the lease
	_, err = e.Do(ctx, k.key("k"), fp, func(context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte("again"), nil
	})
	if !errors.As(err, &ue) || !errors.Is(err, idempotency.ErrOutcomeUnknown) || runs.Load() != 1 {
		t.Fatalf("Do on a held key = %v (runs %d), want *OutcomeUnknownError and no run", err, runs.Load())
	}
	if got := log.last().Outcome; got != idempotency.OutcomeHeld {
		t.Fatalf("outcome %q, want held", got)
	}
	if _, err := e.Do(ctx, k.key("k"), fpOf("other"), func(context.Context) ([]byte, error) { return nil, nil }); !errors.Is(err, idempotency.ErrMismatch) {
		t.Fatalf("Do with another fingerprint on a held key = %v, want ErrMismatch", err)
	}
}
