// Package recentkeys remembers, approximately and for a bounded number of
// keys, which idempotency keys a store has recently claimed or found a
// record for. The stores use it as a hint for cost, never for correctness
// (store/sqlite reads a key first only when it has seen it; store/postgres
// claims a key it has not seen with a plain INSERT ... ON CONFLICT DO
// NOTHING): a false "seen" (a hash collision) and a false "unseen" (a key
// written by another process, or forgotten) each cost one extra statement,
// and every answer is the same either way.
package recentkeys

import (
	"hash/maphash"
	"sync"
)

// Cap bounds the keys a Set remembers (about 1.5 MiB at this size): once
// full, the oldest are forgotten first.
const Cap = 1 << 16

// Set is a bounded, approximate set of keys (their 64-bit hashes). It is
// safe for concurrent use. The zero value is not usable; call New.
type Set struct {
	seed maphash.Seed
	mu   sync.Mutex
	set  map[uint64]struct{}
	ring []uint64 // insertion order, for eviction
	next int
}

// New returns an empty Set. It starts small and grows with use up to Cap.
func New() *Set {
	return &Set{seed: maphash.MakeSeed(), set: make(map[uint64]struct{}, 64)}
}

// Has reports whether key was added and not yet evicted (or, rarely,
// whether another key with the same hash was).
func (r *Set) Has(key string) bool {
	h := maphash.String(r.seed, key)
	r.mu.Lock()
	_, ok := r.set[h]
	r.mu.Unlock()
	return ok
}

// Add remembers key, evicting the oldest key once Cap are held.
func (r *Set) Add(key string) {
	h := maphash.String(r.seed, key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[h]; ok {
		return
	}
	if len(r.ring) < Cap {
		r.ring = append(r.ring, h)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = h
		r.next = (r.next + 1) % Cap
	}
	r.set[h] = struct{}{}
}
