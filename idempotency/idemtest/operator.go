package idemtest

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/fakeclock"
)

// The operator's view: computing a request's store key, inspecting its
// record, resolving a held key, listing keys by state.

// holdKey runs one request whose handler reports an unknown outcome, so
// that its key is held, and returns the scoped key.
func holdKey(t *testing.T, c client, u *unknownUpstream, key string) string {
	t.Helper()
	if r := c.post(key, `{"amount":5}`); r.status != http.StatusGatewayTimeout || u.reported.Load() != 1 {
		t.Fatalf("holding request = %+v (reported %d)", r, u.reported.Load())
	}
	return idempotency.ScopedKey("charges", "", key)
}

func testOperatorKeyFor(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	var log eventLog
	e := newEngine(s, nil, idempotency.Options{OnEvent: log.add})
	h1 := mw(e, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Request-Id", "req_upstream_1")
		w.Header().Set("X-Not-Stored", "1")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"ch_1"}`))
	}))
	send := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{"amount":1}`))
		req.Header.Set("Idempotency-Key", `"`+k.key("k")+`"`) // the RFC 8941 quoted form
		req.Header.Set("Authorization", "Bearer tenant-a")
		w := httptest.NewRecorder()
		h1.ServeHTTP(w, req)
		return w
	}
	send()
	key, err := idempotency.KeyFor("charges", "Bearer tenant-a", `"`+k.key("k")+`"`)
	if err != nil {
		t.Fatalf("KeyFor: %v", err)
	}
	if bare, _ := idempotency.KeyFor("charges", "Bearer tenant-a", k.key("k")); bare != key {
		t.Fatal("KeyFor of the bare and quoted forms differ")
	}
	if ev := log.last(); ev.Key != key {
		t.Fatalf("KeyFor = %q, the middleware's event says %q", key, ev.Key)
	}
	rec, err := e.Inspect(context.Background(), key)
	if err != nil {
		t.Fatalf("Inspect(KeyFor(...)): %v", err)
	}
	if rec.State != idempotency.StateCompleted || rec.Response == nil || rec.Response.Status != http.StatusCreated ||
		string(rec.Response.Body) != `{"id":"ch_1"}` || rec.Response.Header.Get("Request-Id") != "req_upstream_1" ||
		rec.Response.Header.Get("X-Not-Stored") != "" {
		t.Fatalf("inspected record = %+v (response %+v), want the completed 201 with Request-Id stored", rec, rec.Response)
	}
	if w := send(); w.Header().Get("Request-Id") != "req_upstream_1" || w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay headers = %v, want the upstream's Request-Id replayed", w.Header())
	}
	if _, err := idempotency.KeyFor("charges", "", `"unterminated`); !errors.Is(err, idempotency.ErrInvalidKey) {
		t.Fatalf("KeyFor of an invalid key = %v, want ErrInvalidKey", err)
	}
	if _, err := e.Inspect(context.Background(), idempotency.ScopedKey("charges", "", k.key("never"))); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Inspect of a key never used = %v, want ErrNotFound", err)
	}
}

func testOperatorResolveRelease(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	u := &unknownUpstream{}
	e := newEngine(s, nil, idempotency.Options{})
	c := client{t, mw(e, u)}
	key := holdKey(t, c, u, k.key("k"))
	rec, err := e.Inspect(context.Background(), key)
	if err != nil || rec.State != idempotency.StateUnknown {
		t.Fatalf("Inspect of a held key = %+v, %v", rec, err)
	}
	if err := e.Resolve(context.Background(), key, idempotency.Resolution{Token: rec.Token}); err != nil {
		t.Fatalf("Resolve (release): %v", err)
	}
	if _, err := e.Inspect(context.Background(), key); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Inspect after release = %v, want ErrNotFound", err)
	}
	if r := c.post(k.key("k"), `{"amount":5}`); r.status != http.StatusCreated || u.calls.Load() != 2 {
		t.Fatalf("retry after release = %+v (calls %d), want it executed", r, u.calls.Load())
	}
}

func testOperatorResolveResponse(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	clk := fakeclock.New(time.Now())
	u := &unknownUpstream{}
	e := newEngine(s, clk, idempotency.Options{Retention: time.Hour})
	c := client{t, mw(e, u)}
	key := holdKey(t, c, u, k.key("k"))
	found := idempotency.Response{Status: http.StatusCreated, Header: http.Header{"Content-Type": {"application/json"}, "Request-Id": {"req_found"}},
		Body: []byte(`{"id":"ch_found","status":"succeeded"}`)}
	clk.Advance(30 * time.Minute)
	if err := e.Resolve(context.Background(), key, idempotency.Resolution{Response: &found}); err != nil {
		t.Fatalf("Resolve (response): %v", err)
	}
	rec, err := e.Inspect(context.Background(), key)
	if err != nil || rec.State != idempotency.StateCompleted || rec.ExpiresAt.Sub(clk.Now().Add(time.Hour)).Abs() > time.Millisecond {
		t.Fatalf("after resolving = %+v, %v; want completed, retained an hour from the resolution", rec, err)
	}
	clk.Advance(45 * time.Minute) // past the hold's own retention, within the resolution's
	r := c.post(k.key("k"), `{"amount":5}`)
	if r.status != http.StatusCreated || !r.replayed || r.body != string(found.Body) || u.calls.Load() != 1 {
		t.Fatalf("retry after resolving = %+v (calls %d), want the stored response replayed", r, u.calls.Load())
	}
	if err := e.Resolve(context.Background(), key, idempotency.Resolution{}); !errors.Is(err, idempotency.ErrNotResolvable) {
		t.Fatalf("Resolve of a completed record = %v, want ErrNotResolvable", err)
	}
}

func testOperatorResolveFencing(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	u := &unknownUpstream{}
	e := newEngine(s, nil, idempotency.Options{RenewEvery: -1})
	c := client{t, mw(e, u)}
	key := holdKey(t, c, u, k.key("k"))
	rec, err := e.Inspect(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Resolve(ctx, key, idempotency.Resolution{Token: rec.Token + 1}); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Resolve with another token = %v, want ErrFenced", err)
	}
	if again, err := e.Inspect(ctx, key); err != nil || again.State != idempotency.StateUnknown {
		t.Fatalf("a fenced Resolve changed the record: %+v, %v", again, err)
	}
	if err := e.Resolve(ctx, idempotency.ScopedKey("charges", "", k.key("absent")), idempotency.Resolution{}); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Resolve of an absent key = %v, want ErrNotFound", err)
	}
	// An in-progress (stuck) claim needs AllowInProgress, and its holder
	// is fenced afterwards.
	stuck := idempotency.ScopedKey("charges", "", k.key("stuck"))
	lease, _, err := e.Begin(ctx, stuck, fpOf("x"))
	if err != nil || lease == nil {
		t.Fatalf("Begin: %v", err)
	}
	if err := e.Resolve(ctx, stuck, idempotency.Resolution{}); !errors.Is(err, idempotency.ErrNotResolvable) {
		t.Fatalf("Resolve of an in-progress record = %v, want ErrNotResolvable", err)
	}
	if err := e.Resolve(ctx, stuck, idempotency.Resolution{AllowInProgress: true}); err != nil {
		t.Fatalf("Resolve of an in-progress record with AllowInProgress: %v", err)
	}
	if err := lease.Complete(ctx, idempotency.Response{Status: 200}); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("the stuck holder's Complete after the resolution = %v, want ErrFenced", err)
	}
}

func testOperatorList(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	clk := fakeclock.New(t0.Add(2 * time.Second))
	e := newEngine(s, clk, idempotency.Options{})
	if !s.Features().List {
		if _, err := e.List(ctx, idempotency.StateUnknown, "", 10); !errors.Is(err, idempotency.ErrListUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Engine.List on a store without Features.List = %v, want ErrListUnsupported", err)
		}
		if _, err := s.List(ctx, idempotency.ListRequest{State: idempotency.StateUnknown, Now: t0, Limit: 10}); !errors.Is(err, idempotency.ErrListUnsupported) {
			t.Fatalf("Store.List on a store without Features.List = %v, want ErrListUnsupported", err)
		}
		return
	}
	want := map[idempotency.State][]string{}
	for _, name := range []string{"u1", "u2", "u3"} {
		want[idempotency.StateUnknown] = append(want[idempotency.StateUnknown], claimAndMark(t, s, k.key(name)).Key)
	}
	running := claimReq(k.key("p1"), fpOf("x"), t0)
	mustClaim(t, s, running)
	want[idempotency.StateInProgress] = []string{running.Key}
	done := claimReq(k.key("c1"), fpOf("x"), t0)
	mustClaim(t, s, done)
	if err := s.Complete(ctx, done.Key, done.Token, sampleResponse(), t0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	gone := claimReq(k.key("u0-expired"), fpOf("x"), t0)
	mustClaim(t, s, gone)
	if err := s.MarkUnknown(ctx, gone.Key, gone.Token, t0, t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, state := range []idempotency.State{idempotency.StateUnknown, idempotency.StateInProgress} {
		var got []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > 1000 {
				t.Fatal("List never reached a short page")
			}
			recs, err := e.List(ctx, state, after, 2)
			if err != nil {
				t.Fatalf("List(%v): %v", state, err)
			}
			for i, rec := range recs {
				if rec.State != state || !clk.Now().Before(rec.ExpiresAt) || rec.Response != nil {
					t.Fatalf("List(%v) returned %+v", state, rec)
				}
				if rec.Key <= after || (i > 0 && rec.Key <= recs[i-1].Key) {
					t.Fatalf("List(%v) out of order: %q after %q", state, rec.Key, after)
				}
				if strings.HasPrefix(rec.Key, k.prefix+"/") { // the backend may hold other tests' records
					got = append(got, rec.Key)
				}
			}
			if len(recs) < 2 {
				break
			}
			after = recs[len(recs)-1].Key
		}
		if strings.Join(got, ",") != strings.Join(want[state], ",") {
			t.Fatalf("List(%v) = %q, want %q", state, got, want[state])
		}
	}
	rec, err := e.List(ctx, idempotency.StateUnknown, want[idempotency.StateUnknown][0], 1)
	if err != nil || len(rec) != 1 || rec[0].Key != want[idempotency.StateUnknown][1] || rec[0].Fingerprint != fpOf("x") ||
		!rec[0].LeaseUntil.Equal(t0.Add(time.Second)) {
		t.Fatalf("List after the first key = %+v, %v; want the second, with its fingerprint and the time it became unknown", rec, err)
	}
	if _, err := e.List(ctx, idempotency.StateCompleted, "", 10); !errors.Is(err, idempotency.ErrInvalidState) {
		t.Fatalf("List(completed) = %v, want ErrInvalidState", err)
	}
}
