package gateway

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/memory"
)

// lookupFails is a store whose Lookup fails after the first n calls.
type lookupFails struct {
	idempotency.Store
	n int
}

var errStoreDown = errors.New("store down")

func (s *lookupFails) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	if s.n <= 0 {
		return nil, errStoreDown
	}
	s.n--
	return s.Store.Lookup(ctx, key, now)
}

// claimFails is a store whose Claim fails.
type claimFails struct{ idempotency.Store }

func (claimFails) Claim(context.Context, idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, errStoreDown
}

// A failing idempotency store never makes the transition call an event
// seen: the webhook is refused (503, the provider retries) rather than
// answered "duplicate" and dropped. That holds whether the marker cannot
// be read (then nothing is cached: the next event reads it again) or the
// event's lookup fails.
func TestLegacyDedupeStoreErrorIsNeverSeen(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	l := &legacyDedupe{st: claimFails{memory.New(memory.Options{})}, route: "r", retention: time.Hour}
	if seen, err := l.seen(ctx, "levee:webhook:r:x", now); seen || !errors.Is(err, errStoreDown) {
		t.Fatalf("marker unreadable: seen %v, %v; want not seen and the store's error", seen, err)
	}
	if l.until.Load() != 0 {
		t.Fatal("a failed marker read was cached")
	}
	st := &lookupFails{Store: memory.New(memory.Options{})}
	l = &legacyDedupe{st: st, route: "r", retention: time.Hour}
	if seen, err := l.seen(ctx, "levee:webhook:r:x", now); seen || !errors.Is(err, errStoreDown) {
		t.Fatalf("lookup failing: seen %v, %v; want not seen and the store's error", seen, err)
	}
	if l.until.Load() == 0 {
		t.Fatal("the marker, written through Claim, was not read")
	}
}
