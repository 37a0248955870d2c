package ratelimit_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/ratelimit/ratelimittest"
)

func TestLocalConformance(t *testing.T) {
	t.Parallel()
	ratelimittest.Run(t, ratelimittest.Harness{
		NewStore: func(testing.TB) ratelimit.Store { return ratelimit.NewLocal(ratelimit.LocalOptions{}) },
	})
}

// With one shard every demand of a decision shares a lock.
func TestLocalConformanceOneShard(t *testing.T) {
	t.Parallel()
	ratelimittest.Run(t, ratelimittest.Harness{
		NewStore: func(testing.TB) ratelimit.Store { return ratelimit.NewLocal(ratelimit.LocalOptions{Shards: 1}) },
	})
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func mustPolicy(t testing.TB, name, spec string) ratelimit.Policy {
	t.Helper()
	p, err := ratelimit.ParsePolicy(spec)
	if err != nil {
		t.Fatal(err)
	}
	p.Name = name
	return p
}

// Property: on a fake clock, for any interval of length L the units
// admitted are at most burst + rate·L, whatever the schedule and costs.
func TestPropertyAdmittedWithinBurstPlusRate(t *testing.T) {
	t.Parallel()
	specs := []string{"1/s", "10/s burst 3", "100/s burst 200", "7/m burst 2", "1000/h", "3/s burst 1", "50/10s burst 5"}
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 42))
		p := mustPolicy(t, "p", specs[int(seed)%len(specs)])
		l := ratelimit.NewLocal(ratelimit.LocalOptions{})
		type adm struct {
			at   time.Duration
			cost int64
		}
		var admitted []adm
		now := time.Duration(0)
		gapMax := int64(p.Interval()) * 3
		for range 3000 {
			switch rng.IntN(4) { // bursts of simultaneous requests, short and long gaps
			case 0:
			case 1:
				now += time.Duration(rng.Int64N(gapMax/10 + 1))
			default:
				now += time.Duration(rng.Int64N(gapMax + 1))
			}
			cost := int64(1)
			if rng.IntN(5) == 0 {
				cost = rng.Int64N(p.EffectiveBurst()) + 1
			}
			if l.AllowN(t0.Add(now), p, "k", cost).Allowed {
				admitted = append(admitted, adm{now, cost})
			}
		}
		if len(admitted) == 0 {
			t.Fatalf("seed %d (%s): nothing admitted", seed, p)
		}
		for i := range admitted {
			var sum int64
			for j := i; j < len(admitted); j++ {
				sum += admitted[j].cost
				l := int64(admitted[j].at - admitted[i].at)
				// sum ≤ burst + limit·L/period, in integers.
				if sum*int64(p.Period) > p.EffectiveBurst()*int64(p.Period)+p.Limit*l {
					t.Fatalf("seed %d (%s): %d units admitted in [%v, %v] (%v), above burst %d + rate·L",
						seed, p, sum, admitted[i].at, admitted[j].at, time.Duration(l), p.EffectiveBurst())
				}
			}
		}
	}
}

// A steady client at exactly the rate is never denied.
func TestSteadyClientAtRateNeverDenied(t *testing.T) {
	t.Parallel()
	for _, spec := range []string{"1/s", "3/s burst 1", "100/s", "5000/day", "7/m burst 1"} {
		p := mustPolicy(t, "p", spec)
		l := ratelimit.NewLocal(ratelimit.LocalOptions{})
		step := p.Interval() // ≥ Period/Limit: the rate, rounded to µs
		for i := range 1000 {
			if r := l.AllowN(t0.Add(time.Duration(i)*step), p, "k", 1); !r.Allowed {
				t.Fatalf("%s: request %d at the exact rate denied: %+v", spec, i, r)
			}
		}
	}
}

func TestAllowN(t *testing.T) {
	t.Parallel()
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	p := mustPolicy(t, "p", "10/s burst 2")
	if r := l.AllowN(t0, p, "k", 2); !r.Allowed || r.Remaining != 0 || r.ResetAfter != 200*time.Millisecond {
		t.Fatalf("burst: %+v", r)
	}
	if r := l.AllowN(t0.Add(50*time.Millisecond), p, "k", 1); r.Allowed || r.RetryAfter != 50*time.Millisecond {
		t.Fatalf("50ms later: %+v, want denied with RetryAfter 50ms", r)
	}
	if r := l.AllowN(t0.Add(100*time.Millisecond), p, "k", 1); !r.Allowed {
		t.Fatalf("100ms later: %+v, want allowed", r)
	}
	if r := l.AllowN(t0.Add(time.Hour), p, "k", 3); r.Allowed || r.RetryAfter != 0 || r.Remaining != 2 {
		t.Fatalf("cost above burst: %+v, want denied, RetryAfter 0, Remaining 2", r)
	}
	if r := l.AllowN(t0, ratelimit.Policy{Name: "bad"}, "k", 1); r.Allowed {
		t.Fatalf("invalid policy allowed: %+v", r)
	}
	c := mustPolicy(t, "c", "concurrency 3")
	if r := l.AllowN(t0, c, "k", 2); !r.Allowed || r.Remaining != 1 {
		t.Fatalf("concurrency take 2: %+v", r)
	}
	if r := l.AllowN(t0, c, "k", 2); r.Allowed || r.Remaining != 1 || r.RetryAfter != ratelimit.ConcurrencyRetryAfter {
		t.Fatalf("concurrency take 2 more: %+v", r)
	}
	l.ReleaseN(c, "k", 2)
	if r := l.AllowN(t0, c, "k", 3); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("after release: %+v", r)
	}
	l.ReleaseN(c, "k", 3)
	if n := l.Len(); n != 1 { // the rate key; the concurrency key is gone at zero
		t.Fatalf("Len = %d, want 1", n)
	}
}

func TestLocalZeroAllocs(t *testing.T) {
	l := ratelimit.NewLocal(ratelimit.LocalOptions{})
	p := mustPolicy(t, "p", "1000000/s")
	l.AllowN(t0, p, "k", 1)
	if n := testing.AllocsPerRun(1000, func() { l.AllowN(t0, p, "k", 1) }); n != 0 {
		t.Errorf("AllowN on a known key: %v allocs, want 0", n)
	}
	ds := []ratelimit.Demand{
		{Policy: p, Key: "a", Cost: 1},
		{Policy: mustPolicy(t, "q", "1000000/s"), Key: "b", Cost: 1},
		{Policy: mustPolicy(t, "c", "concurrency 10"), Key: "c", Cost: 1},
	}
	rs := make([]ratelimit.Result, len(ds))
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() {
		tk, _ := l.Decide(ctx, t0, ds, rs)
		_ = l.Release(ctx, ds, tk)
	}); n != 0 {
		t.Errorf("Decide+Release of 3 demands on known keys: %v allocs, want 0", n)
	}
}

// Idle keys are reclaimed: a stream of distinct keys keeps the store at
// about twice the number of keys active at once, not the number ever seen.
func TestLocalReclaimsIdleKeys(t *testing.T) {
	t.Parallel()
	l := ratelimit.NewLocal(ratelimit.LocalOptions{Shards: 16})
	p := mustPolicy(t, "p", "1/s") // each key is active for 1 s after its request
	const perSecond = 20_000
	now := t0
	for sec := range 10 {
		for i := range perSecond {
			l.AllowN(now, p, strconv.Itoa(sec*perSecond+i), 1)
		}
		now = now.Add(1100 * time.Millisecond)
	}
	// 200,000 keys seen, at most 20,000 active at once.
	if n := l.Len(); n > 2*perSecond+16*1024 {
		t.Fatalf("after 200k distinct keys with 20k active: Len = %d, want ≤ %d", n, 2*perSecond+16*1024)
	}
	if n := l.Sweep(now); n != 0 {
		t.Fatalf("Sweep after every key went idle left %d keys", n)
	}
	// Reclaiming never changes a decision: a swept key starts full, as it
	// would have anyway.
	if r := l.AllowN(now, p, "0", 1); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("swept key: %+v", r)
	}
}
