// Package memory is an in-process idempotency.Store for tests, single
// replicas and benchmarks. It is bounded: expired records are reclaimed as
// new ones arrive, and MaxEntries caps the number of records, after which a
// claim for a new key fails with idempotency.ErrCapacity rather than
// evicting a live record (which would let a duplicate run twice).
//
// It offers no durability and no sharing between processes: use sqlite,
// redis, postgres or dynamodb for those.
package memory

import (
	"context"
	"hash/maphash"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/idempotency"
)

// Options configure a Store. The zero value is a sensible default.
type Options struct {
	// MaxEntries caps the number of records held (live or not yet
	// reclaimed). Default 1,000,000. When full of live records, claims for
	// new keys fail with idempotency.ErrCapacity.
	MaxEntries int
}

const shardCount = 64

// Store is an in-memory idempotency.Store. It is safe for concurrent use.
type Store struct {
	seed     maphash.Seed
	perShard int
	shards   [shardCount]shard
	ops      atomic.Int64
}

type shard struct {
	mu sync.Mutex
	m  map[string]*entry
	_  [40]byte // keep shards on separate cache lines
}

type entry struct {
	rec  idempotency.Record
	resp idempotency.Response // rec.Response points here once completed
}

// New returns an empty Store.
func New(opts Options) *Store {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	s := &Store{seed: maphash.MakeSeed(), perShard: max(1, (opts.MaxEntries+shardCount-1)/shardCount)}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*entry)
	}
	return s
}

func (s *Store) shard(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)%shardCount]
}

// Features reports InProcess: the store never waits on I/O, so the engine
// needs no per-call timeout for it.
func (s *Store) Features() idempotency.Features {
	return idempotency.Features{InProcess: true, List: true}
}

// Ops returns how many store operations have been served: the memory
// store's equivalent of round trips, used by the conformance suite.
func (s *Store) Ops() int64 { return s.ops.Load() }

// Len returns the number of records held, including expired ones not yet
// reclaimed.
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// Sweep removes every record expired at now and returns how many it
// removed. Claims reclaim expired records incrementally; Sweep is for
// callers that want memory back at once.
func (s *Store) Sweep(now time.Time) int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.sweep(now, -1)
		sh.mu.Unlock()
	}
	return n
}

// sweep deletes up to limit expired records (all when limit < 0). Map
// iteration starts at a random position, so a small limit samples the
// shard the way Redis's active expiry does.
func (sh *shard) sweep(now time.Time, limit int) int {
	n, seen := 0, 0
	for k, e := range sh.m {
		if limit >= 0 && seen >= limit {
			break
		}
		seen++
		if !now.Before(e.rec.ExpiresAt) {
			delete(sh.m, k)
			n++
		}
	}
	return n
}

// Claim implements idempotency.Store.
func (s *Store) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	if err := ctx.Err(); err != nil {
		return idempotency.ClaimResult{}, err
	}
	s.ops.Add(1)
	sh := s.shard(req.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[req.Key]
	if ok && !e.rec.Claimable(req.Now) {
		rec := e.rec
		return idempotency.ClaimResult{Existing: &rec}, nil
	}
	if !ok {
		sh.sweep(req.Now, 2)
		if len(sh.m) >= s.perShard && sh.sweep(req.Now, -1) == 0 {
			return idempotency.ClaimResult{}, idempotency.ErrCapacity
		}
	}
	// Always a new entry: a replaced one may still be read through a
	// Response pointer handed out earlier, so entries are never reused.
	e = &entry{}
	sh.m[req.Key] = e
	e.rec = idempotency.Record{
		Key: req.Key, Fingerprint: req.Fingerprint, State: idempotency.StateInProgress,
		Token: req.Token, LeaseUntil: req.LeaseUntil, ExpiresAt: req.ExpiresAt,
	}
	return idempotency.ClaimResult{Claimed: true}, nil
}

// held returns the in-progress entry held by token, or nil. With open set,
// an entry in StateUnknown counts too (Complete and Release resolve it).
func (sh *shard) held(key string, token uint64, open bool) *entry {
	e, ok := sh.m[key]
	if !ok || e.rec.Token != token {
		return nil
	}
	if e.rec.State == idempotency.StateInProgress || (open && e.rec.State == idempotency.StateUnknown) {
		return e
	}
	return nil
}

// Renew implements idempotency.Store.
func (s *Store) Renew(ctx context.Context, key string, token uint64, _, leaseUntil, expiresAt time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.ops.Add(1)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.held(key, token, false)
	if e == nil {
		return idempotency.ErrFenced
	}
	e.rec.LeaseUntil = leaseUntil
	e.rec.ExpiresAt = expiresAt
	return nil
}

// Complete implements idempotency.Store. The response is copied.
func (s *Store) Complete(ctx context.Context, key string, token uint64, resp idempotency.Response, _, expiresAt time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.ops.Add(1)
	stored := idempotency.Response{
		Status:      resp.Status,
		Header:      cloneHeader(resp.Header),
		Body:        append([]byte(nil), resp.Body...),
		BodyOmitted: resp.BodyOmitted,
	}
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.held(key, token, true)
	if e == nil {
		return idempotency.ErrFenced
	}
	e.rec.State = idempotency.StateCompleted
	e.rec.ExpiresAt = expiresAt
	e.resp = stored
	e.rec.Response = &e.resp
	return nil
}

func cloneHeader(h http.Header) http.Header {
	if len(h) == 0 {
		return nil
	}
	return h.Clone()
}

// Release implements idempotency.Store.
func (s *Store) Release(ctx context.Context, key string, token uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.ops.Add(1)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.held(key, token, true) == nil {
		return idempotency.ErrFenced
	}
	delete(sh.m, key)
	return nil
}

// MarkUnknown implements idempotency.Store.
func (s *Store) MarkUnknown(ctx context.Context, key string, token uint64, now, expiresAt time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.ops.Add(1)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.held(key, token, false)
	if e == nil {
		return idempotency.ErrFenced
	}
	e.rec.State = idempotency.StateUnknown
	e.rec.LeaseUntil = now
	e.rec.ExpiresAt = expiresAt
	return nil
}

// List implements idempotency.Store. It visits every record (the store
// keeps no index by state), so it costs time proportional to the store's
// size; it is meant for operators, not for request paths.
func (s *Store) List(ctx context.Context, req idempotency.ListRequest) ([]idempotency.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.ops.Add(1)
	var out []idempotency.Record
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if e.rec.State == req.State && k > req.After && req.Now.Before(e.rec.ExpiresAt) {
				rec := e.rec
				rec.Response = nil
				out = append(out, rec)
			}
		}
		sh.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b idempotency.Record) int { return strings.Compare(a.Key, b.Key) })
	if len(out) > req.Limit {
		out = out[:req.Limit]
	}
	return out, nil
}

// Lookup implements idempotency.Store. The returned record shares its
// Response with the store; callers must not modify it.
func (s *Store) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.ops.Add(1)
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[key]
	if !ok || !now.Before(e.rec.ExpiresAt) {
		return nil, idempotency.ErrNotFound
	}
	rec := e.rec
	return &rec, nil
}
