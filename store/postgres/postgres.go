// Package postgres is an idempotency.Store backed by PostgreSQL through a
// pgx v5 connection pool, for deployments with several replicas sharing one
// database.
//
// # Schema
//
// Records live in one table (Options.Schema and Options.Table, default
// "levee"."idempotency_keys") with the columns key, fingerprint, state,
// token, lease_until, expires_at and response (idempotency.MarshalResponse),
// plus an index on expires_at and a partial index on state over the
// records not completed (for List). Store.Migrate creates them and upgrades
// a table created by an earlier version (migrations/*.sql); it is
// idempotent and safe to run from every replica at start-up.
//
// # Guarantees
//
// Every Store method is a single SQL statement run outside any explicit
// transaction, so each is atomic and costs one round trip (a Claim of an
// existing key this Store has not seen recently: two, see Claim). Writes
// use group commit (writer.go): concurrent calls share one pipeline of
// their statements that the server runs as one implicit transaction — one
// round trip and one WAL flush for the batch — with, statement by
// statement, the semantics below; a call that arrives alone is sent alone,
// with no delay. A Store holds a goroutine only while writes are queued.
//
//   - Claim is one INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE
//     <claimable> statement that also reads the blocking row (see Claim).
//     A key this Store has not claimed or found recently (most likely a
//     new one) is first claimed with a plain INSERT ... ON CONFLICT DO
//     NOTHING, half the server's work; if the key exists, nothing was
//     written and the full statement follows. The primary key makes it
//     impossible for two concurrent claims to both win.
//   - Renew, MarkUnknown, Complete and Release are one UPDATE or DELETE
//     conditioned on key, token and state (in_progress; Complete and
//     Release also accept unknown, which is how an operator resolves a
//     held key); when no row matches they return idempotency.ErrFenced and
//     change nothing. Like the reference memory
//     store they do not look at expires_at: a holder may still complete a
//     record whose retention has passed as long as nobody has claimed it
//     since (the token still matches).
//   - Lookup is one SELECT that ignores rows whose expires_at has passed.
//
// PostgreSQL has no TTL. Expiry is logical: every read and every claim
// compares expires_at (and lease_until) with the time the engine passes in,
// never with the database clock, so an expired row counts as absent even
// while it is still stored. DeleteExpired only reclaims space; call it
// periodically (for example every minute with a limit of a few thousand).
//
// Times are stored as timestamptz, with microsecond precision.
//
// The statements assume the READ COMMITTED isolation level (PostgreSQL's
// default). Under REPEATABLE READ or SERIALIZABLE as the session default,
// concurrent claims on one key may fail with serialization errors.
// The store works with every pgx QueryExecMode and, because Migrate holds
// only a transaction-scoped advisory lock, behind PgBouncer in
// transaction-pooling mode.
//
// # Failures
//
// Any error from the pool or the server is returned wrapped, prefixed with
// "postgres:" and the operation; the engine treats it as a store failure
// (its FailurePolicy decides). A failed statement changes nothing. If the
// connection breaks after the server committed but before the answer
// arrived, the outcome is unknown to the caller: a Claim that did commit
// leaves an in-progress record that blocks retries until its lease lapses
// and is then taken over; a Complete that did commit makes the retry a
// replay. Using a table that Migrate has not created fails with an error
// that says so.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/groupcommit"
	"github.com/leveehq/levee/internal/recentkeys"
)

// Options configure a Store. The zero value selects the defaults.
type Options struct {
	// Schema is the PostgreSQL schema holding the table and the
	// schema_migrations bookkeeping table. Default "levee". At most 63
	// bytes; it is quoted, so any other name is valid.
	Schema string
	// Table is the name of the records table inside Schema. Default
	// "idempotency_keys". At most 48 bytes (the index name appends
	// "_expires_at_idx" and PostgreSQL names are limited to 63 bytes).
	Table string
}

const (
	defaultSchema = "levee"
	defaultTable  = "idempotency_keys"
	// maxIdentifier is PostgreSQL's NAMEDATALEN-1.
	maxIdentifier = 63
	indexSuffix   = "_expires_at_idx"
)

func (o Options) withDefaults() Options {
	if o.Schema == "" {
		o.Schema = defaultSchema
	}
	if o.Table == "" {
		o.Table = defaultTable
	}
	return o
}

func (o Options) validate() error {
	if len(o.Schema) > maxIdentifier {
		return fmt.Errorf("postgres: Options.Schema %q is longer than %d bytes", o.Schema, maxIdentifier)
	}
	if len(o.Table) > maxIdentifier-len(indexSuffix) {
		return fmt.Errorf("postgres: Options.Table %q is longer than %d bytes", o.Table, maxIdentifier-len(indexSuffix))
	}
	for _, f := range []struct{ name, v string }{{"Schema", o.Schema}, {"Table", o.Table}} {
		for i := 0; i < len(f.v); i++ {
			if f.v[i] == 0 {
				return fmt.Errorf("postgres: Options.%s contains a NUL byte", f.name)
			}
		}
	}
	return nil
}

// Store is a PostgreSQL idempotency.Store. It is safe for concurrent use;
// every replica creates its own Store over its own pool.
type Store struct {
	pool *pgxpool.Pool
	opts Options
	// table is the quoted, schema-qualified table name.
	table string
	sql   statements
	q     *groupcommit.Queue[*writeOp]
	ops   sync.Pool // *writeOp
	// recent holds the keys this Store has recently claimed or found a
	// record for. A claim of any other key (most likely a new one) is
	// first a plain INSERT ... ON CONFLICT DO NOTHING, which PostgreSQL
	// runs in about half the time of the full claim statement; when the
	// key turns out to exist (written by another replica, before a
	// restart, or forgotten here) the full statement follows, one more
	// round trip. A hint for cost only: every answer is the same.
	recent *recentkeys.Set
	// planEach is the argument prefix of the statements that scan a range
	// (List, DeleteExpired): pgx.QueryExecModeExec, an unnamed statement
	// planned at each call for the table as it is then. A prepared
	// statement's plan is cached on its connection, and a plan made while
	// the table was small (a sequential scan) would stay while it grows.
	// Empty when the pool uses the simple protocol, which plans each call
	// anyway.
	planEach []any
}

// statements holds the SQL of every operation, built once for the table.
type statements struct {
	claim, claimNew, renew, complete, release, markUnknown, lookup, list, deleteExpired string
	keyPrefix                                                                           string
}

// New returns a Store that keeps its records in opts.Schema.opts.Table
// using pool. It performs no I/O: call Migrate once (at start-up) before
// using the store. It fails only when pool is nil or opts is invalid.
func New(pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, errors.New("postgres: nil pool")
	}
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	table := pgx.Identifier{opts.Schema, opts.Table}.Sanitize()
	s := &Store{pool: pool, opts: opts, table: table, sql: buildStatements(table), recent: recentkeys.New()}
	if pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeSimpleProtocol {
		s.planEach = []any{pgx.QueryExecModeExec}
	}
	s.q = groupcommit.New(maxBatch, maxInFlight, s.runBatch)
	return s, nil
}

// claimable is Record.Claimable in SQL for the row alias a and the
// engine's clock $6.
func claimable(a string) string {
	return `(` + a + `.expires_at <= $6 OR (` + a + `.state = 1 AND ` + a + `.lease_until <= $6))`
}

const columns = `fingerprint, state, token, lease_until, expires_at, response`

func buildStatements(table string) statements {
	return statements{
		// ins takes the key when it is absent or claimable (the ON CONFLICT
		// WHERE is evaluated on the latest committed version of the row,
		// after locking it). When ins returns nothing the row exists, is
		// not claimable, and stays locked by this statement; cur then reads
		// it. A plain read would see the version in the statement's
		// snapshot, which may be older than the one that blocked the claim:
		// for instance the expired record a concurrent claim has just
		// replaced, which the engine would then replay. FOR SHARE makes
		// READ COMMITTED follow the row to its latest version, the one this
		// statement has locked, so Existing is exactly the record that
		// blocked the claim. A row whose first version was committed after
		// the snapshot (a concurrent insert), or that was deleted since, is
		// not found: the answer is then "not claimed, no record", which the
		// engine resolves by claiming again. The final claimable filter,
		// applied to the locked version, is a guard: the store never
		// returns a record the engine could have taken over.
		//
		// done comes first: a live completed record never changes until it
		// expires, so a snapshot read of it is exact, and a replay then
		// inserts nothing, locks nothing and writes no WAL — the statement
		// commits as a read-only one instead of waiting for a WAL flush.
		claim: `WITH done AS (
	SELECT t.fingerprint, t.state, t.token, t.lease_until, t.expires_at, t.response
	FROM ` + table + ` AS t
	WHERE t.key = $1 AND t.state = 2 AND t.expires_at > $6
), ins AS (
	INSERT INTO ` + table + ` AS t (key, fingerprint, state, token, lease_until, expires_at, response)
	SELECT $1, $2, 1, $3, $4, $5, NULL WHERE NOT EXISTS (SELECT 1 FROM done)
	ON CONFLICT (key) DO UPDATE SET
		fingerprint = EXCLUDED.fingerprint, state = 1, token = EXCLUDED.token,
		lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at, response = NULL
	WHERE ` + claimable("t") + `
	RETURNING t.fingerprint, t.state, t.token, t.lease_until, t.expires_at, t.response
), cur AS (
	SELECT t.fingerprint, t.state, t.token, t.lease_until, t.expires_at, t.response
	FROM ` + table + ` AS t
	WHERE t.key = $1 AND NOT EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (SELECT 1 FROM done)
	FOR SHARE OF t
)
SELECT true, * FROM ins
UNION ALL
SELECT false, c.* FROM cur AS c WHERE NOT ` + claimable("c") + `
UNION ALL
SELECT false, d.* FROM done AS d`,
		// claimNew is the claim of a key this Store has not seen recently
		// (see Store.recent): it takes the key if absent and otherwise
		// changes nothing, and the full claim statement follows. $6 is
		// unused, so that both statements take the same arguments.
		claimNew: `INSERT INTO ` + table + ` (key, fingerprint, state, token, lease_until, expires_at, response)
	SELECT $1, $2, 1, $3, $4, $5, NULL WHERE $6::timestamptz IS NOT NULL
	ON CONFLICT (key) DO NOTHING`,
		renew:       `UPDATE ` + table + ` SET lease_until = $3, expires_at = $4 WHERE key = $1 AND token = $2 AND state = 1`,
		complete:    `UPDATE ` + table + ` SET state = 2, response = $3, expires_at = $4 WHERE key = $1 AND token = $2 AND state IN (1, 3)`,
		release:     `DELETE FROM ` + table + ` WHERE key = $1 AND token = $2 AND state IN (1, 3)`,
		markUnknown: `UPDATE ` + table + ` SET state = 3, lease_until = $3, expires_at = $4 WHERE key = $1 AND token = $2 AND state = 1`,
		lookup:      `SELECT ` + columns + ` FROM ` + table + ` WHERE key = $1 AND expires_at > $2`,
		// The first key at or above $1 (HasKeyPrefix compares it), one step
		// into the primary key.
		keyPrefix: `SELECT key FROM ` + table + ` WHERE key >= $1 ORDER BY key LIMIT 1`,
		// The open records of one state are read through the open index
		// (migration 0003: by state, "state <> 2" repeats its predicate so
		// that the planner may use it with a parameter), then ordered by key:
		// there are few of them, and walking the primary key in key order
		// instead would read every completed record too.
		list: `WITH open AS MATERIALIZED (
	SELECT key, fingerprint, state, token, lease_until, expires_at FROM ` + table + `
	WHERE state = $1 AND state <> 2 AND expires_at > $3
)
SELECT key, fingerprint, state, token, lease_until, expires_at, NULL::bytea FROM open
	WHERE key > $2 ORDER BY key LIMIT $4`,
		// SKIP LOCKED leaves rows a concurrent claim is taking over alone;
		// the outer re-check of expires_at is a guard for the same case. A
		// claim still held by a live lease is kept, whatever its expiry.
		deleteExpired: `DELETE FROM ` + table + ` WHERE key IN (
	SELECT key FROM ` + table + ` WHERE expires_at <= $1 AND NOT (state = 1 AND lease_until > $1)
	ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
) AND expires_at <= $1 AND NOT (state = 1 AND lease_until > $1)`,
	}
}

// planned returns args behind the planEach prefix, in a new slice.
func (s *Store) planned(args ...any) []any {
	return append(append(make([]any, 0, len(s.planEach)+len(args)), s.planEach...), args...)
}

// token converts a fencing token to the bigint column. Tokens are below
// 2^63 (idempotency.NewToken); the conversion is a bijection regardless,
// so equality is preserved for any uint64.
func token(t uint64) int64 { return int64(t) }

// Claim implements idempotency.Store; in general in one statement and one
// round trip, shared with the claims that queued meanwhile (group commit, writer.go):
// an INSERT ... ON CONFLICT DO UPDATE that takes the key when it is absent
// or Claimable at req.Now, combined with a locking read that returns the
// blocking record otherwise. Existing is nil only when the blocking row was
// committed by a concurrent claim after this statement's snapshot; the
// engine then claims again.
//
// A key this Store has not claimed or found a record for recently (see
// Store.recent) is first sent as INSERT ... ON CONFLICT DO NOTHING: a new
// key is then claimed at about half the server's cost; an existing one
// (another replica's, or from before a restart) is left untouched and the
// statement above follows, after the batch commits: two round trips, once
// per key and Store.
func (s *Store) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	op := s.getOp()
	op.kind, op.req, op.fresh = opClaim, req, !s.recent.Has(req.Key)
	if err := s.write(ctx, op); err != nil {
		return idempotency.ClaimResult{}, err
	}
	res, err := op.res, op.err
	s.putOp(op)
	if err == nil && (res.Claimed || res.Existing != nil) {
		s.recent.Add(req.Key)
	}
	return res, err
}

// claimOne is Claim with the single-row statement.
func (s *Store) claimOne(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	res, err := s.scanClaim(req.Key, s.pool.QueryRow(ctx, s.sql.claim,
		req.Key, req.Fingerprint[:], token(req.Token), req.LeaseUntil, req.ExpiresAt, req.Now,
	))
	return res, err
}

// claimFailed is a Claim whose statement failed (as opposed to one that ran
// and returned a record that cannot be decoded).
type claimFailed struct{ error }

func (e claimFailed) Unwrap() error { return e.error }

// scanClaim reads the answer of the claim statement for key. A failed
// statement is returned as a claimFailed.
func (s *Store) scanClaim(key string, row pgx.Row) (idempotency.ClaimResult, error) {
	var claimed bool
	rec := &idempotency.Record{Key: key}
	sc := newScanner(rec)
	err := row.Scan(append([]any{&claimed}, sc.dest()...)...)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return idempotency.ClaimResult{}, nil
	case err != nil:
		return idempotency.ClaimResult{}, claimFailed{s.wrap("claim", err)}
	case claimed:
		return idempotency.ClaimResult{Claimed: true}, nil
	}
	if err := sc.finish(); err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("postgres: claim: %w", err)
	}
	return idempotency.ClaimResult{Existing: rec}, nil
}

// newOp returns a pooled operation of kind on key held by tok.
func (s *Store) newOp(kind opKind, key string, tok uint64, t1, t2 time.Time, resp []byte) *writeOp {
	op := s.getOp()
	op.kind, op.key, op.token, op.t1, op.t2, op.resp = kind, key, token(tok), t1, t2, resp
	return op
}

// Renew implements idempotency.Store with one conditional UPDATE (shared
// with the renewals queued meanwhile, like every write below).
func (s *Store) Renew(ctx context.Context, key string, tok uint64, _, leaseUntil, expiresAt time.Time) error {
	return s.fencedWrite(ctx, s.newOp(opRenew, key, tok, leaseUntil, expiresAt, nil))
}

// Complete implements idempotency.Store with one conditional UPDATE that
// stores idempotency.MarshalResponse(resp). now is not needed: expiry is
// logical.
func (s *Store) Complete(ctx context.Context, key string, tok uint64, resp idempotency.Response, _, expiresAt time.Time) error {
	return s.fencedWrite(ctx, s.newOp(opComplete, key, tok, expiresAt, time.Time{}, idempotency.MarshalResponse(resp)))
}

// Release implements idempotency.Store with one conditional DELETE.
func (s *Store) Release(ctx context.Context, key string, tok uint64) error {
	return s.fencedWrite(ctx, s.newOp(opRelease, key, tok, time.Time{}, time.Time{}, nil))
}

// MarkUnknown implements idempotency.Store with one conditional UPDATE.
func (s *Store) MarkUnknown(ctx context.Context, key string, tok uint64, now, expiresAt time.Time) error {
	return s.fencedWrite(ctx, s.newOp(opMarkUnknown, key, tok, now, expiresAt, nil))
}

// Features implements idempotency.Store: the store lists.
func (s *Store) Features() idempotency.Features { return idempotency.Features{List: true} }

// List implements idempotency.Store with one SELECT over the open-records
// index (migration 0003), sorted by key.
func (s *Store) List(ctx context.Context, req idempotency.ListRequest) ([]idempotency.Record, error) {
	rows, err := s.pool.Query(ctx, s.sql.list, s.planned(int16(req.State), req.After, req.Now, int64(req.Limit))...)
	if err != nil {
		return nil, s.wrap("list", err)
	}
	defer rows.Close()
	var out []idempotency.Record
	for rows.Next() {
		var rec idempotency.Record
		sc := newScanner(&rec)
		if err := rows.Scan(append([]any{&rec.Key}, sc.dest()...)...); err != nil {
			return nil, s.wrap("list", err)
		}
		if err := sc.finish(); err != nil {
			return nil, fmt.Errorf("postgres: list: %w", err)
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap("list", err)
	}
	return out, nil
}

// fenced runs a statement conditioned on the holder's token and maps "no
// row matched" to idempotency.ErrFenced.
func (s *Store) fenced(ctx context.Context, op, sql string, args ...any) error {
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return s.wrap(op, err)
	}
	if tag.RowsAffected() == 0 {
		return idempotency.ErrFenced
	}
	return nil
}

// Lookup implements idempotency.Store with one SELECT.
func (s *Store) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	rec := &idempotency.Record{Key: key}
	sc := newScanner(rec)
	err := s.pool.QueryRow(ctx, s.sql.lookup, key, now).Scan(sc.dest()...)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, idempotency.ErrNotFound
	case err != nil:
		return nil, s.wrap("lookup", err)
	}
	if err := sc.finish(); err != nil {
		return nil, fmt.Errorf("postgres: lookup: %w", err)
	}
	return rec, nil
}

// HasKeyPrefix reports whether the table holds a row, live or expired but
// not yet deleted, whose key begins with prefix: one step into the primary
// key at prefix (its "C" collation orders keys byte by byte, so the first
// key at or above prefix begins with it exactly when some key does),
// compared in Go. The gateway asks it before looking webhook ids up in the
// store during the move of webhook dedupe into the queue
// (docs/webhooks.md).
func (s *Store) HasKeyPrefix(ctx context.Context, prefix string) (bool, error) {
	var first string
	err := s.pool.QueryRow(ctx, s.sql.keyPrefix, prefix).Scan(&first)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, s.wrap("key prefix", err)
	}
	return strings.HasPrefix(first, prefix), nil
}

// DeleteExpired deletes up to limit rows whose expires_at is at or before
// now, oldest first, and returns how many it deleted; limit <= 0 means no
// limit. It only reclaims space: expired rows already count as absent to
// every other method. Rows a concurrent claim is taking over are skipped.
// Pass the clock the engine uses (time.Now by default); a clock running
// ahead of the engine's would delete records the engine still considers
// live. To clear a large backlog, call it in a loop while it returns limit.
func (s *Store) DeleteExpired(ctx context.Context, now time.Time, limit int) (int64, error) {
	n := int64(math.MaxInt64)
	if limit > 0 {
		n = int64(limit)
	}
	tag, err := s.pool.Exec(ctx, s.sql.deleteExpired, s.planned(now, n)...)
	if err != nil {
		return 0, s.wrap("delete expired", err)
	}
	return tag.RowsAffected(), nil
}

// wrap prefixes err with the package and operation, pointing at Migrate
// when the table does not exist.
func (s *Store) wrap(op string, err error) error {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42P01" { // undefined_table
		return fmt.Errorf("postgres: %s: table %s does not exist (run Store.Migrate first): %w", op, s.table, err)
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

// scanner reads the record columns into a Record.
type scanner struct {
	rec         *idempotency.Record
	fingerprint []byte
	state       int16
	token       int64
	response    []byte
}

func newScanner(rec *idempotency.Record) *scanner { return &scanner{rec: rec} }

// dest returns the Scan destinations, in the order of columns.
func (sc *scanner) dest() []any {
	return []any{&sc.fingerprint, &sc.state, &sc.token, &sc.rec.LeaseUntil, &sc.rec.ExpiresAt, &sc.response}
}

// finish moves the scanned columns into the Record.
func (sc *scanner) finish() error {
	if len(sc.fingerprint) != len(sc.rec.Fingerprint) {
		return fmt.Errorf("stored fingerprint of %q has %d bytes, want %d", sc.rec.Key, len(sc.fingerprint), len(sc.rec.Fingerprint))
	}
	copy(sc.rec.Fingerprint[:], sc.fingerprint)
	sc.rec.State = idempotency.State(sc.state)
	sc.rec.Token = uint64(sc.token)
	if sc.rec.State == idempotency.StateCompleted {
		if sc.response == nil {
			return fmt.Errorf("completed record %q has no stored response", sc.rec.Key)
		}
		resp, err := idempotency.UnmarshalResponse(sc.response)
		if err != nil {
			return fmt.Errorf("record %q: %w", sc.rec.Key, err)
		}
		sc.rec.Response = &resp
	}
	return nil
}
