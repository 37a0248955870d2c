// Package idemtest is the conformance suite every idempotency.Store runs.
// A store's test calls Run with a Harness; the suite checks the Store
// contract directly and then the engine's and middleware's guarantees on
// top of the store: exactly-once under concurrency and across replicas,
// takeover after a crashed holder's lease with fencing of its late write,
// logical expiry, 422 before 409, tenant isolation, unknown outcomes held
// past any lease, the operator's Inspect, Resolve and (where the store
// declares Features.List) List, and the number of backend round trips per
// request.
package idemtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/fakeclock"
	"github.com/leveehq/levee/internal/poll"
)

// Harness tells the suite how to reach a store.
type Harness struct {
	// NewStore returns a store for one test. Stores from different calls
	// may share a backend: the suite gives every test its own keys. Clean
	// up with t.Cleanup.
	NewStore func(t testing.TB) idempotency.Store
	// Replica, if set, returns a second, independent store instance (its
	// own connections) over the same data as s: "another replica". When
	// nil, replica tests share s itself.
	Replica func(t testing.TB, s idempotency.Store) idempotency.Store
	// RoundTrips returns the number of backend round trips s has made so
	// far, counted at the client (a Redis hook, a pgx tracer, an SDK
	// middleware, a driver-connection wrapper). Required: Run fails
	// without it.
	RoundTrips func(s idempotency.Store) int64
	// NewRequestRoundTrips is the most round trips a new request (claim,
	// complete) may cost. Default 2; a client mode that adds a round trip
	// per statement by design (pgx's QueryExecModeDescribeExec) sets 4.
	NewRequestRoundTrips int64
	// ReplayRoundTrips is the exact round trips a replay costs. Default 1;
	// a store whose backend cannot return the blocking record from the
	// failed claim sets 2 and documents why.
	ReplayRoundTrips int64
}

// Optional capabilities are not declared here but by the store itself
// (idempotency.Store.Features), so that the suite checks what a store
// claims to offer and every wrapper forwards the declaration.

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	if h.NewStore == nil || h.RoundTrips == nil {
		t.Fatal("idemtest: Harness.NewStore and Harness.RoundTrips are required")
	}
	if h.ReplayRoundTrips == 0 {
		h.ReplayRoundTrips = 1
	}
	if h.NewRequestRoundTrips == 0 {
		h.NewRequestRoundTrips = 2
	}
	if h.Replica == nil {
		h.Replica = func(_ testing.TB, s idempotency.Store) idempotency.Store { return s }
	}
	run := newRunID()
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness, k keys)
	}{
		{"ClaimFresh", testClaimFresh},
		{"ClaimBlockedReturnsExisting", testClaimBlocked},
		{"CompleteThenReplayByteIdentical", testCompleteReplay},
		{"EmptyAndNilBodies", testEmptyBodies},
		{"LargeResponse", testLargeResponse},
		{"FencedComplete", testFencedComplete},
		{"ReleaseAllowsReclaim", testRelease},
		{"LeaseExpiryTakeoverFencesStaleHolder", testTakeover},
		{"RenewExtendsLease", testRenew},
		{"RenewAfterCompleteIsFenced", testRenewAfterComplete},
		{"RenewExtendsRetention", testRenewExtendsRetention},
		{"CompletedNotClaimableAfterLease", testCompletedStays},
		{"RetentionIsLogical", testRetention},
		{"Lookup", testLookup},
		{"KeyPrefix", testKeyPrefix},
		{"ConcurrentClaimsOneWinner", testConcurrentClaims},
		{"OddKeys", testOddKeys},
		{"CanceledContext", testCanceled},
		{"FeaturesStable", testFeatures},
		{"Unknown/MarkUnknownHoldsPastLease", testUnknownHolds},
		{"Unknown/FencedMarkUnknown", testUnknownFenced},
		{"Unknown/RetentionEnds", testUnknownRetention},
		{"Unknown/ResolveByRelease", testUnknownRelease},
		{"Unknown/ResolveByComplete", testUnknownComplete},
		{"Unknown/ConcurrentClaimsNoWinner", testUnknownConcurrent},
		{"HTTP/ConcurrentIdenticalExecuteOnce", testHTTPConcurrent},
		{"HTTP/ConcurrentWaitAndReplay", testHTTPConcurrentWait},
		{"HTTP/TwoReplicasExecuteOnce", testHTTPReplicas},
		{"HTTP/MismatchBeatsInFlight", testHTTPMismatchFirst},
		{"HTTP/TenantIsolation", testHTTPTenants},
		{"HTTP/CrashedHolderTakenOverAfterLease", testHTTPCrash},
		{"HTTP/LogicalExpiry", testHTTPExpiry},
		{"HTTP/FailurePolicy", testHTTPFailurePolicy},
		{"HTTP/LeaseRenewedWhileRunning", testHTTPRenewal},
		{"HTTP/UnknownOutcomeHeld", testHTTPUnknownHeld},
		{"HTTP/UnknownOutcomeRelease", testHTTPUnknownRelease},
		{"HTTP/UnknownOutcomeAcrossReplicas", testHTTPUnknownReplicas},
		{"Do/UnknownOutcomeHeld", testDoUnknown},
		{"Operator/KeyForInspectAndRequestId", testOperatorKeyFor},
		{"Operator/ResolveRelease", testOperatorResolveRelease},
		{"Operator/ResolveWithResponse", testOperatorResolveResponse},
		{"Operator/ResolveFencing", testOperatorResolveFencing},
		{"Operator/ListByState", testOperatorList},
		{"RoundTrips", testRoundTrips},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, h, keys{prefix: run + "/" + tc.name})
		})
	}
}

func newRunID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// keys makes per-test keys so tests sharing a backend never collide.
type keys struct{ prefix string }

func (k keys) key(name string) string { return k.prefix + "/" + name }

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func claimReq(key string, fp idempotency.Fingerprint, now time.Time) idempotency.ClaimRequest {
	return idempotency.ClaimRequest{
		Key: key, Fingerprint: fp, Token: idempotency.NewToken(), Now: now,
		LeaseUntil: now.Add(30 * time.Second), ExpiresAt: now.Add(24 * time.Hour),
	}
}

func fpOf(s string) idempotency.Fingerprint { return idempotency.FingerprintOf([]byte(s)) }

func mustClaim(t *testing.T, s idempotency.Store, req idempotency.ClaimRequest) {
	t.Helper()
	res, err := s.Claim(context.Background(), req)
	if err != nil {
		t.Fatalf("Claim(%q): %v", req.Key, err)
	}
	if !res.Claimed {
		t.Fatalf("Claim(%q) = not claimed (existing %+v), want claimed", req.Key, res.Existing)
	}
}

func mustBlock(t *testing.T, s idempotency.Store, req idempotency.ClaimRequest) *idempotency.Record {
	t.Helper()
	res, err := s.Claim(context.Background(), req)
	if err != nil {
		t.Fatalf("Claim(%q): %v", req.Key, err)
	}
	if res.Claimed {
		t.Fatalf("Claim(%q) claimed, want blocked by the existing record", req.Key)
	}
	if res.Existing == nil {
		t.Fatalf("Claim(%q) blocked but returned no existing record", req.Key)
	}
	return res.Existing
}

func testClaimFresh(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	rec, err := s.Lookup(context.Background(), req.Key, t0)
	if err != nil {
		t.Fatalf("Lookup after claim: %v", err)
	}
	if rec.State != idempotency.StateInProgress || rec.Token != req.Token || rec.Fingerprint != req.Fingerprint {
		t.Fatalf("record after claim = %+v, want in_progress with token %d", rec, req.Token)
	}
	if !rec.LeaseUntil.Equal(req.LeaseUntil) || !rec.ExpiresAt.Equal(req.ExpiresAt) {
		t.Fatalf("times after claim: lease %v expires %v, want %v %v", rec.LeaseUntil, rec.ExpiresAt, req.LeaseUntil, req.ExpiresAt)
	}
	if rec.Key != req.Key {
		t.Fatalf("record key %q, want %q", rec.Key, req.Key)
	}
}

func testClaimBlocked(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	first := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, first)
	second := claimReq(first.Key, fpOf("y"), t0.Add(time.Second))
	ex := mustBlock(t, s, second)
	if ex.State != idempotency.StateInProgress || ex.Token != first.Token || ex.Fingerprint != first.Fingerprint {
		t.Fatalf("existing = %+v, want the first claim (token %d, its fingerprint)", ex, first.Token)
	}
}

func sampleResponse() idempotency.Response {
	body := make([]byte, 300)
	for i := range body {
		body[i] = byte(i) // includes NUL and invalid UTF-8
	}
	return idempotency.Response{
		Status: 201,
		Header: http.Header{"Content-Type": {"application/json"}, "Link": {"<a>; rel=x", "<b>; rel=y"}},
		Body:   body,
	}
}

func equalResponse(a, b *idempotency.Response) error {
	if a.Status != b.Status || a.BodyOmitted != b.BodyOmitted {
		return fmt.Errorf("status/omitted %d/%v, want %d/%v", a.Status, a.BodyOmitted, b.Status, b.BodyOmitted)
	}
	if !bytes.Equal(a.Body, b.Body) {
		return fmt.Errorf("body differs (%d bytes, want %d)", len(a.Body), len(b.Body))
	}
	if len(a.Header) != len(b.Header) {
		return fmt.Errorf("header %v, want %v", a.Header, b.Header)
	}
	for k, vs := range b.Header {
		got := a.Header[k]
		if strings.Join(got, "\x00") != strings.Join(vs, "\x00") || len(got) != len(vs) {
			return fmt.Errorf("header %s = %q, want %q", k, got, vs)
		}
	}
	return nil
}

func testCompleteReplay(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	want := sampleResponse()
	if err := s.Complete(ctx, req.Key, req.Token, want, t0, t0.Add(48*time.Hour)); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0.Add(time.Hour)))
	if ex.State != idempotency.StateCompleted || ex.Response == nil {
		t.Fatalf("after complete: %+v, want completed with a response", ex)
	}
	if err := equalResponse(ex.Response, &want); err != nil {
		t.Fatalf("replayed response: %v", err)
	}
	if !ex.ExpiresAt.Equal(t0.Add(48 * time.Hour)) {
		t.Fatalf("ExpiresAt = %v, want the one given to Complete", ex.ExpiresAt)
	}
	rec, err := s.Lookup(ctx, req.Key, t0.Add(time.Hour))
	if err != nil || rec.Response == nil {
		t.Fatalf("Lookup: %+v, %v", rec, err)
	}
	if err := equalResponse(rec.Response, &want); err != nil {
		t.Fatalf("looked-up response: %v", err)
	}
}

func testEmptyBodies(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	for i, want := range []idempotency.Response{
		{Status: 204},
		{Status: 200, Body: []byte{}},
		{Status: 202, BodyOmitted: true, Header: http.Header{"Location": {"/x"}}},
	} {
		req := claimReq(k.key(fmt.Sprint(i)), fpOf("x"), t0)
		mustClaim(t, s, req)
		if err := s.Complete(ctx, req.Key, req.Token, want, t0, t0.Add(time.Hour)); err != nil {
			t.Fatalf("Complete: %v", err)
		}
		ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0))
		if err := equalResponse(ex.Response, &want); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
	}
}

func testLargeResponse(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	want := idempotency.Response{Status: 200, Body: bytes.Repeat([]byte("0123456789abcdef"), 64<<10)} // 1 MiB
	if err := s.Complete(context.Background(), req.Key, req.Token, want, t0, t0.Add(time.Hour)); err != nil {
		t.Fatalf("Complete 1 MiB: %v", err)
	}
	ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0))
	if err := equalResponse(ex.Response, &want); err != nil {
		t.Fatal(err)
	}
}

func testFencedComplete(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	if err := s.Complete(ctx, req.Key, req.Token+1, sampleResponse(), t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Complete with a wrong token = %v, want ErrFenced", err)
	}
	if err := s.Complete(ctx, k.key("missing"), req.Token, sampleResponse(), t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Complete of a missing key = %v, want ErrFenced", err)
	}
	ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0))
	if ex.State != idempotency.StateInProgress || ex.Token != req.Token {
		t.Fatalf("a fenced Complete changed the record: %+v", ex)
	}
	if err := s.Complete(ctx, req.Key, req.Token, sampleResponse(), t0, t0.Add(time.Hour)); err != nil {
		t.Fatalf("Complete with the right token: %v", err)
	}
	if err := s.Complete(ctx, req.Key, req.Token, idempotency.Response{Status: 500}, t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("second Complete = %v, want ErrFenced", err)
	}
}

func testRelease(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	if err := s.Release(ctx, req.Key, req.Token+1); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Release with a wrong token = %v, want ErrFenced", err)
	}
	if rec, err := s.Lookup(ctx, req.Key, t0); err != nil || rec.Token != req.Token {
		t.Fatalf("record after a fenced Release: %+v, %v", rec, err)
	}
	if err := s.Release(ctx, req.Key, req.Token); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := s.Lookup(ctx, req.Key, t0); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup after Release = %v, want ErrNotFound", err)
	}
	if err := s.Release(ctx, req.Key, req.Token); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("second Release = %v, want ErrFenced", err)
	}
	again := claimReq(req.Key, fpOf("other body is fine after release"), t0.Add(time.Second))
	mustClaim(t, s, again)
	if err := s.Complete(ctx, req.Key, req.Token, sampleResponse(), t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("old token completing the new claim = %v, want ErrFenced", err)
	}
}

func testTakeover(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	stale := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, stale)
	// Just before the lease ends the claim still blocks.
	mustBlock(t, s, claimReq(stale.Key, stale.Fingerprint, stale.LeaseUntil.Add(-time.Millisecond)))
	// At the lease end it can be taken over.
	fresh := claimReq(stale.Key, stale.Fingerprint, stale.LeaseUntil)
	mustClaim(t, s, fresh)
	if err := s.Renew(ctx, stale.Key, stale.Token, fresh.Now, fresh.Now.Add(time.Hour), fresh.Now.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("stale Renew = %v, want ErrFenced", err)
	}
	if err := s.Complete(ctx, stale.Key, stale.Token, idempotency.Response{Status: 299}, t0, t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("stale Complete = %v, want ErrFenced", err)
	}
	if err := s.Release(ctx, stale.Key, stale.Token); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("stale Release = %v, want ErrFenced", err)
	}
	want := sampleResponse()
	if err := s.Complete(ctx, fresh.Key, fresh.Token, want, t0, t0.Add(time.Hour)); err != nil {
		t.Fatalf("new holder Complete: %v", err)
	}
	ex := mustBlock(t, s, claimReq(stale.Key, stale.Fingerprint, fresh.Now))
	if err := equalResponse(ex.Response, &want); err != nil {
		t.Fatalf("stored response is not the new holder's: %v", err)
	}
}

func testRenew(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	newLease := req.LeaseUntil.Add(time.Minute)
	if err := s.Renew(ctx, req.Key, req.Token, t0, newLease, req.ExpiresAt); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, req.LeaseUntil.Add(time.Second)))
	if !ex.LeaseUntil.Equal(newLease) {
		t.Fatalf("LeaseUntil = %v, want %v", ex.LeaseUntil, newLease)
	}
	mustClaim(t, s, claimReq(req.Key, req.Fingerprint, newLease))
	if err := s.Renew(ctx, k.key("missing"), 1, t0, newLease, newLease); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Renew of a missing key = %v, want ErrFenced", err)
	}
}

// A holder that keeps renewing past the original retention keeps its
// record: it must not expire (and be claimed by a duplicate) mid-run.
func testRenewExtendsRetention(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0) // lease 30s, retention 24h
	req.ExpiresAt = t0.Add(time.Hour)
	mustClaim(t, s, req)
	now := t0.Add(50 * time.Minute)
	if err := s.Renew(ctx, req.Key, req.Token, now, t0.Add(2*time.Hour), t0.Add(2*time.Hour)); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	later := t0.Add(90 * time.Minute) // past the original retention
	rec, err := s.Lookup(ctx, req.Key, later)
	if err != nil || rec.Token != req.Token || !rec.ExpiresAt.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("Lookup past the original retention: %+v, %v; want the renewed record", rec, err)
	}
	mustBlock(t, s, claimReq(req.Key, req.Fingerprint, later))
	if err := s.Complete(ctx, req.Key, req.Token, sampleResponse(), later, later.Add(time.Hour)); err != nil {
		t.Fatalf("Complete after the renewal: %v", err)
	}
}

func testRenewAfterComplete(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	if err := s.Complete(ctx, req.Key, req.Token, sampleResponse(), t0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Renew(ctx, req.Key, req.Token, t0, t0.Add(time.Minute), t0.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Renew after Complete = %v, want ErrFenced", err)
	}
	if err := s.Release(ctx, req.Key, req.Token); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Release after Complete = %v, want ErrFenced", err)
	}
	ex := mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0))
	if ex.State != idempotency.StateCompleted {
		t.Fatalf("state = %v, want completed", ex.State)
	}
}

func testCompletedStays(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	if err := s.Complete(context.Background(), req.Key, req.Token, sampleResponse(), t0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Long after the lease, before retention ends: still a replay.
	mustBlock(t, s, claimReq(req.Key, req.Fingerprint, t0.Add(59*time.Minute)))
}

func testRetention(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	req := claimReq(k.key("a"), fpOf("x"), t0)
	mustClaim(t, s, req)
	exp := t0.Add(time.Hour)
	if err := s.Complete(ctx, req.Key, req.Token, sampleResponse(), t0, exp); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, req.Key, exp.Add(-time.Millisecond)); err != nil {
		t.Fatalf("Lookup just before expiry: %v", err)
	}
	if _, err := s.Lookup(ctx, req.Key, exp); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup at expiry = %v, want ErrNotFound (retention is checked logically)", err)
	}
	again := claimReq(req.Key, fpOf("a different body after expiry"), exp)
	mustClaim(t, s, again)
	// An in-progress record also expires logically, lease or not.
	k2 := claimReq(k.key("b"), fpOf("x"), t0)
	k2.LeaseUntil = t0.Add(10 * time.Hour)
	k2.ExpiresAt = t0.Add(time.Hour)
	mustClaim(t, s, k2)
	mustClaim(t, s, claimReq(k2.Key, k2.Fingerprint, k2.ExpiresAt))
}

func testLookup(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	if _, err := s.Lookup(context.Background(), k.key("none"), t0); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup of a missing key = %v, want ErrNotFound", err)
	}
}

// testKeyPrefix checks HasKeyPrefix, a store's optional answer to "is any
// record's key under this prefix?" (the gateway's webhook dedupe transition
// asks it), where the store implements it.
func testKeyPrefix(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	p, ok := s.(interface {
		HasKeyPrefix(ctx context.Context, prefix string) (bool, error)
	})
	if !ok {
		t.Skipf("%T has no HasKeyPrefix (optional)", s)
	}
	ctx := context.Background()
	has := func(prefix string, want bool) {
		t.Helper()
		got, err := p.HasKeyPrefix(ctx, prefix)
		if err != nil || got != want {
			t.Fatalf("HasKeyPrefix(%q) = %v, %v; want %v", prefix, got, err, want)
		}
	}
	has(k.key(""), false)
	mustClaim(t, s, claimReq(k.key("src:0a"), fpOf("x"), t0))
	for _, p := range []string{"", "s", "src", "src:", "src:0", "src:0a"} {
		has(k.key(p), true)
	}
	// Neighbours on either side of the key, and longer prefixes.
	for _, p := range []string{"src:0a0", "src:0b", "src;", "srd", "sra", "src:1", "t"} {
		has(k.key(p), false)
	}
	// Prefixes ending in the last ASCII byte and in a multi-byte character
	// (a byte-wise "next prefix" of either is not valid UTF-8).
	mustClaim(t, s, claimReq(k.key("u\x7fz"), fpOf("x"), t0))
	mustClaim(t, s, claimReq(k.key("v\u00ffz"), fpOf("x"), t0))
	has(k.key("u\x7f"), true)
	has(k.key("v\u00ff"), true)
	has(k.key("v\u00fe"), false)
	has(k.key("v\u0100"), false)
	// A record whose retention ended but that is not deleted yet counts.
	old := claimReq(k.key("old:1"), fpOf("x"), t0.Add(-2*time.Hour))
	old.LeaseUntil, old.ExpiresAt = t0.Add(-90*time.Minute), t0.Add(-time.Hour)
	mustClaim(t, s, old)
	has(k.key("old:"), true)
}

func testConcurrentClaims(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	const n = 50
	key := k.key("a")
	var won atomic.Int32
	var winner atomic.Uint64
	tokens := make([]uint64, n)
	existing := make([]*idempotency.Record, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req := claimReq(key, fpOf("x"), t0)
			tokens[i] = req.Token
			res, err := s.Claim(context.Background(), req)
			if err != nil {
				t.Errorf("Claim: %v", err)
				return
			}
			if res.Claimed {
				won.Add(1)
				winner.Store(req.Token)
			} else {
				existing[i] = res.Existing
			}
		}()
	}
	close(start)
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d of %d concurrent claims won, want exactly 1", won.Load(), n)
	}
	for i, ex := range existing {
		if ex != nil && ex.Token != winner.Load() {
			t.Fatalf("loser %d saw token %d, want the winner's %d", i, ex.Token, winner.Load())
		}
	}
}

func testOddKeys(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx := context.Background()
	for _, name := range []string{"{tag}", "a:b:c", "with space", "ü-ñícode", "quote'\"", strings.Repeat("x", 600)} {
		req := claimReq(k.key(name), fpOf(name), t0)
		mustClaim(t, s, req)
		rec, err := s.Lookup(ctx, req.Key, t0)
		if err != nil || rec.Fingerprint != req.Fingerprint {
			t.Fatalf("key %q: %+v, %v", name, rec, err)
		}
	}
}

func testCanceled(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Claim(ctx, claimReq(k.key("a"), fpOf("x"), t0)); err == nil {
		t.Fatal("Claim with a canceled context succeeded, want an error")
	}
}

// ---- engine and middleware over the store ----

type upstream struct {
	calls   atomic.Int64
	status  atomic.Int64
	gate    chan struct{} // when non-nil, each call waits for it
	entered chan struct{} // when non-nil, receives once per call
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := u.calls.Add(1)
	if u.entered != nil {
		u.entered <- struct{}{}
	}
	if u.gate != nil {
		<-u.gate
	}
	body, _ := io.ReadAll(r.Body)
	st := int(u.status.Load())
	if st == 0 {
		st = http.StatusCreated
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Not-Stored", "1")
	w.WriteHeader(st)
	fmt.Fprintf(w, `{"charge":%d,"tenant":%q,"echo":%q}`, n, r.Header.Get("Authorization"), body)
}

type client struct {
	t *testing.T
	h http.Handler
}

type reply struct {
	status   int
	body     string
	replayed bool
	retry    string
	ctype    string
}

func (c client) post(key, body string, hdr ...string) reply {
	req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	c.h.ServeHTTP(w, req)
	return reply{w.Code, w.Body.String(), w.Header().Get("Idempotent-Replayed") == "true", w.Header().Get("Retry-After"), w.Header().Get("Content-Type")}
}

func newEngine(s idempotency.Store, clk *fakeclock.Clock, o idempotency.Options) *idempotency.Engine {
	if clk != nil {
		o.Now = clk.Now
	}
	return idempotency.New(s, o)
}

func mw(e *idempotency.Engine, u http.Handler) http.Handler {
	return e.Middleware(idempotency.HTTPOptions{Scope: "charges", TenantHeader: "Authorization"})(u)
}

func testHTTPConcurrent(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	u := &upstream{gate: make(chan struct{})}
	c := client{t, mw(newEngine(s, nil, idempotency.Options{}), u)}
	const n = 50
	replies := make([]reply, n)
	var conflicts atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i] = c.post(k.key("k"), `{"amount":100}`)
			if replies[i].status == http.StatusConflict {
				conflicts.Add(1)
			}
		}()
	}
	// Let the 49 duplicates meet the in-flight claim, then release the winner.
	waitFor(t, func() bool { return conflicts.Load() >= n-1 || u.calls.Load() > 1 })
	close(u.gate)
	wg.Wait()
	if got := u.calls.Load(); got != 1 {
		t.Fatalf("upstream executed %d times for %d identical concurrent requests, want 1", got, n)
	}
	if countStatus(replies, http.StatusCreated) != 1 || countStatus(replies, http.StatusConflict) != n-1 {
		t.Fatalf("want one 201 and %d 409s, got %v", n-1, statuses(replies))
	}
	for _, r := range replies {
		if r.status == http.StatusConflict && (r.retry == "" || r.ctype != "application/problem+json") {
			t.Fatalf("409 without Retry-After or problem+json: %+v", r)
		}
	}
	again := c.post(k.key("k"), `{"amount":100}`)
	if !again.replayed || again.status != http.StatusCreated || again.body != replies[indexOf(replies, 201)].body {
		t.Fatalf("retry after completion = %+v, want the byte-identical 201 replayed", again)
	}
}

func testHTTPConcurrentWait(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	u := &upstream{entered: make(chan struct{}, 100), gate: make(chan struct{})}
	e := newEngine(s, nil, idempotency.Options{InFlightWait: 20 * time.Second, PollInterval: 5 * time.Millisecond})
	c := client{t, mw(e, u)}
	const n = 50
	replies := make([]reply, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); replies[i] = c.post(k.key("k"), `{"amount":100}`) }()
	}
	<-u.entered
	close(u.gate)
	wg.Wait()
	if got := u.calls.Load(); got != 1 {
		t.Fatalf("upstream executed %d times, want 1", got)
	}
	first := replies[0].body
	for i, r := range replies {
		if r.status != http.StatusCreated || r.body != first {
			t.Fatalf("reply %d = %+v, want every waiter to get the same 201", i, r)
		}
	}
	if n := countReplayed(replies); n != 49 {
		t.Fatalf("%d replies marked replayed, want 49", n)
	}
}

func testHTTPReplicas(t *testing.T, h Harness, k keys) {
	s1 := h.NewStore(t)
	s2 := h.Replica(t, s1)
	u := &upstream{}
	o := idempotency.Options{InFlightWait: 20 * time.Second, PollInterval: 5 * time.Millisecond}
	a := client{t, mw(newEngine(s1, nil, o), u)}
	b := client{t, mw(newEngine(s2, nil, o), u)}
	const n = 50
	replies := make([]reply, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a
			if i%2 == 1 {
				c = b
			}
			replies[i] = c.post(k.key("k"), `{"amount":7}`)
		}()
	}
	wg.Wait()
	if got := u.calls.Load(); got != 1 {
		t.Fatalf("two replicas executed %d times, want 1", got)
	}
	for i, r := range replies {
		if r.status != http.StatusCreated || r.body != replies[0].body {
			t.Fatalf("reply %d = %+v, want the single 201", i, r)
		}
	}
}

func testHTTPMismatchFirst(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	u := &upstream{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	c := client{t, mw(newEngine(s, nil, idempotency.Options{}), u)}
	done := make(chan reply)
	go func() { done <- c.post(k.key("k"), `{"amount":1}`) }()
	<-u.entered
	if r := c.post(k.key("k"), `{"amount":2}`); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("different body while in flight = %d, want 422", r.status)
	}
	if r := c.post(k.key("k"), `{ "amount" : 1 }`); r.status != http.StatusConflict {
		t.Fatalf("same body (reformatted) while in flight = %d, want 409", r.status)
	}
	close(u.gate)
	if r := <-done; r.status != http.StatusCreated {
		t.Fatalf("first request = %+v", r)
	}
	if r := c.post(k.key("k"), `{"amount":2}`); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("different body after completion = %d, want 422", r.status)
	}
	if u.calls.Load() != 1 {
		t.Fatalf("upstream ran %d times, want 1", u.calls.Load())
	}
}

func testHTTPTenants(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	u := &upstream{}
	c := client{t, mw(newEngine(s, nil, idempotency.Options{}), u)}
	a := c.post(k.key("k"), `{"amount":1}`, "Authorization", "Bearer tenant-a")
	b := c.post(k.key("k"), `{"amount":1}`, "Authorization", "Bearer tenant-b")
	if a.replayed || b.replayed || u.calls.Load() != 2 {
		t.Fatalf("two tenants with one key: calls=%d, a=%+v b=%+v; want two executions", u.calls.Load(), a, b)
	}
	if !strings.Contains(b.body, "tenant-b") || strings.Contains(b.body, "tenant-a") {
		t.Fatalf("tenant B received %q", b.body)
	}
	b2 := c.post(k.key("k"), `{"amount":1}`, "Authorization", "Bearer tenant-b")
	if !b2.replayed || b2.body != b.body {
		t.Fatalf("tenant B retry = %+v, want B's own replay", b2)
	}
}

func testHTTPCrash(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	clk := fakeclock.New(time.Now())
	o := idempotency.Options{Lease: 10 * time.Second, RenewEvery: -1}
	crashed := newEngine(s, clk, o)
	key := idempotency.ScopedKey("charges", "", k.key("k"))
	req := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{"amount":5}`))
	req.Header.Set("Content-Type", "application/json")
	fp := idempotency.FingerprintRequest(req, []byte(`{"amount":5}`), nil)
	lease, _, err := crashed.Begin(context.Background(), key, fp)
	if err != nil || lease == nil {
		t.Fatalf("Begin: %v", err)
	}
	// The holder dies here. A retry on another replica within the lease is refused...
	u := &upstream{}
	c := client{t, mw(newEngine(h.Replica(t, s), clk, o), u)}
	if r := c.post(k.key("k"), `{"amount":5}`); r.status != http.StatusConflict || u.calls.Load() != 0 {
		t.Fatalf("retry within the lease = %d (calls %d), want 409 and no execution", r.status, u.calls.Load())
	}
	// ...and executes exactly once after it.
	clk.Advance(10 * time.Second)
	r := c.post(k.key("k"), `{"amount":5}`)
	if r.status != http.StatusCreated || u.calls.Load() != 1 {
		t.Fatalf("retry after the lease = %d (calls %d), want 201 executed once", r.status, u.calls.Load())
	}
	// The dead holder wakes up and tries to record its stale result.
	if err := lease.Complete(context.Background(), idempotency.Response{Status: 200, Body: []byte("stale")}); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("stale holder's Complete = %v, want ErrFenced", err)
	}
	if again := c.post(k.key("k"), `{"amount":5}`); !again.replayed || again.body != r.body || u.calls.Load() != 1 {
		t.Fatalf("after the stale write: %+v, want the new holder's replay", again)
	}
}

func testHTTPExpiry(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	clk := fakeclock.New(time.Now())
	u := &upstream{}
	c := client{t, mw(newEngine(s, clk, idempotency.Options{Retention: time.Hour}), u)}
	c.post(k.key("k"), `{}`)
	clk.Advance(time.Hour - time.Second)
	if r := c.post(k.key("k"), `{}`); !r.replayed {
		t.Fatalf("within retention: %+v, want replay", r)
	}
	clk.Advance(time.Second)
	if r := c.post(k.key("k"), `{}`); r.replayed || u.calls.Load() != 2 {
		t.Fatalf("after retention: %+v calls=%d, want a fresh execution", r, u.calls.Load())
	}
}

func testHTTPFailurePolicy(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	for _, tc := range []struct {
		status int
		stored bool
	}{{500, false}, {503, false}, {429, false}, {409, false}, {408, false}, {425, false}, {400, true}, {404, true}, {200, true}, {302, true}} {
		u := &upstream{}
		u.status.Store(int64(tc.status))
		c := client{t, mw(newEngine(s, nil, idempotency.Options{}), u)}
		key := k.key(fmt.Sprint(tc.status))
		first := c.post(key, `{}`)
		second := c.post(key, `{}`)
		if first.status != tc.status || second.status != tc.status {
			t.Fatalf("status %d: got %d then %d", tc.status, first.status, second.status)
		}
		wantCalls := int64(2)
		if tc.stored {
			wantCalls = 1
		}
		if u.calls.Load() != wantCalls || second.replayed != tc.stored {
			t.Fatalf("status %d: %d executions (replayed=%v), want %d", tc.status, u.calls.Load(), second.replayed, wantCalls)
		}
	}
	// A panic releases the claim too.
	var calls atomic.Int64
	panicky := mw(newEngine(s, nil, idempotency.Options{}), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		w.WriteHeader(http.StatusCreated)
	}))
	c := client{t, panicky}
	func() {
		defer func() { _ = recover() }()
		c.post(k.key("panic"), `{}`)
	}()
	if r := c.post(k.key("panic"), `{}`); r.status != http.StatusCreated || calls.Load() != 2 {
		t.Fatalf("retry after a panic = %d (calls %d), want a fresh 201", r.status, calls.Load())
	}
}

func testHTTPRenewal(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	clk := fakeclock.New(time.Now())
	// Retention equal to the lease: without renewal extending retention
	// too, the record would expire under its running holder.
	o := idempotency.Options{Lease: time.Minute, Retention: time.Minute, RenewEvery: 5 * time.Millisecond}
	key := idempotency.ScopedKey("charges", "", k.key("k"))
	var leaseSeen time.Time
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := clk.Now()
		clk.Advance(50 * time.Second)
		// Wait for a renewal to land: the lease moves past start+1m.
		waitFor(t, func() bool {
			rec, err := s.Lookup(context.Background(), key, clk.Now())
			if err == nil && rec.LeaseUntil.After(start.Add(time.Minute)) {
				leaseSeen = rec.LeaseUntil
				return true
			}
			return false
		})
		clk.Advance(50 * time.Second) // past the original lease
		// Another replica may not take the key over: the lease was renewed.
		res, err := h.Replica(t, s).Claim(context.Background(), claimReq(key, idempotency.Fingerprint{}, clk.Now()))
		if err != nil || res.Claimed {
			t.Errorf("claim by another replica while renewed: claimed=%v err=%v", res.Claimed, err)
		}
		w.WriteHeader(http.StatusCreated)
	})
	c := client{t, mw(newEngine(s, clk, o), slow)}
	if r := c.post(k.key("k"), `{}`); r.status != http.StatusCreated {
		t.Fatalf("slow request = %+v", r)
	}
	if leaseSeen.IsZero() {
		t.Fatal("lease was never renewed")
	}
}

func testRoundTrips(t *testing.T, h Harness, k keys) {
	s := h.NewStore(t)
	u := &upstream{}
	c := client{t, mw(newEngine(s, nil, idempotency.Options{RenewEvery: -1}), u)}
	before := h.RoundTrips(s)
	c.post(k.key("k"), `{"a":1}`)
	newCost := h.RoundTrips(s) - before
	before = h.RoundTrips(s)
	if r := c.post(k.key("k"), `{"a":1}`); !r.replayed {
		t.Fatalf("second request not replayed: %+v", r)
	}
	replayCost := h.RoundTrips(s) - before
	if newCost > h.NewRequestRoundTrips || newCost < 1 {
		t.Fatalf("a new request cost %d round trips, want at most %d", newCost, h.NewRequestRoundTrips)
	}
	if replayCost != h.ReplayRoundTrips {
		t.Fatalf("a replay cost %d round trips, want %d", replayCost, h.ReplayRoundTrips)
	}
}

// waitFor polls cond for up to 10 s (a correctness bound, not a speed
// assertion) and fails the test if it never holds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	poll.Until(t, 10*time.Second, cond, "condition not reached")
}

func countStatus(rs []reply, code int) int {
	n := 0
	for _, r := range rs {
		if r.status == code {
			n++
		}
	}
	return n
}

func countReplayed(rs []reply) int {
	n := 0
	for _, r := range rs {
		if r.replayed {
			n++
		}
	}
	return n
}

func indexOf(rs []reply, code int) int {
	for i, r := range rs {
		if r.status == code {
			return i
		}
	}
	return 0
}

func statuses(rs []reply) []int {
	out := make([]int, len(rs))
	for i, r := range rs {
		out[i] = r.status
	}
	return out
}
