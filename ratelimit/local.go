package ratelimit

import (
	"context"
	"hash/maphash"
	"maps"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// LocalOptions configure a Local. The zero value is a sensible default.
type LocalOptions struct {
	// Shards is the number of independently locked shards, rounded up to
	// a power of two. Default 64.
	Shards int
}

// Local is the in-process Store: state lives in this process's memory,
// so each replica limits on its own. It is also the fail-open fallback of
// a shared store.
//
// State is sharded by a seeded hash of (policy name, key); each shard has
// a mutex and two maps (GCRA TATs, concurrency counts) from the 64-bit
// hash to an int64, so a decision on an existing key allocates nothing
// and an active key costs about 20 to 40 bytes. Two (name, key) pairs
// share state only if their 64-bit hashes collide, which a random
// per-Local seed makes a 2^-64 event that clients cannot steer.
//
// A rate key whose TAT has passed holds no information (the key is back at
// its full burst), so it is forgotten: when a shard grows to twice its
// size at the last sweep it drops every such key, and rebuilds its map
// when fewer than a quarter of the keys it held survive, so memory
// follows the number of active keys rather than the number ever seen.
// There is no background goroutine; Sweep reclaims on demand.
//
// Decide locks the shards of its demands in increasing shard order (so
// concurrent decisions cannot deadlock), checks every demand, charges all
// or none, and unlocks: decisions are atomic with respect to each other.
// A Local is safe for concurrent use.
type Local struct {
	seedName, seedKey maphash.Seed
	shift             uint
	shards            []localShard
	ids               atomic.Uint64
}

type localShard struct {
	mu       sync.Mutex
	tat      map[uint64]tatState // hash -> TAT and the interval it was charged at
	inflight map[uint64]int64    // hash -> requests in flight
	sweepAt  int                 // sweep when len(tat) reaches this
	peak     int                 // most keys held since the map was built
	_        [24]byte            // keep shards on separate cache lines
}

// tatState is one rate key's state: its TAT (Unix nanoseconds) and the
// emission interval it was charged at, so that a policy whose rate
// changes on reload carries the units owed over (see rescale).
type tatState struct{ tat, iv int64 }

// minSweep is the smallest shard size that triggers a sweep.
const minSweep = 1024

// NewLocal returns an empty in-process store.
func NewLocal(opts LocalOptions) *Local {
	n := opts.Shards
	if n <= 0 {
		n = 64
	}
	if n > 1<<16 {
		n = 1 << 16
	}
	b := bits.Len(uint(n - 1))
	l := &Local{
		seedName: maphash.MakeSeed(),
		seedKey:  maphash.MakeSeed(),
		shift:    uint(64 - b),
		shards:   make([]localShard, 1<<b),
	}
	for i := range l.shards {
		l.shards[i].tat = make(map[uint64]tatState)
		l.shards[i].inflight = make(map[uint64]int64)
		l.shards[i].sweepAt = minSweep
	}
	return l
}

func (l *Local) hash(name, key string) uint64 {
	return maphash.String(l.seedName, name) ^ maphash.String(l.seedKey, key)
}

func (l *Local) shardOf(h uint64) uint32 {
	if l.shift == 64 {
		return 0
	}
	return uint32(h >> l.shift)
}

// AllowN reports whether n units of policy p may be charged to key at
// now, and charges them if so. For a rate policy it is one GCRA step; for
// a calendar quota it counts n units in the period holding now; for a
// concurrency policy it takes n slots, to be given back with ReleaseN.
// It allocates nothing once key is known.
//
// p must be valid (see Policy.Validate); an invalid policy or negative n
// is denied. If n exceeds a rate policy's burst no wait can admit it:
// AllowN reports not allowed with RetryAfter 0, as
// golang.org/x/time/rate does.
func (l *Local) AllowN(now time.Time, p Policy, key string, n int64) Result {
	h := l.hash(p.Name, key)
	s := &l.shards[l.shardOf(h)]
	t := now.UnixNano()
	if p.Kind == KindConcurrency {
		if p.Limit <= 0 || n < 0 {
			return Result{}
		}
		s.mu.Lock()
		cur := s.inflight[h]
		ok := cur+n <= p.Limit
		if ok && n > 0 {
			s.inflight[h] = cur + n
		}
		s.mu.Unlock()
		if ok {
			return Result{Allowed: true, Remaining: p.Limit - cur - n}
		}
		return Result{Remaining: max(p.Limit-cur, 0), RetryAfter: ConcurrencyRetryAfter}
	}
	if p.Kind == KindCalendar {
		if n < 0 || p.Limit <= 0 {
			return Result{}
		}
		h ^= calendarSalt
		s = &l.shards[l.shardOf(h)]
		s.mu.Lock()
		old, existed := s.tat[h]
		st, next := calendarStep(t, p, old, n)
		if st.allowed {
			s.setTAT(h, next, existed, t)
		}
		s.mu.Unlock()
		r := st.result(st.allowed)
		if n > p.Limit {
			r.RetryAfter = 0
		}
		return r
	}
	iv := p.intervalMicros() * int64(time.Microsecond)
	if iv <= 0 || n < 0 {
		return Result{}
	}
	b := p.burst()
	s.mu.Lock()
	old, existed := s.tat[h]
	cur := rescale(t, old.tat, old.iv, iv)
	st := gcra(t, cur, iv, iv*b, n)
	if st.allowed {
		s.setTAT(h, tatState{st.newTAT, iv}, existed, t)
	} else if cur != old.tat {
		// The policy's rate changed: store the converted state so the
		// debt drains at the new rate from now on (nothing is charged).
		s.setTAT(h, tatState{cur, iv}, existed, t)
	}
	s.mu.Unlock()
	r := st.result(st.allowed)
	if n > b {
		r.RetryAfter = 0
	}
	return r
}

// ReleaseN gives back n slots of concurrency policy p taken by AllowN.
func (l *Local) ReleaseN(p Policy, key string, n int64) {
	h := l.hash(p.Name, key)
	s := &l.shards[l.shardOf(h)]
	s.mu.Lock()
	s.release(h, n)
	s.mu.Unlock()
}

func (s *localShard) release(h uint64, n int64) {
	if c := s.inflight[h] - n; c > 0 {
		s.inflight[h] = c
	} else {
		delete(s.inflight, h)
	}
}

func (st gcraStep) result(charged bool) Result {
	if charged {
		return Result{Allowed: true, Remaining: st.remCharged, ResetAfter: time.Duration(st.resetCharged), Window: time.Duration(st.window)}
	}
	r := Result{Allowed: st.allowed, Remaining: st.remKept, ResetAfter: time.Duration(st.resetKept), Window: time.Duration(st.window)}
	if !st.allowed {
		r.RetryAfter = time.Duration(st.retry)
	}
	return r
}

func (s *localShard) setTAT(h uint64, tat tatState, existed bool, now int64) {
	if !existed && len(s.tat) >= s.sweepAt {
		s.sweep(now)
	}
	s.tat[h] = tat
	s.peak = max(s.peak, len(s.tat))
}

// sweep drops the keys whose TAT has passed and, when few survive,
// rebuilds the map so that its memory is returned.
func (s *localShard) sweep(now int64) {
	for k, v := range s.tat {
		if v.tat <= now {
			delete(s.tat, k)
		}
	}
	live := len(s.tat)
	if s.peak >= minSweep && live < s.peak/4 {
		m := make(map[uint64]tatState, live)
		maps.Copy(m, s.tat)
		s.tat = m
		s.peak = live
	}
	s.sweepAt = max(2*live, minSweep)
}

// Sweep forgets every rate key that is back at its full burst at now and
// returns the number of keys still held (rate and concurrency). Local
// sweeps by itself as it grows; call Sweep to reclaim memory after a burst
// of keys when no new keys arrive.
func (l *Local) Sweep(now time.Time) int {
	t := now.UnixNano()
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		s.sweep(t)
		n += len(s.tat) + len(s.inflight)
		s.mu.Unlock()
	}
	return n
}

// Len returns the number of keys held (rate and concurrency), including
// rate keys not yet swept.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tat) + len(s.inflight)
		s.mu.Unlock()
	}
	return n
}

// small is the number of demands Decide handles without allocating.
const small = 8

// Decide implements Store: all demands are decided under the locks of
// their shards, taken in increasing order, and charged all or none. It
// never blocks on I/O and ignores ctx.
func (l *Local) Decide(_ context.Context, now time.Time, demands []Demand, results []Result) (Ticket, error) {
	if err := CheckDemands(demands, results); err != nil {
		return Ticket{}, err
	}
	var (
		hbuf  [small]uint64
		sbuf  [small]gcraStep
		lbuf  [small]uint32
		hs    = hbuf[:0]
		steps = sbuf[:0]
		locks = lbuf[:0]
	)
	if len(demands) > small {
		hs = make([]uint64, 0, len(demands))
		steps = make([]gcraStep, 0, len(demands))
		locks = make([]uint32, 0, len(demands))
	}
	for i := range demands {
		h := l.hash(demands[i].Policy.Name, demands[i].Key)
		if demands[i].Policy.Kind == KindCalendar {
			h ^= calendarSalt
		}
		hs = append(hs, h)
		locks = insertSorted(locks, l.shardOf(h))
	}
	for _, si := range locks {
		l.shards[si].mu.Lock()
	}
	t := now.UnixNano()
	admit := true
	for i := range demands {
		d := &demands[i]
		s := &l.shards[l.shardOf(hs[i])]
		var st gcraStep
		if d.Policy.Kind == KindConcurrency {
			cur, lim := s.inflight[hs[i]], d.Policy.Limit
			st = gcraStep{allowed: cur < lim, remCharged: lim - cur - 1, remKept: max(lim-cur, 0)}
			if !st.allowed {
				st.retry = int64(ConcurrencyRetryAfter)
			}
		} else if d.Policy.Kind == KindCalendar {
			st, _ = calendarStep(t, d.Policy, s.tat[hs[i]], d.Cost)
		} else {
			iv := d.Policy.intervalMicros() * int64(time.Microsecond)
			old := s.tat[hs[i]]
			cur := rescale(t, old.tat, old.iv, iv)
			st = gcra(t, cur, iv, iv*d.Policy.burst(), d.Cost)
			if cur != old.tat {
				// The rate changed (reload): keep the converted state
				// whatever is decided, so the debt drains at the new
				// rate; this charges nothing.
				s.tat[hs[i]] = tatState{cur, iv}
			}
		}
		steps = append(steps, st)
		if !st.allowed && !d.Shadow {
			admit = false
		}
	}
	var tk Ticket
	for i := range demands {
		charged := admit && steps[i].allowed
		if charged {
			s := &l.shards[l.shardOf(hs[i])]
			if demands[i].Policy.Kind == KindConcurrency {
				s.inflight[hs[i]]++
				tk.Held |= 1 << i
			} else if demands[i].Policy.Kind == KindCalendar {
				old, existed := s.tat[hs[i]]
				_, next := calendarStep(t, demands[i].Policy, old, demands[i].Cost)
				s.setTAT(hs[i], next, existed, t)
			} else {
				_, existed := s.tat[hs[i]]
				iv := demands[i].Policy.intervalMicros() * int64(time.Microsecond)
				s.setTAT(hs[i], tatState{steps[i].newTAT, iv}, existed, t)
			}
		}
		results[i] = steps[i].result(charged)
	}
	for j := len(locks) - 1; j >= 0; j-- {
		l.shards[locks[j]].mu.Unlock()
	}
	if tk.Held != 0 {
		tk.ID = l.ids.Add(1)
	}
	return tk, nil
}

// insertSorted adds v to the sorted set s.
func insertSorted(s []uint32, v uint32) []uint32 {
	i := len(s)
	for i > 0 && s[i-1] > v {
		i--
	}
	if i > 0 && s[i-1] == v {
		return s
	}
	s = append(s, 0)
	copy(s[i+1:], s[i:])
	s[i] = v
	return s
}

// Release implements Store.
func (l *Local) Release(_ context.Context, demands []Demand, t Ticket) error {
	for held := t.Held; held != 0; held &= held - 1 {
		i := bits.TrailingZeros64(held)
		if i >= len(demands) {
			break
		}
		d := &demands[i]
		h := l.hash(d.Policy.Name, d.Key)
		s := &l.shards[l.shardOf(h)]
		s.mu.Lock()
		s.release(h, 1)
		s.mu.Unlock()
	}
	return nil
}

var _ Store = (*Local)(nil)

// Features implements Store: in process, on the caller's clock.
func (l *Local) Features() Features { return Features{InProcess: true, CallerClock: true} }
