// Package redis is an idempotency.Store on Redis, for idempotency shared by
// many replicas. It works with a single server, a Ring or a Cluster, on
// either client library: New takes any go-redis client (*goredis.Client,
// *goredis.Ring, *goredis.ClusterClient) and NewRueidis a rueidis.Client.
// Both keep the same records and can share them. rueidis pipelines the
// commands of concurrent callers on shared connections, which halves the
// client CPU per operation under load (docs/benchmarks.md); the levee
// gateway uses it, with rueidis.ClientOption.MaxFlushDelay set to 500µs so
// that the claim and completion commands of concurrent requests share
// writes (a lone command is never delayed), and DisableCache.
//
// # Guarantees
//
// Every operation is one round trip and atomic on its key: Claim, Renew,
// MarkUnknown, Complete and Release each run one Lua script (EVALSHA) that reads the
// record, decides, and writes it, so no other command on the key can run
// in between; Lookup is a single HMGET. A Claim that does not win returns
// the blocking record from the same script, so a replay costs exactly one
// round trip. Scripts are sent by SHA-1; if the server does not know a
// script yet (a fresh or restarted server, or after SCRIPT FLUSH), that one
// call costs two round trips (EVALSHA answered NOSCRIPT, then EVAL, which
// also caches it). Call Store.Load once at start-up to load the scripts
// eagerly and keep the first requests at one round trip per operation.
//
// Fencing tokens are stored and compared as decimal strings inside the
// scripts (Lua numbers are doubles and cannot hold 63-bit tokens exactly).
// Times are stored as integer Unix milliseconds: sub-millisecond parts are
// truncated, as the Store contract allows.
//
// # Expiry
//
// Expiry is logical: Claim and Lookup compare the record's expiry with the
// time the engine passes in, never with Redis's clock or TTL. Redis's TTL is
// only a clean-up aid: Claim and Complete set it relative to the engine's
// now (ExpiresAt-Now+TTLSlack), so replica clock skew against the Redis
// server does not matter; Renew leaves it unchanged (a lease running past
// the retention does not keep a record alive: the record is logically
// expired at ExpiresAt anyway).
//
// # Layout
//
// Each record is one hash at <Prefix>{<k>}, where <k> is the scoped key
// itself when it is 1 to 64 lowercase hex digits (the engine's scoped keys
// are), and "sha256:" followed by the hex SHA-256 of the key otherwise, so
// that any string works and the braces always form a Redis Cluster hash tag.
// The hash fields are key (the original key), fp (the 32-byte fingerprint),
// state ("in_progress", "completed" or "unknown"), token (decimal), lease
// and exp (Unix milliseconds; for an unknown record lease is when the
// outcome became unknown) and resp (idempotency.MarshalResponse bytes, once
// completed).
//
// # Failures
//
// Every Redis error (unreachable server, timeout, canceled context, a
// key of the wrong type, READONLY replica, ...) is returned wrapped with the
// operation name, and the record is left as it was; the engine turns it into
// its store-failure policy (fail closed by default). A record whose fields
// cannot be parsed is never overwritten: the operation fails with an error
// rather than guess. ErrFenced and ErrNotFound are returned unwrapped as
// the contract describes. With a Cluster client configured to read from
// replicas, Lookup may read a slightly stale record; the engine only uses
// Lookup to decide whether to claim again, and claims always go to the
// master, so staleness costs a retry, never a duplicate execution.
package redis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/leveehq/levee/idempotency"
)

// TTLSlack is added to the physical Redis TTL of every record beyond its
// logical expiry, so that Redis never reclaims a record the engine still
// counts as live.
const TTLSlack = time.Minute

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "levee:idem:"

// rediser lists the go-redis commands the store uses. *goredis.Client,
// *goredis.Ring and *goredis.ClusterClient implement it.
type rediser interface {
	goredis.Scripter // EVALSHA with EVAL fallback, SCRIPT LOAD
	HMGet(ctx context.Context, key string, fields ...string) *goredis.SliceCmd
}

// Options configure a Store. The zero value is a sensible default.
type Options struct {
	// Prefix starts every Redis key the store writes. Default
	// DefaultPrefix ("levee:idem:"). It should not contain '{' or '}',
	// which would move every record into one Cluster hash slot.
	Prefix string
}

// Store is an idempotency.Store on Redis. It is safe for concurrent use and
// holds no connections of its own: the client passed to New does.
type Store struct {
	c      backend
	prefix string
}

var _ idempotency.Store = (*Store)(nil)

// New returns a Store that keeps its records in Redis through client. It
// does no I/O; see Load.
func New(client rediser, opts Options) *Store {
	return newStore(goredisBackend{client}, opts)
}

// NewRueidis returns a Store that keeps its records in Redis through a
// rueidis client (a single server or a cluster). It does no I/O; see Load.
func NewRueidis(client rueidis.Client, opts Options) *Store {
	return newStore(rueidisBackend{client}, opts)
}

// The scripts, shared by every Store.
var (
	claimScript    = newScript(claimLua)
	renewScript    = newScript(renewLua)
	completeScript = newScript(completeLua)
	releaseScript  = newScript(releaseLua)
	unknownScript  = newScript(unknownLua)
)

func newStore(b backend, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	return &Store{c: b, prefix: opts.Prefix}
}

// Load loads the store's Lua scripts into the script cache of the server
// (every shard of a Ring or Cluster), so that the first call of each
// operation costs one round trip instead of two. It is optional and safe to
// call again at any time, for example after a server restart.
func (s *Store) Load(ctx context.Context) error {
	if err := s.c.load(ctx, []*script{claimScript, renewScript, completeScript, releaseScript, unknownScript}); err != nil {
		return fmt.Errorf("redis: load scripts: %w", err)
	}
	return nil
}

const (
	stateInProgress = "in_progress"
	stateCompleted  = "completed"
	stateUnknown    = "unknown"
)

// recordFields is the order in which Lookup reads a record and Claim
// returns the blocking one.
var recordFields = [...]string{"state", "token", "lease", "exp", "fp", "resp"}

// claimLua: KEYS[1] record; ARGV key, fp, token, now, lease, exp, ttl (ms).
// Returns 1 when claimed, else the blocking record's fields in
// recordFields order.
const claimLua = `
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'lease', 'exp', 'fp', 'resp')
if r[1] then
  local lease, exp = tonumber(r[3]), tonumber(r[4])
  if (r[1] ~= 'in_progress' and r[1] ~= 'completed' and r[1] ~= 'unknown') or not lease or not exp or not r[2] or not r[5] then
    return redis.error_reply('corrupt idempotency record')
  end
  local now = tonumber(ARGV[4])
  if now < exp and (r[1] ~= 'in_progress' or now < lease) then
    return r
  end
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'fp', ARGV[2], 'state', 'in_progress',
  'token', ARGV[3], 'lease', ARGV[5], 'exp', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
`

// renewLua: KEYS[1] record; ARGV token, lease, exp, ttl (ms). Returns 1
// or 0 (fenced). The TTL is lengthened, never shortened.
const renewLua = `
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'in_progress' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease', ARGV[2], 'exp', ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
`

// completeLua: KEYS[1] record; ARGV token, resp, exp, ttl (ms). Returns 1
// or 0 (fenced). An unknown record is completed too (an operator resolving
// it).
const completeLua = `
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if (r[1] ~= 'in_progress' and r[1] ~= 'unknown') or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'completed', 'resp', ARGV[2], 'exp', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`

// releaseLua: KEYS[1] record; ARGV token. Returns 1 or 0 (fenced). An
// unknown record is released too (an operator resolving it).
const releaseLua = `
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if (r[1] ~= 'in_progress' and r[1] ~= 'unknown') or r[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
`

// unknownLua: KEYS[1] record; ARGV token, now, exp, ttl (ms). Returns 1 or
// 0 (fenced). The lease field becomes the time the outcome became unknown.
const unknownLua = `
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'in_progress' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'unknown', 'lease', ARGV[2], 'exp', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`

// redisKey maps a scoped key to its Redis key (see the package doc).
func (s *Store) redisKey(key string) string {
	if isShortHex(key) {
		return s.prefix + "{" + key + "}"
	}
	sum := sha256.Sum256([]byte(key))
	return s.prefix + "{sha256:" + hex.EncodeToString(sum[:]) + "}"
}

func isShortHex(k string) bool {
	if len(k) == 0 || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ttlMillis is the physical TTL for a record expiring at exp, seen at now.
func ttlMillis(now, exp time.Time) int64 {
	return max(exp.UnixMilli()-now.UnixMilli(), 0) + TTLSlack.Milliseconds()
}

func tokenString(t uint64) string { return strconv.FormatUint(t, 10) }

// Claim implements idempotency.Store in one script call.
func (s *Store) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	v, err := s.c.eval(ctx, claimScript, s.redisKey(req.Key), []string{
		req.Key, string(req.Fingerprint[:]), tokenString(req.Token), millis(req.Now),
		millis(req.LeaseUntil), millis(req.ExpiresAt), strconv.FormatInt(ttlMillis(req.Now, req.ExpiresAt), 10),
	})
	if err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("redis: claim: %w", err)
	}
	if v.isInt {
		if v.n == 1 {
			return idempotency.ClaimResult{Claimed: true}, nil
		}
		return idempotency.ClaimResult{}, fmt.Errorf("redis: claim: unexpected script reply %d", v.n)
	}
	rec, err := decodeRecord(req.Key, v.arr)
	if err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("redis: claim: %w", err)
	}
	if rec == nil {
		return idempotency.ClaimResult{}, fmt.Errorf("redis: claim: script returned an empty record")
	}
	return idempotency.ClaimResult{Existing: rec}, nil
}

func millis(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// fenced runs a token-checked script and maps its 0/1 reply.
func (s *Store) fenced(ctx context.Context, op string, sc *script, key string, args ...string) error {
	v, err := s.c.eval(ctx, sc, s.redisKey(key), args)
	if err != nil {
		return fmt.Errorf("redis: %s: %w", op, err)
	}
	if !v.isInt {
		return fmt.Errorf("redis: %s: unexpected script reply", op)
	}
	if v.n != 1 {
		return idempotency.ErrFenced
	}
	return nil
}

// Renew implements idempotency.Store in one script call. It does not
// change the record's Redis TTL.
func (s *Store) Renew(ctx context.Context, key string, token uint64, now, leaseUntil, expiresAt time.Time) error {
	return s.fenced(ctx, "renew", renewScript, key, tokenString(token), millis(leaseUntil),
		millis(expiresAt), strconv.FormatInt(ttlMillis(now, expiresAt), 10))
}

// Complete implements idempotency.Store in one script call. The Redis TTL
// becomes expiresAt-now+TTLSlack.
func (s *Store) Complete(ctx context.Context, key string, token uint64, resp idempotency.Response, now, expiresAt time.Time) error {
	return s.fenced(ctx, "complete", completeScript, key, tokenString(token),
		string(idempotency.MarshalResponse(resp)), millis(expiresAt), strconv.FormatInt(ttlMillis(now, expiresAt), 10))
}

// Release implements idempotency.Store in one script call.
func (s *Store) Release(ctx context.Context, key string, token uint64) error {
	return s.fenced(ctx, "release", releaseScript, key, tokenString(token))
}

// MarkUnknown implements idempotency.Store in one script call. The Redis
// TTL becomes expiresAt-now+TTLSlack.
func (s *Store) MarkUnknown(ctx context.Context, key string, token uint64, now, expiresAt time.Time) error {
	return s.fenced(ctx, "mark unknown", unknownScript, key, tokenString(token), millis(now),
		millis(expiresAt), strconv.FormatInt(ttlMillis(now, expiresAt), 10))
}

// Features implements idempotency.Store: the store cannot list (see List).
func (s *Store) Features() idempotency.Features { return idempotency.Features{} }

// List implements idempotency.Store by returning
// idempotency.ErrListUnsupported. Records are independent hashes spread
// over the keyspace (and, on a Cluster, over every shard); listing them by
// state would take a SCAN of every key on every node, or a secondary index
// (a set per state) written by every claim and completion — one more
// command per request, in another hash slot than the record, so no longer
// atomic with it on a Cluster. Neither is worth it for an operator's
// listing: held keys are announced by the unknown-outcome event and its
// WARN log, which carry the scoped key for Inspect and Resolve.
func (s *Store) List(context.Context, idempotency.ListRequest) ([]idempotency.Record, error) {
	return nil, idempotency.ErrListUnsupported
}

// Lookup implements idempotency.Store with one HMGET.
func (s *Store) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	v, err := s.c.hmget(ctx, s.redisKey(key), recordFields[:])
	if err != nil {
		return nil, fmt.Errorf("redis: lookup: %w", err)
	}
	rec, err := decodeRecord(key, v)
	if err != nil {
		return nil, fmt.Errorf("redis: lookup: %w", err)
	}
	if rec == nil || !now.Before(rec.ExpiresAt) {
		return nil, idempotency.ErrNotFound
	}
	return rec, nil
}

var errCorrupt = errors.New("corrupt idempotency record")

// decodeRecord parses the recordFields values of key's hash. It returns
// nil, nil when the record does not exist (no state field).
func decodeRecord(key string, v []field) (*idempotency.Record, error) {
	if len(v) != len(recordFields) {
		return nil, fmt.Errorf("%w: %d fields, want %d", errCorrupt, len(v), len(recordFields))
	}
	if !v[0].ok {
		return nil, nil
	}
	rec := &idempotency.Record{Key: key}
	switch v[0].s {
	case stateInProgress:
		rec.State = idempotency.StateInProgress
	case stateCompleted:
		rec.State = idempotency.StateCompleted
	case stateUnknown:
		rec.State = idempotency.StateUnknown
	default:
		return nil, fmt.Errorf("%w: state %q", errCorrupt, v[0].s)
	}
	var err error
	if rec.Token, err = strconv.ParseUint(v[1].s, 10, 64); err != nil {
		return nil, fmt.Errorf("%w: token: %w", errCorrupt, err)
	}
	lease, err := strconv.ParseInt(v[2].s, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: lease: %w", errCorrupt, err)
	}
	exp, err := strconv.ParseInt(v[3].s, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: exp: %w", errCorrupt, err)
	}
	rec.LeaseUntil = time.UnixMilli(lease).UTC()
	rec.ExpiresAt = time.UnixMilli(exp).UTC()
	if len(v[4].s) != len(rec.Fingerprint) {
		return nil, fmt.Errorf("%w: fingerprint is %d bytes", errCorrupt, len(v[4].s))
	}
	copy(rec.Fingerprint[:], v[4].s)
	if rec.State == idempotency.StateCompleted {
		if !v[5].ok {
			return nil, fmt.Errorf("%w: completed without a response", errCorrupt)
		}
		resp, err := idempotency.UnmarshalResponse([]byte(v[5].s))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errCorrupt, err)
		}
		rec.Response = &resp
	}
	return rec, nil
}
