package sqlite

import (
	"hash/maphash"
	"sync"
)

// recentCap bounds the keys a Store remembers as recently claimed or found
// (about 1.5 MiB at this size).
const recentCap = 1 << 16

// recentKeys remembers, approximately and for a bounded number of keys,
// which keys this Store has recently claimed or found a record for. Claim
// reads a key first only when it is remembered: a replay or a duplicate in
// flight is then answered by a read, in parallel with everything else,
// while a key never seen (a new request, the common case under load) goes
// straight to the writer, whose INSERT ... ON CONFLICT both creates the
// record and, when one already exists (written by another process sharing
// the file, or before a restart, or forgotten here), returns it read under
// the write lock. The set is a hint for cost, never for correctness: a
// false "seen" (a hash collision) costs one read, a false "unseen" one
// trip through the writer, and every answer is the same either way.
type recentKeys struct {
	seed maphash.Seed
	mu   sync.Mutex
	set  map[uint64]struct{}
	ring []uint64 // insertion order, for eviction
	next int
}

func newRecentKeys() *recentKeys {
	// Start small: the set grows with use up to recentCap.
	return &recentKeys{seed: maphash.MakeSeed(), set: make(map[uint64]struct{}, 64)}
}

func (r *recentKeys) has(key string) bool {
	h := maphash.String(r.seed, key)
	r.mu.Lock()
	_, ok := r.set[h]
	r.mu.Unlock()
	return ok
}

func (r *recentKeys) add(key string) {
	h := maphash.String(r.seed, key)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[h]; ok {
		return
	}
	if len(r.ring) < recentCap {
		r.ring = append(r.ring, h)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = h
		r.next = (r.next + 1) % recentCap
	}
	r.set[h] = struct{}{}
}
