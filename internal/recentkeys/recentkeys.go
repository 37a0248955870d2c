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
	"sync/atomic"
)

// Cap is the number of slots (512 KiB, allocated at the first Add): a key
// is kept until a later key lands in its slot, on average for about Cap
// later keys.
const Cap = 1 << slotBits

// Set is a bounded, approximate set of keys: a direct-mapped table of
// their 64-bit hashes, one slot per hash's high bits, lock-free (a lookup
// is one hash and one memory read). It replaced a map with an eviction
// ring behind a mutex, which a gateway CPU profile put at 2.3 µs a request
// (Has and Add) and which held about 8 MiB more at peak under
// bench/gateway/run.sh's SQLite scenario (56.3, 56.5 → 48.1, 48.5 MiB); the
// request CPU moved within that run's noise. It is safe for concurrent
// use. The zero value is not usable; call New.
type Set struct {
	seed  maphash.Seed
	slots atomic.Pointer[[Cap]atomic.Uint64]
}

// New returns an empty Set.
func New() *Set { return &Set{seed: maphash.MakeSeed()} }

// hash is key's hash, never 0 (an empty slot), and its slot: the hash's
// high bits (the low bit is the one forced).
func (r *Set) hash(key string) (h uint64, slot uint64) {
	h = maphash.String(r.seed, key) | 1
	return h, h >> (64 - slotBits)
}

const slotBits = 16 // Cap = 1 << slotBits

// Has reports whether key was added and its slot not taken since by
// another key (or, rarely, whether another key with the same hash was).
func (r *Set) Has(key string) bool {
	s := r.slots.Load()
	if s == nil {
		return false
	}
	h, i := r.hash(key)
	return s[i].Load() == h
}

// Add remembers key, in place of whichever key held its slot.
func (r *Set) Add(key string) {
	s := r.slots.Load()
	if s == nil {
		s = new([Cap]atomic.Uint64)
		if !r.slots.CompareAndSwap(nil, s) {
			s = r.slots.Load()
		}
	}
	h, i := r.hash(key)
	s[i].Store(h)
}
