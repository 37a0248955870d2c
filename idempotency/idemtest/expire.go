package idemtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
)

// Expirer is a Store that deletes the records whose retention ended
// (store/sqlite, store/postgres; the gateway calls it periodically).
type Expirer interface {
	idempotency.Store
	DeleteExpired(ctx context.Context, now time.Time, limit int) (int64, error)
}

// RunDeleteExpired checks DeleteExpired. It deletes store-wide, so each
// store newStore returns must hold no other test's records (unlike Run's,
// which may share a backend).
func RunDeleteExpired(t *testing.T, newStore func(t testing.TB) Expirer) {
	t.Run("OnlyTheExpiredInChunks", func(t *testing.T) {
		t.Parallel()
		testDeleteExpired(t, newStore(t))
	})
	t.Run("KeepsALiveLease", func(t *testing.T) {
		t.Parallel()
		testDeleteExpiredLiveLease(t, newStore(t))
	})
}

// testDeleteExpired: expired records go, oldest first, limit at a time;
// live ones stay and replay; a deleted in-progress record's holder is
// fenced; a limit of 0 or less means no limit.
func testDeleteExpired(t *testing.T, s Expirer) {
	ctx := context.Background()
	// Five records expiring at t0+1m..t0+5m: three completed, two in progress.
	tokens := map[string]uint64{}
	for i := 1; i <= 5; i++ {
		req := claimReq(fmt.Sprintf("k%d", i), fpOf("x"), t0)
		req.ExpiresAt = t0.Add(time.Duration(i) * time.Minute)
		req.LeaseUntil = req.ExpiresAt
		mustClaim(t, s, req)
		tokens[req.Key] = req.Token
		if i%2 == 1 {
			if err := s.Complete(ctx, req.Key, req.Token, idempotency.Response{Status: 201}, t0, req.ExpiresAt); err != nil {
				t.Fatal(err)
			}
		}
	}
	now := t0.Add(4 * time.Minute) // k1..k4 expired (expiry is inclusive), k5 live
	if n, err := s.DeleteExpired(ctx, t0, 0); err != nil || n != 0 {
		t.Fatalf("DeleteExpired before any expiry = %d, %v; want 0", n, err)
	}
	var total int64
	for _, want := range []int64{3, 1, 0} {
		n, err := s.DeleteExpired(ctx, now, 3)
		if err != nil || n != want {
			t.Fatalf("DeleteExpired(limit 3) = %d, %v; want %d", n, err, want)
		}
		total += n
	}
	if total != 4 {
		t.Fatalf("deleted %d, want 4", total)
	}
	if rec, err := s.Lookup(ctx, "k5", now); err != nil || rec.State != idempotency.StateCompleted {
		t.Fatalf("live record after DeleteExpired: %+v, %v", rec, err)
	}
	if err := s.Complete(ctx, "k4", tokens["k4"], idempotency.Response{Status: 200}, now, now.Add(time.Hour)); !errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Complete of a deleted record = %v, want ErrFenced", err)
	}
	if res, err := s.Claim(ctx, claimReq("k5", fpOf("x"), now)); err != nil || res.Claimed || res.Existing == nil || res.Existing.Response == nil || res.Existing.Response.Status != 201 {
		t.Fatalf("Claim of live k5 = %+v, %v; want its stored response", res, err)
	}
	// A limit of 0 or less: everything expired at once.
	for _, k := range []string{"k6", "k7"} {
		req := claimReq(k, fpOf("x"), t0)
		req.LeaseUntil, req.ExpiresAt = t0.Add(time.Minute), t0.Add(time.Hour)
		mustClaim(t, s, req)
	}
	if n, err := s.DeleteExpired(ctx, t0.Add(2*time.Hour), 0); err != nil || n != 3 {
		t.Fatalf("DeleteExpired(limit 0) = %d, %v; want 3 (k5, k6, k7)", n, err)
	}
	req := claimReq("k8", fpOf("x"), t0)
	req.LeaseUntil, req.ExpiresAt = t0.Add(time.Minute), t0.Add(time.Hour)
	mustClaim(t, s, req)
	if n, err := s.DeleteExpired(ctx, t0.Add(2*time.Hour), -1); err != nil || n != 1 {
		t.Fatalf("DeleteExpired(limit -1) = %d, %v; want 1", n, err)
	}
}

// testDeleteExpiredLiveLease: a claim whose retention ended while its lease
// still runs (retention shorter than the lease, as a consumer's may be) is
// not deleted under its holder, whose Complete then succeeds; once the
// completed record's retention ends it goes.
func testDeleteExpiredLiveLease(t *testing.T, s Expirer) {
	ctx := context.Background()
	req := claimReq("held", fpOf("x"), t0)
	req.LeaseUntil, req.ExpiresAt = t0.Add(time.Hour), t0.Add(time.Minute)
	mustClaim(t, s, req)
	if n, err := s.DeleteExpired(ctx, t0.Add(10*time.Minute), 0); err != nil || n != 0 {
		t.Fatalf("DeleteExpired under a live lease = %d, %v; want 0", n, err)
	}
	if err := s.Complete(ctx, "held", req.Token, idempotency.Response{Status: 200}, t0.Add(10*time.Minute), t0.Add(20*time.Minute)); err != nil {
		t.Fatalf("Complete by the holder after DeleteExpired spared it: %v", err)
	}
	if n, err := s.DeleteExpired(ctx, t0.Add(30*time.Minute), 0); err != nil || n != 1 {
		t.Fatalf("DeleteExpired after the completed record's retention = %d, %v; want 1", n, err)
	}
}
