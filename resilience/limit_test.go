package resilience_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/resilience"
)

// TestLimitConcurrencySlotIsReleased: a "concurrency 1" quota admits one
// attempt in flight and gives the slot back when it ends.
func TestLimitConcurrencySlotIsReleased(t *testing.T) {
	t.Parallel()
	pol, _ := ratelimit.ParsePolicy("concurrency 1")
	pol.Name = "inflight"
	store := ratelimit.NewLocal(ratelimit.LocalOptions{})
	e := mustNew(t, resilience.Settings{Clock: newFakeClock(), Retry: resilience.RetrySettings{MaxAttempts: 1},
		Limit: &resilience.LimitSettings{Store: store, Policies: []ratelimit.Policy{pol}, MaxWait: -1}})
	var inner error
	send := func(ctx context.Context, c *resilience.Call) (*http.Response, error) {
		_, inner = e.Do(ctx, &resilience.Call{Send: okSend}) // a second call while the first is in flight
		return okSend(ctx, c)
	}
	resp, err := e.Do(context.Background(), &resilience.Call{Send: send})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !errors.Is(inner, resilience.ErrPaced) {
		t.Fatalf("second call in flight: %v, want ErrPaced", inner)
	}
	resp, err = e.Do(context.Background(), &resilience.Call{Send: okSend})
	if err != nil {
		t.Fatalf("the slot was not given back: %v", err)
	}
	resp.Body.Close()
}

type brokenStore struct{}

func (brokenStore) Decide(context.Context, time.Time, []ratelimit.Demand, []ratelimit.Result) (ratelimit.Ticket, error) {
	return ratelimit.Ticket{}, errors.New("store down")
}

func (brokenStore) Features() ratelimit.Features { return ratelimit.Features{} }

func (brokenStore) Release(context.Context, []ratelimit.Demand, ratelimit.Ticket) error { return nil }

func TestLimitStoreDown(t *testing.T) {
	t.Parallel()
	pol, _ := ratelimit.ParsePolicy("1/s")
	pol.Name = "q"
	for _, closed := range []bool{false, true} {
		e := mustNew(t, resilience.Settings{Clock: newFakeClock(), Retry: resilience.RetrySettings{MaxAttempts: 1},
			Limit: &resilience.LimitSettings{Store: brokenStore{}, Policies: []ratelimit.Policy{pol}, FailClosed: closed}})
		resp, err := e.Do(context.Background(), &resilience.Call{Send: okSend})
		if closed {
			if err == nil || errors.Is(err, resilience.ErrRejected) {
				t.Errorf("FailClosed: err = %v, want the store error", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("fail open: %v", err)
		} else {
			resp.Body.Close()
		}
	}
}
