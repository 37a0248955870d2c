// Package redisresilience keeps resilience state in Redis so that every replica
// sees the same thing: a shared circuit breaker (a resilience.BreakerStore)
// and shared pauses (a resilience.PauseStore: one 429 with Retry-After
// pauses every replica's callers). For a third party's quota shared by
// replicas use store/redis/redislimit as LimitSettings.Store.
//
// # Breaker
//
// Each breaker is one hash, <Prefix>b:<name>, changed only by two Lua
// scripts (EVALSHA) that run the same state machine as the in-process
// store, on the Redis server's clock (TIME), so replicas with skewed
// clocks agree on cooldowns:
//
//   - acquire admits an attempt, moving an open breaker whose cooldown is
//     over to half-open and handing out the half-open probe slots, so that
//     HalfOpenProbes is a limit across all replicas;
//   - record counts an attempt's end (consecutive failures, and a failure
//     ratio over 10 buckets of the window) and trips, closes or re-opens
//     the breaker; an outcome from an older generation is ignored.
//
// A replica answers an open breaker from memory until the cooldown it was
// told ends (no I/O), admits on a closed breaker from memory for up to
// BreakerSettings.Sync, and records every outcome (one round trip per
// attempt, whose answer refreshes its view). The hash expires after twice
// the longer of the cooldown and the window without writes: a breaker
// nobody used for that long is closed.
//
// # Pauses
//
// A pause is one key, <Prefix>p:<upstream>, whose TTL is the pause: Pause
// extends it (never shortens), Paused reads PTTL.
//
// # Failures
//
// Errors are returned wrapped; the resilience policies then fail open
// (admit the attempt, record nothing). Every call is bounded by its
// context's deadline, which requires a go-redis client created with
// ContextTimeoutEnabled (New checks).
package redisresilience

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/internal/redisscript"
	"github.com/leveehq/levee/resilience"
)

//go:embed acquire.lua
var acquireLua string

//go:embed record.lua
var recordLua string

//go:embed pause.lua
var pauseLua string

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "levee:res:"

// ErrNoContextTimeout is returned by New for a go-redis client created
// without ContextTimeoutEnabled.
var ErrNoContextTimeout = errors.New("redisresilience: the go-redis client must have ContextTimeoutEnabled: true so that context deadlines bound every call")

// rediser lists the go-redis commands the store uses; *goredis.Client,
// *goredis.Ring and *goredis.ClusterClient implement it.
type rediser interface {
	goredis.Scripter
	PTTL(ctx context.Context, key string) *goredis.DurationCmd
}

// Options configure a Store. The zero value is the default.
type Options struct {
	// Prefix starts every key. Default DefaultPrefix ("levee:res:").
	Prefix string
}

// Store keeps breakers and pauses in Redis. Safe for concurrent use; the
// client passed to New holds the connections.
type Store struct {
	c       rediser
	prefix  string
	acquire *goredis.Script
	record  *goredis.Script
	pause   *goredis.Script
}

var (
	_ resilience.BreakerStore = (*Store)(nil)
	_ resilience.PauseStore   = (*Store)(nil)
)

// New returns a Store on client. It does no I/O (see Load). It fails with
// ErrNoContextTimeout for a client without ContextTimeoutEnabled.
func New(client rediser, opts Options) (*Store, error) {
	ok := true
	switch c := client.(type) {
	case *goredis.Client:
		ok = c.Options().ContextTimeoutEnabled
	case *goredis.ClusterClient:
		ok = c.Options().ContextTimeoutEnabled
	case *goredis.Ring:
		ok = c.Options().ContextTimeoutEnabled
	}
	if !ok {
		return nil, ErrNoContextTimeout
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	return &Store{c: client, prefix: opts.Prefix, acquire: goredis.NewScript(acquireLua),
		record: goredis.NewScript(recordLua), pause: goredis.NewScript(pauseLua)}, nil
}

// Load loads the scripts into the server's cache (every shard of a Ring
// or Cluster) so the first calls cost one round trip, not two. Optional.
func (s *Store) Load(ctx context.Context) error {
	if err := redisscript.Load(ctx, s.c, s.acquire, s.record, s.pause); err != nil {
		return fmt.Errorf("redisresilience: load scripts: %w", err)
	}
	return nil
}

// BreakerKey returns the key of breaker name.
func (s *Store) BreakerKey(name string) string { return s.prefix + "b:" + name }

// PauseKey returns the key of upstream's pause.
func (s *Store) PauseKey(upstream string) string { return s.prefix + "p:" + upstream }

func ttlMS(cfg resilience.BreakerConfig) int64 {
	return int64(2*max(cfg.Cooldown, cfg.Window)/time.Millisecond) + 1000
}

func view(v any) (resilience.BreakerView, error) {
	vals, ok := v.([]any)
	if !ok || len(vals) < 3 {
		return resilience.BreakerView{}, fmt.Errorf("redisresilience: unexpected script reply %v", v)
	}
	n := make([]int64, len(vals))
	for i, x := range vals {
		if n[i], ok = x.(int64); !ok {
			return resilience.BreakerView{}, fmt.Errorf("redisresilience: unexpected script reply %v", v)
		}
	}
	if n[0] < 0 || n[0] > 2 || n[1] < 0 {
		return resilience.BreakerView{}, fmt.Errorf("redisresilience: corrupt breaker state %v", v)
	}
	bv := resilience.BreakerView{State: resilience.BreakerState(n[0]), Gen: uint64(n[1]), Remaining: time.Duration(max(n[2], 0)) * time.Microsecond}
	if len(n) >= 5 {
		bv.Admitted, bv.Probe = n[3] == 1, n[4] == 1
	}
	return bv, nil
}

// Acquire implements resilience.BreakerStore (now is ignored: the server's
// clock decides).
func (s *Store) Acquire(ctx context.Context, _ time.Time, name string, cfg resilience.BreakerConfig) (resilience.BreakerView, error) {
	v, err := s.acquire.Run(ctx, s.c, []string{s.BreakerKey(name)}, cfg.HalfOpenProbes, ttlMS(cfg)).Result()
	if err != nil {
		return resilience.BreakerView{}, fmt.Errorf("redisresilience: breaker %q: acquire: %w", name, err)
	}
	return view(v)
}

func b01(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Record implements resilience.BreakerStore (now is ignored).
func (s *Store) Record(ctx context.Context, _ time.Time, name string, cfg resilience.BreakerConfig, r resilience.BreakerRecord) (resilience.BreakerView, error) {
	v, err := s.record.Run(ctx, s.c, []string{s.BreakerKey(name)},
		strconv.FormatUint(r.Gen, 10), b01(r.Probe), b01(r.Failure), b01(r.Ignore),
		cfg.ConsecutiveFailures, strconv.FormatFloat(cfg.FailureRatio, 'g', -1, 64), cfg.MinCalls,
		int64(cfg.Window/time.Microsecond), int64(cfg.Cooldown/time.Microsecond), cfg.HalfOpenProbes, ttlMS(cfg)).Result()
	if err != nil {
		return resilience.BreakerView{}, fmt.Errorf("redisresilience: breaker %q: record: %w", name, err)
	}
	return view(v)
}

// Pause implements resilience.PauseStore (now is ignored; the pause runs
// on the server's clock). d is rounded up to a whole millisecond.
func (s *Store) Pause(ctx context.Context, _ time.Time, upstream string, d time.Duration) error {
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	if ms <= 0 {
		return nil
	}
	if err := s.pause.Run(ctx, s.c, []string{s.PauseKey(upstream)}, ms).Err(); err != nil {
		return fmt.Errorf("redisresilience: pause %q: %w", upstream, err)
	}
	return nil
}

// Paused implements resilience.PauseStore: one PTTL.
func (s *Store) Paused(ctx context.Context, _ time.Time, upstream string) (time.Duration, error) {
	d, err := s.c.PTTL(ctx, s.PauseKey(upstream)).Result()
	if err != nil {
		return 0, fmt.Errorf("redisresilience: paused %q: %w", upstream, err)
	}
	return max(d, 0), nil
}
