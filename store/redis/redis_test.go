package redis_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/idempotency/idemtest"
	"github.com/leveehq/levee/store/redis"
)

// The store must accept every go-redis client shape.
var (
	_ = redis.New((*goredis.Client)(nil), redis.Options{})
	_ = redis.New((*goredis.Ring)(nil), redis.Options{})
	_ = redis.New((*goredis.ClusterClient)(nil), redis.Options{})
)

// redisOptions returns the connection settings from LEVEE_REDIS_ADDR and
// LEVEE_REDIS_DB, skipping the test (failing it when CI=true) when the
// server is unreachable.
func redisOptions(t testing.TB) *goredis.Options {
	t.Helper()
	addr := os.Getenv("LEVEE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	db := 0
	if v := os.Getenv("LEVEE_REDIS_DB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("LEVEE_REDIS_DB=%q: %v", v, err)
		}
		db = n
	}
	opts := &goredis.Options{Addr: addr, DB: db}
	c := goredis.NewClient(&goredis.Options{Addr: addr, DB: db, DialerRetries: 1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		msg := "Redis is not reachable at " + addr + " (set LEVEE_REDIS_ADDR / LEVEE_REDIS_DB): " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return opts
}

// counter counts commands sent by a client: one per command, one per
// pipeline. It is the round-trip count the suite checks.
type counter struct{ n atomic.Int64 }

func (c *counter) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (c *counter) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

func newPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "levee:test:" + hex.EncodeToString(b[:]) + ":"
}

// newClient returns a client with its own pool, closed at cleanup.
func newClient(t testing.TB, opts *goredis.Options) *goredis.Client {
	c := goredis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// deletePrefix removes every key under prefix (only keys this test made).
func deletePrefix(t testing.TB, opts *goredis.Options, prefix string) {
	t.Cleanup(func() {
		c := goredis.NewClient(opts)
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 500).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 500 {
				c.Unlink(ctx, batch...)
				batch = batch[:0]
			}
		}
		if len(batch) > 0 {
			c.Unlink(ctx, batch...)
		}
		if err := iter.Err(); err != nil {
			t.Errorf("cleaning up %s*: %v", prefix, err)
		}
	})
}

type instance struct {
	prefix string
	opts   *goredis.Options
	rt     *counter
}

// newStore returns a loaded store under a fresh prefix on its own client.
func newStore(t testing.TB, opts *goredis.Options, prefix string) (*redis.Store, *counter, *goredis.Client) {
	t.Helper()
	c := newClient(t, opts)
	rt := &counter{}
	c.AddHook(rt)
	s := redis.New(c, redis.Options{Prefix: prefix})
	if err := s.Load(context.Background()); err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s, rt, c
}

func TestConformance(t *testing.T) {
	opts := redisOptions(t)
	var instances sync.Map // *redis.Store -> instance
	idemtest.Run(t, idemtest.Harness{
		NewStore: func(t testing.TB) idempotency.Store {
			prefix := newPrefix()
			deletePrefix(t, opts, prefix)
			s, rt, _ := newStore(t, opts, prefix)
			instances.Store(s, instance{prefix, opts, rt})
			return s
		},
		Replica: func(t testing.TB, s idempotency.Store) idempotency.Store {
			v, _ := instances.Load(s)
			in := v.(instance)
			r, rt, _ := newStore(t, in.opts, in.prefix)
			instances.Store(r, instance{in.prefix, in.opts, rt})
			return r
		},
		RoundTrips: func(s idempotency.Store) int64 {
			v, _ := instances.Load(s)
			return v.(instance).rt.n.Load()
		},
	})
}

// countingClient counts the commands a rueidis client sends: the
// round-trip count the suite checks.
type countingClient struct {
	rueidis.Client
	n *atomic.Int64
}

func (c countingClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.n.Add(1)
	return c.Client.Do(ctx, cmd)
}

// newRueidisStore returns a loaded store under prefix on its own rueidis
// client, and its command counter.
func newRueidisStore(t testing.TB, opts *goredis.Options, prefix string) (*redis.Store, *atomic.Int64) {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{opts.Addr}, SelectDB: opts.DB, DisableCache: true})
	if err != nil {
		t.Fatalf("rueidis: %v", err)
	}
	t.Cleanup(c.Close)
	n := new(atomic.Int64)
	s := redis.NewRueidis(countingClient{c, n}, redis.Options{Prefix: prefix})
	if err := s.Load(context.Background()); err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s, n
}

// The whole suite again on rueidis, the client the gateway uses.
func TestConformanceRueidis(t *testing.T) {
	opts := redisOptions(t)
	type inst struct {
		prefix string
		n      *atomic.Int64
	}
	var instances sync.Map // *redis.Store -> inst
	idemtest.Run(t, idemtest.Harness{
		NewStore: func(t testing.TB) idempotency.Store {
			prefix := newPrefix()
			deletePrefix(t, opts, prefix)
			s, n := newRueidisStore(t, opts, prefix)
			instances.Store(s, inst{prefix, n})
			return s
		},
		Replica: func(t testing.TB, s idempotency.Store) idempotency.Store {
			v, _ := instances.Load(s)
			r, n := newRueidisStore(t, opts, v.(inst).prefix)
			instances.Store(r, inst{v.(inst).prefix, n})
			return r
		},
		RoundTrips: func(s idempotency.Store) int64 {
			v, _ := instances.Load(s)
			return v.(inst).n.Load()
		},
	})
}

// Replicas on either client library share the same records.
func TestGoRedisAndRueidisShareRecords(t *testing.T) {
	opts := redisOptions(t)
	prefix := newPrefix()
	deletePrefix(t, opts, prefix)
	gr, _, _ := newStore(t, opts, prefix)
	ru, _ := newRueidisStore(t, opts, prefix)
	ctx := context.Background()
	now := time.Now()
	for i, pair := range [][2]*redis.Store{{gr, ru}, {ru, gr}} {
		key := idempotency.ScopedKey("mix", "", strconv.Itoa(i))
		req := idempotency.ClaimRequest{Key: key, Token: idempotency.NewToken(), Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
		req.Fingerprint[0], req.Fingerprint[31] = 0xff, 0x00 // binary bytes survive both clients
		if res, err := pair[0].Claim(ctx, req); err != nil || !res.Claimed {
			t.Fatalf("Claim: %+v, %v", res, err)
		}
		if err := pair[0].Complete(ctx, key, req.Token, idempotency.Response{Status: 201, Body: []byte("charged\x00\xff")}, now, now.Add(time.Hour)); err != nil {
			t.Fatalf("Complete: %v", err)
		}
		req2 := req
		req2.Token = idempotency.NewToken()
		res, err := pair[1].Claim(ctx, req2)
		if err != nil || res.Claimed || res.Existing == nil || res.Existing.Fingerprint != req.Fingerprint ||
			string(res.Existing.Response.Body) != "charged\x00\xff" || res.Existing.Token != req.Token {
			t.Fatalf("replay on the other client: %+v, %v", res, err)
		}
		if rec, err := pair[1].Lookup(ctx, key, now); err != nil || rec.State != idempotency.StateCompleted {
			t.Fatalf("Lookup on the other client: %+v, %v", rec, err)
		}
	}
}

func BenchmarkStore(b *testing.B) {
	opts := redisOptions(b)
	prefix := newPrefix()
	deletePrefix(b, opts, prefix)
	s, _, c := newStore(b, opts, prefix)
	idemtest.Bench(b, s)
	b.Run("rueidis", func(b *testing.B) {
		rs, _ := newRueidisStore(b, opts, prefix)
		idemtest.Bench(b, rs)
	})
	// The floor: one bare round trip on the same client. A new request
	// should cost about 2 of these, a replay about 1.
	b.Run("RoundTripFloorPING", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if err := c.Ping(context.Background()).Err(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestTTL checks that records carry a physical TTL derived from the
// engine's times (ExpiresAt-Now+TTLSlack) and that Renew does not shorten
// it.
func TestTTL(t *testing.T) {
	opts := redisOptions(t)
	prefix := newPrefix()
	deletePrefix(t, opts, prefix)
	s, _, c := newStore(t, opts, prefix)
	ctx := context.Background()
	// The engine's clock is far from Redis's: the TTL must be relative.
	now := time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
	const retention = 24 * time.Hour
	pttl := func(key string) time.Duration {
		t.Helper()
		d, err := c.PTTL(ctx, prefix+"{"+key+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	check := func(what string, d, limit time.Duration) {
		t.Helper()
		if d <= 0 || d > limit {
			t.Fatalf("%s: PTTL %v, want in (0, %v]", what, d, limit)
		}
	}

	claimed := idempotency.ScopedKey("ttl", "", "claimed")
	req := idempotency.ClaimRequest{Key: claimed, Token: idempotency.NewToken(), Now: now,
		LeaseUntil: now.Add(30 * time.Second), ExpiresAt: now.Add(retention)}
	if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
		t.Fatalf("Claim: %+v %v", res, err)
	}
	d := pttl(claimed)
	check("claimed", d, retention+redis.TTLSlack)
	if d <= retention {
		t.Fatalf("claimed: PTTL %v, want above the retention %v (slack)", d, retention)
	}
	if err := s.Renew(ctx, claimed, req.Token, now, now.Add(time.Minute), req.ExpiresAt); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if after := pttl(claimed); after < d-10*time.Second {
		t.Fatalf("Renew shortened the TTL from %v to %v", d, after)
	}

	completed := idempotency.ScopedKey("ttl", "", "completed")
	req.Key = completed
	if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
		t.Fatalf("Claim: %+v %v", res, err)
	}
	const kept = time.Hour
	if err := s.Complete(ctx, completed, req.Token, idempotency.Response{Status: 201}, now, now.Add(kept)); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	check("completed", pttl(completed), kept+redis.TTLSlack)
}

// TestKeyLayout checks the documented key layout: hex scoped keys are used
// as the hash tag, other keys by their SHA-256, and the original key is
// kept in the "key" field.
func TestKeyLayout(t *testing.T) {
	opts := redisOptions(t)
	prefix := newPrefix()
	deletePrefix(t, opts, prefix)
	s, _, c := newStore(t, opts, prefix)
	ctx := context.Background()
	now := time.Now()
	odd := "{tag} ü " + strings.Repeat("x", 300)
	sum := sha256.Sum256([]byte(odd))
	hexKey := idempotency.ScopedKey("s", "t", "k")
	for key, want := range map[string]string{
		hexKey: prefix + "{" + hexKey + "}",
		odd:    prefix + "{sha256:" + hex.EncodeToString(sum[:]) + "}",
	} {
		req := idempotency.ClaimRequest{Key: key, Token: idempotency.NewToken(), Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
		if _, err := s.Claim(ctx, req); err != nil {
			t.Fatal(err)
		}
		got, err := c.HGet(ctx, want, "key").Result()
		if err != nil || got != key {
			t.Fatalf("HGET %s key = %q, %v; want %q", want, got, err, key)
		}
		rec, err := s.Lookup(ctx, key, now)
		if err != nil || rec.Key != key || rec.Token != req.Token {
			t.Fatalf("Lookup(%q) = %+v, %v", key, rec, err)
		}
	}
}

// TestCorruptRecordIsNotOverwritten checks that a record the store cannot
// parse fails every operation instead of being replaced.
func TestCorruptRecordIsNotOverwritten(t *testing.T) {
	opts := redisOptions(t)
	prefix := newPrefix()
	deletePrefix(t, opts, prefix)
	s, _, c := newStore(t, opts, prefix)
	ctx := context.Background()
	now := time.Now()
	key := idempotency.ScopedKey("corrupt", "", "k")
	rk := prefix + "{" + key + "}"
	if err := c.HSet(ctx, rk, "state", "completed", "token", "1", "lease", "x", "exp", "y").Err(); err != nil {
		t.Fatal(err)
	}
	req := idempotency.ClaimRequest{Key: key, Token: idempotency.NewToken(), Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	if res, err := s.Claim(ctx, req); err == nil {
		t.Fatalf("Claim over a corrupt record = %+v, want an error", res)
	}
	if _, err := s.Lookup(ctx, key, now); err == nil || errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup of a corrupt record = %v, want a corruption error", err)
	}
	if got, _ := c.HGet(ctx, rk, "lease").Result(); got != "x" {
		t.Fatalf("corrupt record was modified: lease = %q", got)
	}
	// A key of another type is an error too, never a claim.
	wrong := idempotency.ScopedKey("corrupt", "", "string")
	if err := c.Set(ctx, prefix+"{"+wrong+"}", "v", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	req.Key = wrong
	if _, err := s.Claim(ctx, req); err == nil {
		t.Fatal("Claim over a string key succeeded, want WRONGTYPE")
	}
}

// TestUnreachable checks that a dead server yields a wrapped error, never
// ErrFenced or ErrNotFound.
func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, DialerRetries: 1})
	defer c.Close()
	s := redis.New(c, redis.Options{})
	ctx := context.Background()
	now := time.Now()
	if err := s.Load(ctx); err == nil {
		t.Fatal("Load succeeded against a dead server")
	}
	if _, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, LeaseUntil: now, ExpiresAt: now}); err == nil || !strings.HasPrefix(err.Error(), "redis: claim: ") {
		t.Fatalf("Claim = %v, want a wrapped connection error", err)
	}
	for name, err := range map[string]error{
		"Renew":    s.Renew(ctx, "k", 1, now, now, now),
		"Complete": s.Complete(ctx, "k", 1, idempotency.Response{}, now, now),
		"Release":  s.Release(ctx, "k", 1),
	} {
		if err == nil || errors.Is(err, idempotency.ErrFenced) {
			t.Fatalf("%s = %v, want a connection error", name, err)
		}
	}
	if _, err := s.Lookup(ctx, "k", now); err == nil || errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup = %v, want a connection error", err)
	}
}

// TestRing runs a claim, a replay and a lookup through a one-shard Ring.
func TestRing(t *testing.T) {
	opts := redisOptions(t)
	prefix := newPrefix()
	deletePrefix(t, opts, prefix)
	ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"a": opts.Addr}, DB: opts.DB})
	defer ring.Close()
	s := redis.New(ring, redis.Options{Prefix: prefix})
	ctx := context.Background()
	if err := s.Load(ctx); err != nil {
		t.Fatalf("Load: %v", err)
	}
	now := time.Now()
	key := idempotency.ScopedKey("ring", "", "k")
	req := idempotency.ClaimRequest{Key: key, Token: idempotency.NewToken(), Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
		t.Fatalf("Claim: %+v, %v", res, err)
	}
	if err := s.Complete(ctx, key, req.Token, idempotency.Response{Status: 201, Body: []byte("ok")}, now, now.Add(time.Hour)); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	req.Token = idempotency.NewToken()
	res, err := s.Claim(ctx, req)
	if err != nil || res.Claimed || res.Existing == nil || string(res.Existing.Response.Body) != "ok" {
		t.Fatalf("replay through the Ring: %+v, %v", res, err)
	}
}
