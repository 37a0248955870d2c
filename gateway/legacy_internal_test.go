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

// The probe of the transition (mayHold): one at a time, an event arriving
// meanwhile is looked up; a failed probe means lookups without probing for
// legacyProbeRetry; a probe that found nothing lets events skip the lookup
// until every has passed, then probes again; one that found a
// record turns every lookup on and is not asked again.
func TestLegacyProbe(t *testing.T) {
	ctx := context.Background()
	var calls int
	var answer bool
	var fail error
	block, inProbe := make(chan struct{}), make(chan struct{})
	l := &legacyDedupe{}
	l.every.Store(int64(defaultLegacyProbeEvery))
	l.probe = func(context.Context) (bool, error) {
		calls++
		if block != nil {
			close(inProbe)
			<-block
		}
		return answer, fail
	}
	t0 := time.Now()
	// A probe in flight: another event is looked up at once.
	done := make(chan bool)
	go func() { done <- l.mayHold(ctx, t0) }()
	<-inProbe
	if !l.mayHold(ctx, t0) {
		t.Fatal("an event arriving during a probe skipped the lookup")
	}
	close(block)
	if <-done {
		t.Fatal("a probe that found nothing did not skip the lookup")
	}
	block = nil
	every := defaultLegacyProbeEvery
	if l.mayHold(ctx, t0.Add(every/2)) || calls != 1 {
		t.Fatalf("within the probe's window: probed %d times, want the lookup skipped without a probe", calls)
	}
	// The window over, the store fails: lookups, no probe for a second.
	fail = errStoreDown
	if !l.mayHold(ctx, t0.Add(every)) || calls != 2 {
		t.Fatalf("after the window with the store down: %d probes, want 2 and the lookup", calls)
	}
	if !l.mayHold(ctx, t0.Add(every+legacyProbeRetry/2)) || calls != 2 {
		t.Fatalf("right after a failed probe: %d probes, want no new one and the lookup", calls)
	}
	// The store is back and holds a record: lookups from now on.
	fail, answer = nil, true
	if !l.mayHold(ctx, t0.Add(every+legacyProbeRetry)) || calls != 3 {
		t.Fatalf("store back with a record: %d probes, want 3 and the lookup", calls)
	}
	if !l.mayHold(ctx, t0.Add(3*every)) || calls != 3 {
		t.Fatalf("once a record was found: %d probes, want no more", calls)
	}
}

// keepLegacy: a reload forgets the transition state of the webhook routes
// it removed, and keeps the others' (shared across reloads).
func TestKeepLegacyForgetsRemovedRoutes(t *testing.T) {
	qs := &Queues{}
	st := memory.New(memory.Options{})
	a, b := qs.legacyDedupe(st, "a", time.Hour), qs.legacyDedupe(st, "b", time.Hour)
	qs.keepLegacy(map[string]bool{"a": true})
	if qs.legacyDedupe(st, "a", time.Hour) != a {
		t.Fatal("a kept route's transition state was not shared across the reload")
	}
	if qs.legacyDedupe(st, "b", time.Hour) == b {
		t.Fatal("a removed route's transition state was kept")
	}
	if len(qs.legacy) != 2 {
		t.Fatalf("%d routes held, want 2 (a, and b added again)", len(qs.legacy))
	}
}
