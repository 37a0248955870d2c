package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/sqlite"
)

// TestClaimReadsFirstOnlyForKeysSeen: a key the Store has not seen goes
// straight to the writer (one transaction, no read first); once seen, a
// replay is one read and never a write. A key completed by another Store
// on the same file (never seen by this one) is still found: the writer's
// insert conflicts and returns the record read under the write lock, and
// from then on this Store answers it with a read too.
func TestClaimReadsFirstOnlyForKeysSeen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "recent.db")
	a, b := open(t, path, sqlite.Options{}), open(t, path, sqlite.Options{})
	ctx := context.Background()
	now := time.Now()
	fp := idempotency.FingerprintOf([]byte("body"))
	req := func(key string) idempotency.ClaimRequest {
		return idempotency.ClaimRequest{Key: key, Fingerprint: fp, Token: idempotency.NewToken(), Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	}
	trips := func(s *sqlite.Store, f func()) int64 {
		before := s.RoundTrips()
		f()
		return s.RoundTrips() - before
	}

	r1 := req("new")
	if n := trips(a, func() {
		if res, err := a.Claim(ctx, r1); err != nil || !res.Claimed {
			t.Fatalf("claim of a new key: %+v, %v", res, err)
		}
	}); n != 1 {
		t.Fatalf("a new key's claim took %d transactions, want 1 (the writer's, no read first)", n)
	}
	if err := a.Complete(ctx, "new", r1.Token, idempotency.Response{Status: 201, Body: []byte("done")}, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*sqlite.Store{a, b} {
		if n := trips(s, func() {
			res, err := s.Claim(ctx, req("new"))
			if err != nil || res.Claimed || res.Existing == nil || res.Existing.State != idempotency.StateCompleted ||
				res.Existing.Response == nil || string(res.Existing.Response.Body) != "done" {
				t.Fatalf("replay: %+v, %v; want the completed record", res, err)
			}
		}); s == a && n != 1 {
			t.Fatalf("a replay of a key this store completed took %d transactions, want 1 read", n)
		}
	}
	// b found the record through its writer; now it has seen the key.
	if n := trips(b, func() {
		if res, err := b.Claim(ctx, req("new")); err != nil || res.Existing == nil {
			t.Fatalf("second replay on the other store: %+v, %v", res, err)
		}
	}); n != 1 {
		t.Fatalf("a replay of a key this store has seen took %d transactions, want 1 read", n)
	}
}
