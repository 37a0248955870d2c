package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/idempotency/idemtest"
	"github.com/leveehq/levee/store/postgres"
)

const defaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

func databaseURL() string {
	if u := os.Getenv("LEVEE_POSTGRES_URL"); u != "" {
		return u
	}
	return defaultURL
}

// unreachable fails the test under CI=true and skips it otherwise.
func unreachable(t testing.TB, err error) {
	t.Helper()
	where := "LEVEE_POSTGRES_URL"
	if u, perr := url.Parse(databaseURL()); perr == nil && u.Host != "" {
		where = u.Redacted()
	}
	msg := fmt.Sprintf("PostgreSQL is not reachable at %s (set LEVEE_POSTGRES_URL): %v", where, err)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// roundTrips counts the request/response exchanges a pool makes with the
// server, at the client: every Query, QueryRow and Exec (one exchange
// each), every batch (one exchange, however many statements it carries:
// group commit's pipelines) plus every statement preparation pgx performs
// on a connection's first use of a statement (one more exchange). Pools built by newPool
// disable pgxpool's liveness ping of connections idle for over a second,
// which would be a further, uncounted exchange.
type roundTrips struct{ n atomic.Int64 }

func (c *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (c *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (c *roundTrips) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	return ctx
}

func (c *roundTrips) TracePrepareEnd(_ context.Context, _ *pgx.Conn, d pgx.TracePrepareEndData) {
	if !d.AlreadyPrepared {
		c.n.Add(1)
	}
}

// newPool connects a pool using mode, counting round trips into rt (which
// may be nil), and closes it when t ends.
func newPool(t testing.TB, mode pgx.QueryExecMode, maxConns int32, rt *roundTrips) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(databaseURL())
	if err != nil {
		t.Fatalf("LEVEE_POSTGRES_URL: %v", err)
	}
	cfg.ConnConfig.DefaultQueryExecMode = mode
	if rt != nil {
		cfg.ConnConfig.Tracer = rt
	}
	cfg.MaxConns = maxConns
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		unreachable(t, err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// testSchema returns a fresh schema name for this test and drops that
// schema (and nothing else) when the test ends. Migrate creates it.
func testSchema(t testing.TB) string {
	t.Helper()
	admin := newPool(t, pgx.QueryExecModeCacheStatement, 2, nil)
	schema := "levee_test_" + randomHex(6)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop test schema %s: %v", schema, err)
		}
	})
	return schema
}

func mustNew(t testing.TB, pool *pgxpool.Pool, opts postgres.Options) *postgres.Store {
	t.Helper()
	s, err := postgres.New(pool, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// migrated returns a fresh, migrated schema and a store over it.
func migrated(t testing.TB, mode pgx.QueryExecMode, maxConns int32) (string, *postgres.Store) {
	t.Helper()
	schema := testSchema(t)
	s := mustNew(t, newPool(t, mode, maxConns, nil), postgres.Options{Schema: schema})
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return schema, s
}

// harness builds stores over one migrated schema, each with its own pool
// and round-trip counter.
type harness struct {
	schema   string
	mode     pgx.QueryExecMode
	counters sync.Map // *postgres.Store -> *roundTrips
}

func (h *harness) newStore(t testing.TB) idempotency.Store {
	rt := &roundTrips{}
	s := mustNew(t, newPool(t, h.mode, 8, rt), postgres.Options{Schema: h.schema})
	warmUp(t, s)
	h.counters.Store(s, rt)
	return s
}

// warmUp runs every statement once, on the pool's one connection, so that
// pgx has prepared (or described) them before the suite measures round
// trips: preparation is a once-per-connection cost, not a per-request one.
func warmUp(t testing.TB, s *postgres.Store) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	prefix := "warmup/" + randomHex(8) + "/"
	req := idempotency.ClaimRequest{
		Key: prefix + "a", Token: idempotency.NewToken(), Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour),
	}
	errs := []error{}
	_, err := s.Claim(ctx, req)
	errs = append(errs, err, s.Renew(ctx, req.Key, req.Token, req.Now, req.LeaseUntil, req.ExpiresAt))
	_, err = s.Lookup(ctx, req.Key, now)
	errs = append(errs, err, s.Release(ctx, req.Key, req.Token))
	req.Key = prefix + "b"
	_, err = s.Claim(ctx, req)
	errs = append(errs, err, s.Complete(ctx, req.Key, req.Token, idempotency.Response{Status: 200}, now, now.Add(time.Hour)))
	// A key seen: the full claim statement (a replay).
	_, err = s.Claim(ctx, req)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
}

var modes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement, // pgx's default
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

// TestConformance runs the shared suite once per pgx query execution mode,
// each in its own schema.
func TestConformance(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			schema, _ := migrated(t, mode, 2)
			h := &harness{schema: schema, mode: mode}
			hs := idemtest.Harness{
				NewStore: h.newStore,
				Replica:  func(t testing.TB, _ idempotency.Store) idempotency.Store { return h.newStore(t) },
				RoundTrips: func(s idempotency.Store) int64 {
					rt, _ := h.counters.Load(s)
					return rt.(*roundTrips).n.Load()
				},
			}
			if mode == pgx.QueryExecModeDescribeExec {
				// This mode describes every statement before executing it:
				// two round trips per call by design.
				hs.NewRequestRoundTrips, hs.ReplayRoundTrips = 4, 2
			}
			idemtest.Run(t, hs)
		})
	}
}

func claimAt(key string, now time.Time) idempotency.ClaimRequest {
	return idempotency.ClaimRequest{
		Key: key, Fingerprint: idempotency.FingerprintOf([]byte("x")), Token: idempotency.NewToken(),
		Now: now, LeaseUntil: now.Add(30 * time.Second), ExpiresAt: now.Add(time.Hour),
	}
}

// TestConcurrentTakeoverOneWinner races claims for a key that is absent or
// whose record is Claimable (an expired completed record, an in-progress
// record with a lapsed lease): exactly one claim wins, and every loser that
// gets a record gets the winner's, never the replaced one (which its
// snapshot may still show). A loser may get no record only when the
// winner's row was inserted after the loser's snapshot.
func TestConcurrentTakeoverOneWinner(t *testing.T) {
	t.Parallel()
	_, s := migrated(t, pgx.QueryExecModeCacheStatement, 16)
	ctx := context.Background()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, key string) time.Time // returns when the old record is claimable
	}{
		{"Absent", func(*testing.T, string) time.Time { return t0 }},
		{"ExpiredCompleted", func(t *testing.T, key string) time.Time {
			req := claimAt(key, t0)
			if _, err := s.Claim(ctx, req); err != nil {
				t.Fatal(err)
			}
			if err := s.Complete(ctx, key, req.Token, idempotency.Response{Status: 200, Body: []byte("old")}, t0, t0.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			return t0.Add(time.Minute)
		}},
		{"LapsedLease", func(t *testing.T, key string) time.Time {
			req := claimAt(key, t0)
			if _, err := s.Claim(ctx, req); err != nil {
				t.Fatal(err)
			}
			return req.LeaseUntil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var vanished atomic.Int32
			defer func() { t.Logf("%d losers in 10 rounds got no record", vanished.Load()) }()
			for round := range 10 {
				key := fmt.Sprintf("takeover/%s/%d/%s", tc.name, round, randomHex(4))
				now := tc.setup(t, key)
				const n = 16
				var won atomic.Int32
				var winner atomic.Uint64
				existing := make([]*idempotency.Record, n)
				start := make(chan struct{})
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						<-start
						req := claimAt(key, now)
						res, err := s.Claim(ctx, req)
						if err != nil {
							t.Errorf("Claim: %v", err)
							return
						}
						if res.Claimed {
							won.Add(1)
							winner.Store(req.Token)
							return
						}
						if res.Existing == nil {
							vanished.Add(1) // allowed: the engine claims again
						}
						existing[i] = res.Existing
					})
				}
				close(start)
				wg.Wait()
				if won.Load() != 1 {
					t.Fatalf("round %d: %d of %d claims won, want exactly 1", round, won.Load(), n)
				}
				for i, ex := range existing {
					if ex == nil {
						continue
					}
					if ex.Token != winner.Load() || ex.State != idempotency.StateInProgress || ex.Claimable(now) {
						t.Fatalf("round %d: loser %d got %+v, want the winner's in-progress record (token %d)", round, i, ex, winner.Load())
					}
				}
			}
		})
	}
}

// TestUpgradeFromVersion1 migrates a table created by migration 0001
// alone (the state check allowing 1 and 2 only) that holds an in-progress
// record: Migrate applies 0002, the record can then be held with an unknown
// outcome and blocks claims past its lease, and the check still refuses
// states that do not exist.
func TestUpgradeFromVersion1(t *testing.T) {
	t.Parallel()
	schema := testSchema(t)
	ctx := context.Background()
	admin := newPool(t, pgx.QueryExecModeCacheStatement, 1, nil)
	table := pgx.Identifier{schema, "idempotency_keys"}.Sanitize()
	bookkeeping := pgx.Identifier{schema, "schema_migrations"}.Sanitize()
	for _, stmt := range []string{
		`CREATE SCHEMA ` + pgx.Identifier{schema}.Sanitize(),
		`CREATE TABLE ` + table + ` (
	key         text COLLATE "C" PRIMARY KEY,
	fingerprint bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
	state       smallint    NOT NULL CHECK (state IN (1, 2)),
	token       bigint      NOT NULL,
	lease_until timestamptz NOT NULL,
	expires_at  timestamptz NOT NULL,
	response    bytea
)`,
		`CREATE INDEX ` + pgx.Identifier{"idempotency_keys_expires_at_idx"}.Sanitize() + ` ON ` + table + ` (expires_at)`,
		`CREATE TABLE ` + bookkeeping + ` (table_name text NOT NULL, version integer NOT NULL, name text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, version))`,
		`INSERT INTO ` + bookkeeping + ` (table_name, version, name) VALUES ('idempotency_keys', 1, '0001_create_idempotency_keys')`,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := admin.Exec(ctx, `INSERT INTO `+table+` VALUES ('running', $1, 1, 7, $2, $3, NULL)`,
		make([]byte, 32), t0.Add(time.Minute), t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, newPool(t, pgx.QueryExecModeCacheStatement, 2, nil), postgres.Options{Schema: schema})
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate from version 1: %v", err)
	}
	if err := s.MarkUnknown(ctx, "running", 7, t0, t0.Add(2*time.Hour)); err != nil {
		t.Fatalf("MarkUnknown after the upgrade: %v", err)
	}
	res, err := s.Claim(ctx, claimAt("running", t0.Add(time.Hour)))
	if err != nil || res.Claimed || res.Existing == nil || res.Existing.State != idempotency.StateUnknown {
		t.Fatalf("claim past the lease of the held record: %+v, %v; want blocked by the unknown record", res, err)
	}
	if _, err := admin.Exec(ctx, `UPDATE `+table+` SET state = 4`); err == nil {
		t.Fatal("the upgraded check accepted state 4")
	}
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname IN ('idempotency_keys_open_idx', 'idempotency_keys_open_state_idx')`, schema).Scan(&n); err != nil || n != 1 {
		t.Fatalf("open-records index after the upgrade: %d, %v", n, err)
	}
	var def string
	if err := admin.QueryRow(ctx, `SELECT pg_get_indexdef(($1 || '.idempotency_keys_open_state_idx')::regclass)`,
		pgx.Identifier{schema}.Sanitize()).Scan(&def); err != nil || !strings.HasSuffix(def, "(state) WHERE (state <> 2)") {
		t.Fatalf("open-records index after the upgrade: %q, %v; want it on (state) WHERE state <> 2 (migration 0003)", def, err)
	}
	open, err := s.List(ctx, idempotency.ListRequest{State: idempotency.StateUnknown, Now: t0, Limit: 10})
	if err != nil || len(open) != 1 || open[0].Key != "running" {
		t.Fatalf("List of unknown records after the upgrade: %+v, %v", open, err)
	}
}

// TestRoundTripsPerCall pins the cost of each call as counted at the
// client: one round trip per Store method once the connection has prepared
// the statement, one more the first time a connection uses a statement in
// pgx's default mode; two for a new request through the engine, one for a
// replay.
func TestRoundTripsPerCall(t *testing.T) {
	t.Parallel()
	schema, _ := migrated(t, pgx.QueryExecModeCacheStatement, 1)
	rt := &roundTrips{}
	s := mustNew(t, newPool(t, pgx.QueryExecModeCacheStatement, 1, rt), postgres.Options{Schema: schema})
	ctx := context.Background()
	now := time.Now()
	cost := func(what string, want int64, call func() error) {
		t.Helper()
		before := rt.n.Load()
		if err := call(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := rt.n.Load() - before; got != want {
			t.Fatalf("%s cost %d round trips, want %d", what, got, want)
		}
	}
	req := claimAt("a", now)
	claim := func() error { _, err := s.Claim(ctx, req); return err }
	cost("first Claim on a connection (prepare + execute)", 2, claim)
	cost("first blocked Claim returning the record (the full statement: prepare + execute)", 2, claim)
	cost("blocked Claim returning the record", 1, claim)
	req.Key = "b"
	cost("Claim", 1, claim)
	// A key this Store has not seen that exists (another replica's, or
	// from before a restart): the INSERT finds it, the full statement
	// reads it.
	other := mustNew(t, newPool(t, pgx.QueryExecModeCacheStatement, 1, rt), postgres.Options{Schema: schema})
	warmUp(t, other)
	cost("Claim of an existing key by a Store that has not seen it", 2, func() error {
		res, err := other.Claim(ctx, claimAt("a", now))
		if err == nil && (res.Claimed || res.Existing == nil || res.Existing.Token != req.Token) {
			err = fmt.Errorf("got %+v, want the record of a", res)
		}
		return err
	})
	cost("the same Claim again, now seen", 1, func() error { _, err := other.Claim(ctx, claimAt("a", now)); return err })
	warmUp(t, s)
	cost("Renew", 1, func() error { return s.Renew(ctx, "b", req.Token, now, now.Add(time.Minute), req.ExpiresAt) })
	cost("Lookup", 1, func() error { _, err := s.Lookup(ctx, "b", now); return err })
	cost("Complete", 1, func() error {
		return s.Complete(ctx, "b", req.Token, idempotency.Response{Status: 201}, now, now.Add(time.Hour))
	})
	cost("fenced Release", 1, func() error {
		if err := s.Release(ctx, "b", req.Token); !errors.Is(err, idempotency.ErrFenced) {
			return fmt.Errorf("got %v, want ErrFenced", err)
		}
		return nil
	})
	// Planned at each call (an unnamed statement): never a prepare.
	cost("DeleteExpired", 1, func() error { _, err := s.DeleteExpired(ctx, now, 10); return err })
	cost("List", 1, func() error {
		_, err := s.List(ctx, idempotency.ListRequest{State: idempotency.StateInProgress, Now: now, Limit: 10})
		return err
	})

	e := idempotency.New(s, idempotency.Options{RenewEvery: -1})
	fp := idempotency.FingerprintOf([]byte("x"))
	fn := func(context.Context) ([]byte, error) { return []byte("ok"), nil }
	cost("Engine.Do new request", 2, func() error { _, err := e.Do(ctx, "engine", fp, fn); return err })
	cost("Engine.Do replay", 1, func() error {
		r, err := e.Do(ctx, "engine", fp, fn)
		if err == nil && !r.Replayed {
			err = errors.New("not replayed")
		}
		return err
	})
}

// TestMigrateConcurrentAndIdempotent runs Migrate from four replicas at
// once on a fresh schema, then twice more.
func TestMigrateConcurrentAndIdempotent(t *testing.T) {
	t.Parallel()
	schema := testSchema(t)
	ctx := context.Background()
	stores := make([]*postgres.Store, 4)
	for i := range stores {
		stores[i] = mustNew(t, newPool(t, pgx.QueryExecModeCacheStatement, 2, nil), postgres.Options{Schema: schema})
	}
	var wg sync.WaitGroup
	errs := make([]error, len(stores))
	for i, s := range stores {
		wg.Go(func() { errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Migrate: %v", err)
	}
	for range 2 {
		if err := stores[0].Migrate(ctx); err != nil {
			t.Fatalf("repeated Migrate: %v", err)
		}
	}
	// A second table in the same schema is migrated on its own.
	other := mustNew(t, newPool(t, pgx.QueryExecModeCacheStatement, 2, nil), postgres.Options{Schema: schema, Table: "other keys"})
	if err := other.Migrate(ctx); err != nil {
		t.Fatalf("Migrate of a second table: %v", err)
	}

	admin := newPool(t, pgx.QueryExecModeCacheStatement, 1, nil)
	rows, err := admin.Query(ctx, `SELECT table_name || ':' || version || ':' || name FROM `+
		pgx.Identifier{schema, "schema_migrations"}.Sanitize()+` ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"idempotency_keys:1:0001_create_idempotency_keys", "idempotency_keys:2:0002_unknown_state",
		"idempotency_keys:3:0003_open_index_by_state",
		"other keys:1:0001_create_idempotency_keys", "other keys:2:0002_unknown_state", "other keys:3:0003_open_index_by_state"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("schema_migrations = %q, want %q", got, want)
	}
	// Catalog joins only: pg_indexes calls pg_get_indexdef, which fails
	// when another test drops its schema concurrently.
	var indexes int
	if err := admin.QueryRow(ctx, `
		SELECT count(*) FROM pg_catalog.pg_index i
		JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
		WHERE n.nspname = $1 AND i.indnatts = 1 AND a.attname = 'expires_at'`, schema).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if indexes != 2 {
		t.Fatalf("%d expires_at indexes, want one per table", indexes)
	}
	for _, s := range []*postgres.Store{stores[3], other} {
		req := claimAt("k", time.Now())
		if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
			t.Fatalf("Claim after Migrate: %+v, %v", res, err)
		}
	}
}

// TestDeleteExpired runs the shared DeleteExpired checks, each on a
// schema of its own (DeleteExpired is table-wide).
func TestDeleteExpired(t *testing.T) {
	idemtest.RunDeleteExpired(t, func(t testing.TB) idemtest.Expirer {
		_, s := migrated(t, pgx.QueryExecModeCacheStatement, 2)
		return s
	})
}

// TestCompleteAfterLogicalExpiry pins the fencing rule shared with the
// memory store: the token holder may complete its record after retention
// has passed as long as nobody claimed the key since.
func TestCompleteAfterLogicalExpiry(t *testing.T) {
	t.Parallel()
	_, s := migrated(t, pgx.QueryExecModeCacheStatement, 2)
	ctx := context.Background()
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	req := claimAt("k", t0)
	req.ExpiresAt = t0.Add(time.Second)
	if _, err := s.Claim(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, req.Key, req.ExpiresAt); !errors.Is(err, idempotency.ErrNotFound) {
		t.Fatalf("Lookup after expiry = %v, want ErrNotFound", err)
	}
	if err := s.Complete(ctx, req.Key, req.Token, idempotency.Response{Status: 200}, t0, t0.Add(time.Hour)); err != nil {
		t.Fatalf("holder's Complete after logical expiry = %v, want success", err)
	}
	if rec, err := s.Lookup(ctx, req.Key, t0.Add(time.Minute)); err != nil || rec.State != idempotency.StateCompleted {
		t.Fatalf("Lookup after Complete: %+v, %v", rec, err)
	}
}

func TestNotMigrated(t *testing.T) {
	t.Parallel()
	// A schema name nobody creates: nothing to clean up.
	s := mustNew(t, newPool(t, pgx.QueryExecModeCacheStatement, 1, nil), postgres.Options{Schema: "levee_test_absent_" + randomHex(6)})
	_, err := s.Claim(context.Background(), claimAt("k", time.Now()))
	if err == nil || !strings.Contains(err.Error(), "Migrate") || !strings.HasPrefix(err.Error(), "postgres: claim:") {
		t.Fatalf("Claim on a missing table = %v, want an error pointing at Migrate", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := postgres.New(nil, postgres.Options{}); err == nil {
		t.Fatal("New(nil pool) succeeded")
	}
	// A pool that has not connected (pgxpool connects on first use): New
	// performs no I/O.
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, o := range []postgres.Options{
		{Schema: strings.Repeat("s", 64)},
		{Table: strings.Repeat("t", 49)},
		{Table: "a\x00b"},
	} {
		if _, err := postgres.New(pool, o); err == nil || !strings.HasPrefix(err.Error(), "postgres: Options.") {
			t.Fatalf("New(%+v) = %v, want an error naming the field", o, err)
		}
	}
	if _, err := postgres.New(pool, postgres.Options{Schema: strings.Repeat("s", 63), Table: strings.Repeat("t", 48)}); err != nil {
		t.Fatalf("New with maximal names: %v", err)
	}
}

func BenchmarkStore(b *testing.B) {
	schema := testSchema(b)
	pool := newPool(b, pgx.QueryExecModeCacheStatement, 16, nil)
	s := mustNew(b, pool, postgres.Options{Schema: schema})
	if err := s.Migrate(context.Background()); err != nil {
		b.Fatalf("Migrate: %v", err)
	}
	idemtest.Bench(b, s)
	// The floor: one bare round trip on the same pool. A new request
	// should cost about 2 of these, a replay about 1.
	b.Run("RoundTripFloorSELECT1", func(b *testing.B) {
		b.ReportAllocs()
		var one int
		for i := 0; i < b.N; i++ {
			if err := pool.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestGroupCommit runs 100 claims, then 100 completions (every other one
// with a wrong token), then 100 claims of the same keys at once: each
// caller gets its own exact result, and the operations share statements
// (far fewer round trips than operations).
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) { testGroupCommit(t, mode) })
	}
}

func testGroupCommit(t *testing.T, mode pgx.QueryExecMode) {
	schema, _ := migrated(t, mode, 2)
	rt := &roundTrips{}
	s := mustNew(t, newPool(t, mode, 8, rt), postgres.Options{Schema: schema})
	ctx := context.Background()
	now := time.Now()
	const n = 100
	reqs := make([]idempotency.ClaimRequest, n)
	for i := range reqs {
		reqs[i] = claimAt(fmt.Sprint("gc/", i), now)
	}
	run := func(f func(i int) error) {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				if err := f(i); err != nil {
					t.Errorf("%d: %v", i, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	before := rt.n.Load()
	run(func(i int) error {
		res, err := s.Claim(ctx, reqs[i])
		if err == nil && !res.Claimed {
			err = fmt.Errorf("not claimed: %+v", res.Existing)
		}
		return err
	})
	run(func(i int) error {
		tok := reqs[i].Token
		if i%2 == 1 {
			tok++
		}
		err := s.Complete(ctx, reqs[i].Key, tok, idempotency.Response{Status: 200, Body: []byte(reqs[i].Key)}, now, now.Add(time.Hour))
		if i%2 == 1 {
			if !errors.Is(err, idempotency.ErrFenced) {
				return fmt.Errorf("wrong token: %v, want ErrFenced", err)
			}
			return nil
		}
		return err
	})
	run(func(i int) error {
		res, err := s.Claim(ctx, claimAt(reqs[i].Key, now.Add(time.Second)))
		switch {
		case err != nil:
			return err
		case res.Claimed || res.Existing == nil || res.Existing.Token != reqs[i].Token:
			return fmt.Errorf("second claim = %+v, want blocked by the first claim's record", res)
		case i%2 == 0 && (res.Existing.State != idempotency.StateCompleted || string(res.Existing.Response.Body) != reqs[i].Key):
			return fmt.Errorf("replay = %+v, want its own completed response", res.Existing)
		case i%2 == 1 && res.Existing.State != idempotency.StateInProgress:
			return fmt.Errorf("blocked by %+v, want the in-progress record", res.Existing)
		}
		return nil
	})
	trips := rt.n.Load() - before
	t.Logf("%d round trips (preparations included) for %d operations", trips, 3*n)
	if trips >= 3*n {
		t.Fatalf("%d round trips for %d operations: no statement carried more than one", trips, 3*n)
	}
}

// TestGroupCommitStatementError poisons one key with a trigger: the batch
// statement carrying it fails, and every other operation of that batch is
// then sent on its own and succeeds.
func TestGroupCommitStatementError(t *testing.T) {
	t.Parallel()
	schema, s := migrated(t, pgx.QueryExecModeCacheStatement, 8)
	table := pgx.Identifier{schema, "idempotency_keys"}.Sanitize()
	admin := newPool(t, pgx.QueryExecModeCacheStatement, 1, nil)
	ctx := context.Background()
	fn := pgx.Identifier{schema, "poison"}.Sanitize()
	for _, stmt := range []string{
		`CREATE FUNCTION ` + fn + `() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'poisoned key'; END $$`,
		`CREATE TRIGGER poison BEFORE INSERT ON ` + table + ` FOR EACH ROW WHEN (NEW.key = 'poison') EXECUTE FUNCTION ` + fn + `()`,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	for round := range 5 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 30 {
			key := fmt.Sprintf("r%d/k%d", round, i)
			if i == 15 {
				key = "poison"
			}
			wg.Go(func() {
				<-start
				res, err := s.Claim(ctx, claimAt(key, now))
				switch {
				case key == "poison" && (err == nil || !strings.Contains(err.Error(), "poisoned key")):
					t.Errorf("poisoned claim = %+v, %v; want the trigger's error", res, err)
				case key != "poison" && (err != nil || !res.Claimed):
					t.Errorf("claim %s = %+v, %v; want claimed", key, res, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
}

// TestKeyPrefixPlanStepsIntoThePrimaryKey: HasKeyPrefix's generic plan
// (the one a prepared statement keeps) is one step into the primary key,
// never a scan of the table, which is every idempotency record there is.
func TestKeyPrefixPlanStepsIntoThePrimaryKey(t *testing.T) {
	schema, s := migrated(t, pgx.QueryExecModeCacheStatement, 2)
	ctx := context.Background()
	pool := newPool(t, pgx.QueryExecModeCacheStatement, 1, nil)
	table := pgx.Identifier{schema, "idempotency_keys"}.Sanitize()
	if _, err := pool.Exec(ctx, `INSERT INTO `+table+` (key, fingerprint, state, token, lease_until, expires_at)
SELECT md5(i::text), decode(repeat('00', 32), 'hex'), 2, i, now(), now() + interval '1 hour' FROM generate_series(1, 2000) i`); err != nil {
		t.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, q := range []string{`SET plan_cache_mode = force_generic_plan`, `PREPARE key_prefix(text) AS ` + postgres.KeyPrefixSQL(s)} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	defer func() { _, _ = conn.Exec(ctx, `DEALLOCATE key_prefix; RESET plan_cache_mode`) }()
	rows, err := conn.Query(ctx, `EXPLAIN EXECUTE key_prefix('levee:webhook:p:')`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(plan, "\n")
	if !strings.Contains(all, "using idempotency_keys_pkey") || strings.Contains(all, "Seq Scan") || strings.Contains(all, "Sort") {
		t.Fatalf("HasKeyPrefix's generic plan:\n%s\nwant one index scan of idempotency_keys_pkey", all)
	}
	for _, c := range []struct {
		prefix string
		want   bool
	}{{"0", true}, {"levee:", false}} {
		if got, err := s.HasKeyPrefix(ctx, c.prefix); err != nil || got != c.want {
			t.Fatalf("HasKeyPrefix(%q) over 2,000 md5 keys = %v, %v; want %v", c.prefix, got, err, c.want)
		}
	}
}
