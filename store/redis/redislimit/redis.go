// Package redislimit is a ratelimit.Store on Redis, for limits shared by every
// replica. New takes any go-redis client (*goredis.Client, *goredis.Ring,
// *goredis.ClusterClient) created with ContextTimeoutEnabled.
//
// # One round trip, atomically
//
// Decide runs one Lua script (EVALSHA) for all of a request's demands,
// whatever their number: it reads the Redis clock (TIME), decides every
// demand, and only if the request is admitted writes the new state of
// each admitted demand. Redis runs a script without interleaving other
// commands, so decisions are atomic across every replica, a request
// denied by one policy charges none, and there is exactly one clock. A
// script not yet in the server's cache (fresh or restarted server, SCRIPT
// FLUSH) costs one extra round trip once (NOSCRIPT, then EVAL); Load
// caches it eagerly. Release (for concurrency policies) is a second,
// separate script call when the request ends.
//
// # Layout and expiry
//
// Each (policy kind, name, key) is one Redis key:
//
//	<Prefix>{<tag>}:r:<h>   a string: the GCRA TAT in Unix microseconds
//	<Prefix>{<tag>}:c:<h>   a sorted set: in-flight decision ids, scored
//	                        by the Unix microsecond their lease ends
//	<Prefix>{<tag>}:q:<h>   a string "units:period_end" (calendar quota;
//	                        period_end in Unix microseconds)
//
// where h is the first 128 bits of SHA-256(name, key) in hex, so that keys
// such as API keys never reach Redis in clear and every key has the same
// short length. A rate key's TTL is the time until its TAT passes (after
// which the key would be "full" anyway, so expiry changes no decision); a
// concurrency key's TTL is ConcurrencyLease, refreshed by each admission;
// a calendar key's TTL is the end of its period (plus a second).
// A request that runs longer than ConcurrencyLease stops counting against
// its concurrency limit, and a replica that crashes holding slots has them
// back after at most ConcurrencyLease.
//
// # Redis Cluster
//
// A script may only touch keys of one hash slot, so every key of a
// decision carries the same hash tag. By default the tag is the constant
// "all": every decision works, on a single server or a Cluster, but on a
// Cluster all rate-limit state lives on one shard. With
// Options.ShardByKey the tag is derived from the demand's key, spreading
// keys over the Cluster; every demand of one decision must then have the
// same key (for example, all of a route's policies keyed by API key),
// and Decide refuses other decisions with ErrCrossSlot.
//
// # Calendar quotas
//
// The replica computes the boundaries of the previous, current and next
// calendar period in the policy's time zone (Go's time zone database) and
// passes them with the demand; the script charges the period that holds
// Redis TIME. So a calendar quota is decided in the same script call as
// the request's other policies, by the one Redis clock, and a replica
// whose clock is off by less than a period charges the right one.
//
// # Connections
//
// Warm opens a number of pooled connections at once, so that a burst of
// that many concurrent decisions does not wait for dials; the gateway
// does it at start for its whole pool.
//
// # Failures
//
// Every Redis error (unreachable, timeout, canceled context, corrupt or
// wrong-type state) is returned wrapped; nothing was charged, except that
// a call that timed out after the server ran it may have charged once.
// The deadline of the context bounds every call only if the client has
// ContextTimeoutEnabled, which New therefore requires.
package redislimit

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/internal/redisscript"

	"github.com/leveehq/levee/ratelimit"
)

//go:embed decide.lua
var decideLua string

//go:embed release.lua
var releaseLua string

// DecideScript is the Lua source of the decision script, for tools that
// load it themselves (bench/redis-evalsha-floor.sh uses the same file).
func DecideScript() string { return decideLua }

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "levee:rl:"

// DefaultConcurrencyLease is the lease used when Options.ConcurrencyLease
// is zero.
const DefaultConcurrencyLease = time.Minute

// ErrCrossSlot is returned (wrapping ratelimit.ErrInvalidDemand) when
// ShardByKey is set and the demands of one decision have different keys.
var ErrCrossSlot = errors.New("redislimit: demands of one decision must share a key when ShardByKey is set")

// ErrNoContextTimeout is returned by New for a go-redis client created
// without ContextTimeoutEnabled, which would ignore the middleware's
// deadline and could hang a request for the client's ReadTimeout.
var ErrNoContextTimeout = errors.New("redislimit: the go-redis client must have ContextTimeoutEnabled: true so that context deadlines bound every call")

// rediser lists the go-redis commands the store uses. *goredis.Client,
// *goredis.Ring and *goredis.ClusterClient implement it.
type rediser interface {
	goredis.Scripter // EVALSHA with EVAL fallback, SCRIPT LOAD
}

// Options configure a Store. The zero value is a sensible default.
type Options struct {
	// Prefix starts every Redis key. Default DefaultPrefix ("levee:rl:").
	// It must not contain '{' or '}'.
	Prefix string
	// ConcurrencyLease bounds how long a concurrency slot counts without
	// being released (see the package doc). Default
	// DefaultConcurrencyLease (1 minute); at least 1 ms.
	ConcurrencyLease time.Duration
	// ShardByKey tags Redis keys by the demand's key instead of one
	// constant tag, spreading state over a Cluster; see the package doc.
	ShardByKey bool
}

// Store is a ratelimit.Store on Redis. It is safe for concurrent use and
// holds no connections of its own: the client passed to New does.
type Store struct {
	c       rediser
	prefix  string
	leaseUS int64
	shard   bool
	decide  *goredis.Script
	release *goredis.Script
}

var _ ratelimit.Store = (*Store)(nil)

// Features implements ratelimit.Store: a networked store on Redis's clock.
func (s *Store) Features() ratelimit.Features { return ratelimit.Features{} }

// New returns a Store that keeps its state in Redis through client. It
// does no I/O; see Load. It fails with ErrNoContextTimeout for a
// *goredis.Client, *goredis.Ring or *goredis.ClusterClient created
// without ContextTimeoutEnabled, and for invalid options.
func New(client rediser, opts Options) (*Store, error) {
	var ctxTimeout = true
	switch c := client.(type) {
	case *goredis.Client:
		ctxTimeout = c.Options().ContextTimeoutEnabled
	case *goredis.ClusterClient:
		ctxTimeout = c.Options().ContextTimeoutEnabled
	case *goredis.Ring:
		ctxTimeout = c.Options().ContextTimeoutEnabled
	}
	if !ctxTimeout {
		return nil, ErrNoContextTimeout
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	for _, c := range opts.Prefix {
		if c == '{' || c == '}' {
			return nil, fmt.Errorf("redislimit: Prefix %q contains a brace", opts.Prefix)
		}
	}
	if opts.ConcurrencyLease == 0 {
		opts.ConcurrencyLease = DefaultConcurrencyLease
	}
	if opts.ConcurrencyLease < time.Millisecond || opts.ConcurrencyLease > ratelimit.MaxPeriod {
		return nil, fmt.Errorf("redislimit: ConcurrencyLease %v is out of range 1ms..%v", opts.ConcurrencyLease, ratelimit.MaxPeriod)
	}
	return &Store{
		c:       client,
		prefix:  opts.Prefix,
		leaseUS: int64(opts.ConcurrencyLease / time.Microsecond),
		shard:   opts.ShardByKey,
		decide:  goredis.NewScript(decideLua),
		release: goredis.NewScript(releaseLua),
	}, nil
}

// Load loads the scripts into the script cache of the server (every shard
// of a Ring or Cluster), so that the first decisions cost one round trip
// instead of two. It is optional and safe to call again at any time.
func (s *Store) Load(ctx context.Context) error {
	if err := redisscript.Load(ctx, s.c, s.decide, s.release); err != nil {
		return fmt.Errorf("redislimit: load scripts: %w", err)
	}
	return nil
}

// Warm opens n connections in the pool of the client passed to New (on
// every shard of a Cluster or Ring) and returns them to it idle, so that
// a burst of up to n concurrent decisions does not queue behind dials.
// The client's PoolSize should be at least n and its ConnMaxIdleTime long
// (or MinIdleConns = n) for the connections to stay. A client of another
// type is left alone. It fails with the first connection that cannot be
// opened (the others stay in the pool), or when ctx ends.
func (s *Store) Warm(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	var err error
	switch c := s.c.(type) {
	case *goredis.Client:
		err = warm(ctx, c, n)
	case *goredis.ClusterClient:
		err = c.ForEachShard(ctx, func(ctx context.Context, sc *goredis.Client) error { return warm(ctx, sc, n) })
	case *goredis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, sc *goredis.Client) error { return warm(ctx, sc, n) })
	}
	if err != nil {
		return fmt.Errorf("redislimit: warm %d connections: %w", n, err)
	}
	return nil
}

// warm holds n connections of c at once (each checked with a PING), then
// gives them back to the pool.
func warm(ctx context.Context, c *goredis.Client, n int) error {
	n = min(n, c.Options().PoolSize)
	conns := make([]*goredis.Conn, n)
	errs := make([]error, n)
	done := make(chan int, n)
	for i := range conns {
		go func() {
			conns[i] = c.Conn()
			errs[i] = conns[i].Ping(ctx).Err()
			done <- i
		}()
	}
	for range n {
		<-done
	}
	for _, cn := range conns {
		_ = cn.Close() // back to the pool
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// Key returns the Redis key holding the state of d (see the package doc).
func (s *Store) Key(d ratelimit.Demand) string { return s.key(d, s.tag(d.Key)) }

// key is Key with the hash tag already computed (one per Decide: every
// demand of a sharded store has the same key).
func (s *Store) key(d ratelimit.Demand, tag string) string {
	var stack [256]byte
	b := append(stack[:0], d.Policy.Name...)
	b = append(b, 0) // names are printable ASCII: the separator is unambiguous
	b = append(b, d.Key...)
	sum := sha256.Sum256(b)
	kind := "r"
	switch d.Policy.Kind {
	case ratelimit.KindConcurrency:
		kind = "c"
	case ratelimit.KindCalendar:
		kind = "q"
	}
	return s.prefix + "{" + tag + "}:" + kind + ":" + hex.EncodeToString(sum[:16])
}

func (s *Store) tag(key string) string {
	if !s.shard {
		return "all"
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}

// demandError is an error that also matches ratelimit.ErrInvalidDemand.
type demandError struct{ err error }

func (e *demandError) Error() string   { return e.err.Error() }
func (e *demandError) Unwrap() []error { return []error{e.err, ratelimit.ErrInvalidDemand} }

// Decide implements ratelimit.Store in one script call. now is ignored:
// the script reads the Redis clock (calendar quotas send the boundaries of
// the periods around this process's clock, and the script picks the one
// holding Redis TIME).
func (s *Store) Decide(ctx context.Context, _ time.Time, demands []ratelimit.Demand, results []ratelimit.Result) (ratelimit.Ticket, error) {
	if err := ratelimit.CheckDemands(demands, results); err != nil {
		return ratelimit.Ticket{}, err
	}
	if s.shard {
		for i := 1; i < len(demands); i++ {
			if demands[i].Key != demands[0].Key {
				return ratelimit.Ticket{}, &demandError{ErrCrossSlot}
			}
		}
	}
	keys := make([]string, len(demands))
	args := make([]any, 1, 1+4*len(demands))
	var id uint64
	var cal [][4]int64           // period boundaries of calendar demands, by demand (nil if none)
	tag := s.tag(demands[0].Key) // the same for every demand (checked above when sharded)
	for i := range demands {
		d := &demands[i]
		keys[i] = s.key(*d, tag)
		kind, a, b := "r", d.Policy.Interval().Microseconds(), any(int64(0))
		switch d.Policy.Kind {
		case ratelimit.KindConcurrency:
			kind, a, b = "c", d.Policy.Limit, s.leaseUS
			if id == 0 {
				id = rand.Uint64() | 1
			}
		case ratelimit.KindCalendar:
			if cal == nil {
				cal = make([][4]int64, len(demands))
			}
			cal[i] = boundaries(d.Policy, time.Now())
			kind, a, b = "q", d.Policy.Limit, fmt.Sprintf("%d:%d:%d:%d", cal[i][0], cal[i][1], cal[i][2], cal[i][3])
		default:
			b = a * d.Policy.EffectiveBurst()
		}
		if d.Shadow {
			kind += "s"
		}
		args = append(args, kind, a, b, d.Cost)
	}
	member := strconv.FormatUint(id, 36)
	args[0] = member
	v, err := s.decide.Run(ctx, s.c, keys, args...).Int64Slice()
	if err != nil {
		return ratelimit.Ticket{}, fmt.Errorf("redislimit: decide: %w", err)
	}
	if len(v) != 1+4*len(demands) {
		return ratelimit.Ticket{}, fmt.Errorf("redislimit: decide: script returned %d values for %d demands", len(v), len(demands))
	}
	var tk ratelimit.Ticket
	admitted := v[0] == 1
	for i := range demands {
		o := 1 + 4*i
		results[i] = ratelimit.Result{
			Allowed:    v[o] == 1,
			Remaining:  v[o+1],
			RetryAfter: time.Duration(v[o+2]) * time.Microsecond,
			ResetAfter: time.Duration(v[o+3]) * time.Microsecond,
		}
		if demands[i].Policy.Kind == ratelimit.KindCalendar {
			results[i].Window = periodOf(cal[i], time.Now().Add(results[i].ResetAfter))
		}
		if demands[i].Policy.Kind == ratelimit.KindConcurrency {
			if !results[i].Allowed {
				results[i].RetryAfter = ratelimit.ConcurrencyRetryAfter // as Local: one constant
			} else if admitted {
				tk.Held |= 1 << i
			}
		}
	}
	if tk.Held != 0 {
		tk.ID = id
	}
	return tk, nil
}

// boundaries returns the Unix µs boundaries of the calendar periods of p
// before, at and after now: [b0,b1) [b1,b2) [b2,b3), the middle one
// holding now. The script picks the one holding the Redis clock, so a
// replica whose clock is off by less than a period still charges the
// period Redis is in.
func boundaries(p ratelimit.Policy, now time.Time) [4]int64 {
	start, end := p.Window(now)
	prev, _ := p.Window(start.Add(-time.Nanosecond))
	_, next := p.Window(end)
	return [4]int64{prev.UnixMicro(), start.UnixMicro(), end.UnixMicro(), next.UnixMicro()}
}

// periodOf returns the length of the period in b whose end is nearest to
// end (the end the script used, estimated from its reset).
func periodOf(b [4]int64, end time.Time) time.Duration {
	e := end.UnixMicro()
	best := 1
	for i := 2; i <= 3; i++ {
		if abs(b[i]-e) < abs(b[best]-e) {
			best = i
		}
	}
	return time.Duration(b[best]-b[best-1]) * time.Microsecond
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// Release implements ratelimit.Store in one script call.
func (s *Store) Release(ctx context.Context, demands []ratelimit.Demand, t ratelimit.Ticket) error {
	if t.Held == 0 {
		return nil
	}
	var keys []string
	for i := range demands {
		if i < 64 && t.Held&(1<<i) != 0 {
			keys = append(keys, s.Key(demands[i]))
		}
	}
	if len(keys) == 0 {
		return nil
	}
	if err := s.release.Run(ctx, s.c, keys, strconv.FormatUint(t.ID, 36)).Err(); err != nil {
		return fmt.Errorf("redislimit: release: %w", err)
	}
	return nil
}
