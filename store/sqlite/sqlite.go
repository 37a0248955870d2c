// Package sqlite is levee's embedded default idempotency.Store: one SQLite
// file, through the pure-Go driver modernc.org/sqlite (no cgo), so that
// `levee serve` needs no other service. Several gateway processes on one
// host may open the same file; every guarantee below holds across them.
//
// # Guarantees
//
// Every write is atomic with respect to every other call on the same file,
// and every call sees every write that returned before it:
//
//   - Writes go through group commit (writer.go): one writer goroutine per
//     Store runs whatever writes have queued as one BEGIN IMMEDIATE
//     transaction (the DSN sets _txlock=immediate: the write lock is taken
//     before reading, so no lock upgrade can deadlock), and hands each
//     caller its own result after the commit. A lone write runs at once;
//     under load, writes that arrive while a batch commits share the next
//     commit. Within a batch, operations run one after the other with the
//     semantics they have alone.
//   - Claim of a key this Store has recently claimed or found first reads
//     it (a single SELECT on a reader connection): a live record that
//     blocks the claim — completed, unknown, or in progress under a live
//     lease — is returned without any write, so replays and duplicates in
//     flight never wait for the writer. A key not seen (likely new) skips
//     the read. In the writer, one INSERT ... ON CONFLICT(key) DO NOTHING
//     creates the record; if the key exists, one UPDATE ... WHERE
//     <claimable> takes it over; if neither changed a row, a SELECT in the
//     same transaction returns the record that blocked the claim. All three
//     run under the write lock, so the claim is atomic whichever path it
//     takes and whichever process wrote the record.
//   - Renew, MarkUnknown, Complete and Release are each a single UPDATE or
//     DELETE in a writer batch, guarded by key, token and state (in
//     progress; Complete and Release also accept unknown, which is how an
//     operator resolves a held key); when it touches no row the method
//     returns idempotency.ErrFenced and nothing changed.
//   - Lookup and List are a single SELECT each.
//
// WAL checkpoints run beside the writer, not in the commit that fills the
// WAL (see checkpoint.go).
//
// Times are stored as Unix milliseconds. Expiry is logical: every read and
// every claim compares expires_at with the time the engine passes in, so an
// expired record counts as absent whether or not it is still in the file.
// The writer goroutine runs only while writes are queued (an idle Store
// holds no goroutine); the store runs no background clean-up: call DeleteExpired periodically (for example
// from the gateway's own maintenance loop) to reclaim space. There is no
// capacity limit: the store never returns idempotency.ErrCapacity.
//
// # Failure behaviour
//
// The file is opened in WAL mode with synchronous=NORMAL: a committed
// transaction survives a crash of the process, and the database is never
// corrupted by one; after an operating-system crash or power loss the most
// recent commits may be rolled back, which for idempotency means a request
// completed in that window may execute again. The writer, finding the
// database locked by another process, waits up to Options.BusyTimeout; past
// it every write of the batch returns an error wrapping the driver's
// SQLITE_BUSY ("database is locked"), which the engine treats like any
// store failure. A caller whose context ends while its write is queued or
// running gets the context's error; a write not yet started is then
// skipped, one already in the batch may still commit (as with any store
// whose answer is lost). Every other driver or I/O error (disk full,
// read-only file, corrupt stored response) is returned wrapped, prefixed
// "sqlite:". The only retry is internal to group commit: when a statement
// fails with an SQL error mid-batch, the batch is rolled back and its
// writes are run again one transaction each, so that each caller gets the
// outcome of its own write; the store never guesses an outcome.
//
// WAL needs shared memory between the processes, so the file must be on a
// local filesystem, not a network share.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/groupcommit"
	"github.com/leveehq/levee/internal/recentkeys"
	"github.com/leveehq/levee/internal/sqlitefile"
	sqlitedrv "modernc.org/sqlite"
)

// schemaVersion is the layout of levee's tables, recorded in the database's
// user_version pragma. It is per file: every table this package creates in
// one file shares it. Open refuses a file whose version is newer.
//
//   - 1: the table and its expires_at index.
//   - 2: the "<table>_open" partial index over the records that are not
//     completed (in progress or unknown), for List; records may be in
//     state 3 (unknown), which version 1 readers would call corrupt. The
//     index was on (state, key) and is now on state alone (entries in
//     rowid order: a new record's entry goes next to the last one, where
//     (state, key) put it on a random page of the index, a page written
//     to the WAL twice per request). Open rebuilds an index of the old
//     shape; the version stays 2, as readers of either shape read both.
const schemaVersion = 2

// maxConns bounds the connections of a file Store: the writer's, kept for
// it (writerconn.go), and the readers'.
const maxConns = 16

// Memory is the path that opens a private in-memory database instead of a
// file: nothing is persisted and nothing is shared with other stores.
const Memory = ":memory:"

// Options configure a Store. The zero value is the default.
type Options struct {
	// Table is the table that holds the records; it is created if missing.
	// It must be a plain SQL identifier (letters, digits, underscore, not
	// starting with a digit). Default "idempotency_keys".
	Table string
	// BusyTimeout is how long a call waits for a lock held by another
	// connection or process before failing with SQLITE_BUSY. Default 5s;
	// it must not be negative. It is kept to whole milliseconds.
	BusyTimeout time.Duration
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (o Options) withDefaults() (Options, error) {
	if o.Table == "" {
		o.Table = "idempotency_keys"
	}
	if !identRE.MatchString(o.Table) {
		return o, fmt.Errorf("sqlite: Options.Table %q is not a plain SQL identifier", o.Table)
	}
	if o.BusyTimeout < 0 {
		return o, fmt.Errorf("sqlite: Options.BusyTimeout %v is negative", o.BusyTimeout)
	}
	if o.BusyTimeout == 0 {
		o.BusyTimeout = 5 * time.Second
	}
	return o, nil
}

// Store is an idempotency.Store over one SQLite database. It is safe for
// concurrent use; Close it when done.
type Store struct {
	db     *sql.DB
	trips  atomic.Int64
	q      queries
	st     statements
	w      *groupcommit.Queue[*writeOp]
	ops    sync.Pool // *writeOp
	recent *recentkeys.Set
	ckpt   checkpointer
	memory bool

	// The writer's connection and statements (writerconn.go), used under
	// wmu by the writer goroutine and by Close.
	wmu     sync.Mutex
	wconn   *sql.Conn
	ws      *writerStmts
	wclosed bool // set by Close: later batches fail with errClosed
	closed  atomic.Bool
}

// statements are the queries prepared once through database/sql, which
// prepares each on a connection the first time that connection runs it and
// keeps it there: SQLite then parses every statement once per connection,
// not once per call (parsing was a third of the store's CPU under load). The
// writer's statements are prepared on its own connection (writerconn.go).
type statements struct {
	get, replay, lookup, list *sql.Stmt
}

func (s *Store) prepare(ctx context.Context) error {
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&s.st.get, s.q.get}, {&s.st.replay, s.q.replay}, {&s.st.lookup, s.q.lookup},
		{&s.st.list, s.q.list},
	} {
		st, err := s.db.PrepareContext(ctx, p.query)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		*p.dst = st
	}
	return nil
}

// queries holds the SQL text, built once with the table name.
type queries struct {
	claim, takeover, get, replay, lookup, renew, complete, release, markUnknown, list, deleteExpired string
	keyPrefix                                                                                        string
}

func newQueries(table string) queries {
	t := `"` + table + `"`
	cols := `fingerprint, state, token, lease_until, expires_at, response`
	return queries{
		// ?1 key, ?2 fingerprint, ?3 token, ?4 lease_until, ?5 expires_at.
		// A new key: one plain insert (no upsert, no RETURNING: the
		// cheapest statement for the common case).
		claim: `INSERT INTO ` + t + ` (key, fingerprint, state, token, lease_until, expires_at, response)
VALUES (?1, ?2, 1, ?3, ?4, ?5, NULL) ON CONFLICT(key) DO NOTHING`,
		// The key exists: take it over if it is claimable (?6 now). The
		// WHERE is Record.Claimable: expired, or in progress with a lapsed
		// lease.
		takeover: `UPDATE ` + t + ` SET fingerprint = ?2, state = 1, token = ?3, lease_until = ?4, expires_at = ?5,
  response = NULL WHERE key = ?1 AND (expires_at <= ?6 OR (state = 1 AND lease_until <= ?6))`,
		get: `SELECT ` + cols + ` FROM ` + t + ` WHERE key = ?1`,
		// A completed or unknown record blocks every claim until it expires.
		replay:      `SELECT ` + cols + ` FROM ` + t + ` WHERE key = ?1 AND state IN (2, 3) AND expires_at > ?2`,
		lookup:      `SELECT ` + cols + ` FROM ` + t + ` WHERE key = ?1 AND expires_at > ?2`,
		renew:       `UPDATE ` + t + ` SET lease_until = ?3, expires_at = ?4 WHERE key = ?1 AND token = ?2 AND state = 1`,
		complete:    `UPDATE ` + t + ` SET state = 2, expires_at = ?3, response = ?4 WHERE key = ?1 AND token = ?2 AND state IN (1, 3)`,
		release:     `DELETE FROM ` + t + ` WHERE key = ?1 AND token = ?2 AND state IN (1, 3)`,
		markUnknown: `UPDATE ` + t + ` SET state = 3, lease_until = ?3, expires_at = ?4 WHERE key = ?1 AND token = ?2 AND state = 1`,
		// The open records of one state (few) through the open index, then
		// sorted by key; "state <> 2" repeats the index's WHERE, which
		// INDEXED BY requires.
		list: `SELECT key, fingerprint, state, token, lease_until, expires_at FROM ` + t + ` INDEXED BY "` + table + `_open"` +
			` WHERE state = ?1 AND state <> 2 AND key > ?2 AND expires_at > ?3 ORDER BY key LIMIT ?4`,
		// The first key at or above ?1, through the key index (HasKeyPrefix
		// compares it; SQL's substr and length count characters and stop
		// at a NUL).
		keyPrefix: `SELECT key FROM ` + t + ` WHERE key >= ?1 ORDER BY key LIMIT 1`,
		// "?2 + 0": SQLite plans with a bare bound LIMIT of a subquery and
		// then expires the prepared statement at every bind (sqlitequeue's
		// claims, docs/benchmarks.md).
		deleteExpired: `DELETE FROM ` + t + ` WHERE rowid IN (SELECT rowid FROM ` + t +
			` WHERE expires_at <= ?1 AND NOT (state = 1 AND lease_until > ?1) ORDER BY expires_at LIMIT ?2 + 0)`,
	}
}

// Open opens (creating if needed) the SQLite database at path and the
// store's table in it. path is a file name, or Memory (":memory:") for a
// private in-memory database served by a single connection, which lives
// until Close. The directory of a file must exist.
//
// Each connection sets journal_mode=WAL, synchronous=NORMAL, wal_autocheckpoint=0,
// busy_timeout=Options.BusyTimeout and foreign_keys=OFF, and begins every
// transaction IMMEDIATE. Open creates the table and its expires_at index if
// missing and records the schema version in the user_version pragma; it
// fails if the file was written by a newer schema.
func Open(path string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	dsn, err := dataSource(path, opts)
	if err != nil {
		return nil, err
	}
	base, err := sqlitedrv.NewConnector(dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %q: %w", path, err)
	}
	s := &Store{q: newQueries(opts.Table), recent: recentkeys.New(), memory: path == Memory}
	s.db = sql.OpenDB(countingConnector{Connector: base, n: &s.trips})
	if path == Memory {
		// Every connection to ":memory:" is a separate database: keep one,
		// forever.
		s.db.SetMaxOpenConns(1)
		s.db.SetMaxIdleConns(1)
		s.db.SetConnMaxLifetime(0)
		s.db.SetConnMaxIdleTime(0)
	} else {
		// Opening a connection parses the schema, runs the pragmas and
		// prepares each statement again. Readers run in-process and are
		// CPU-bound, so more connections than a few per core only churn:
		// cap the pool and keep every connection it opens.
		s.db.SetMaxOpenConns(maxConns)
		s.db.SetMaxIdleConns(maxConns)
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.BusyTimeout+5*time.Second)
	defer cancel()
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		err := s.migrate(ctx, opts.Table)
		if err == nil {
			if err := s.prepare(ctx); err != nil {
				_ = s.db.Close()
				return nil, fmt.Errorf("sqlite: open %q: %w", path, err)
			}
			s.w = groupcommit.New(maxBatch, 1, s.runBatch)
			if path != Memory {
				// Not counted: checkpoints are not the store's round trips.
				s.ckpt.db = sql.OpenDB(base)
				s.ckpt.db.SetMaxOpenConns(1)
			}
			return s, nil
		}
		// Processes opening a brand-new file at once race to switch it to
		// WAL; SQLite answers SQLITE_BUSY without waiting for its busy
		// handler. Retry within the open's time bound.
		if !sqlitefile.IsBusy(err) || ctx.Err() != nil {
			_ = s.db.Close()
			return nil, fmt.Errorf("sqlite: open %q: %w", path, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// dataSource builds the driver DSN for path.
func dataSource(path string, opts Options) (string, error) {
	q := "_busy_timeout=" + strconv.FormatInt(opts.BusyTimeout.Milliseconds(), 10) +
		"&_foreign_keys=0&_txlock=immediate"
	switch path {
	case "":
		return "", errors.New(`sqlite: empty path (use ":memory:" for an in-memory store)`)
	case Memory:
		return Memory + "?" + q, nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("sqlite: open %q: %w", path, err)
	}
	dir := filepath.Dir(abs)
	fi, err := os.Stat(dir)
	if err != nil {
		return "", fmt.Errorf("sqlite: open %q: directory: %w", path, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("sqlite: open %q: %s is not a directory", path, dir)
	}
	// A file: URI, so that any '?', '#' or '%' in the path is escaped rather
	// than taken for the start of the driver's parameters.
	return sqlitefile.URI(abs) + "?" + q + "&_journal_mode=WAL&_synchronous=NORMAL&_pragma=wal_autocheckpoint(0)", nil
}

// migrate creates the schema in one IMMEDIATE transaction, so concurrent
// Opens of one file serialize.
func (s *Store) migrate(ctx context.Context, table string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read user_version: %w", err)
	}
	if v > schemaVersion {
		return fmt.Errorf("database schema version %d is newer than this levee supports (%d)", v, schemaVersion)
	}
	t := `"` + table + `"`
	for _, stmt := range []string{
		`CREATE TABLE IF NOT EXISTS ` + t + ` (
  key         TEXT PRIMARY KEY NOT NULL,
  fingerprint BLOB NOT NULL,
  state       INTEGER NOT NULL,
  token       INTEGER NOT NULL,
  lease_until INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL,
  response    BLOB
) STRICT`,
		`CREATE INDEX IF NOT EXISTS "` + table + `_expires_at" ON ` + t + ` (expires_at)`,
		// Version 2. On a version 1 file this is the whole upgrade; it
		// reads the table once (inside this transaction, holding the write
		// lock) to build an index over the few records not completed.
		`CREATE INDEX IF NOT EXISTS "` + table + `_open" ON ` + t + ` (state) WHERE state <> 2`,
	} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	// An open index of the first shape, (state, key): rebuilt on state.
	var cols int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pragma_index_info(?1)`, table+"_open").Scan(&cols); err != nil {
		return fmt.Errorf("read the open index: %w", err)
	}
	if cols > 1 {
		for _, stmt := range []string{
			`DROP INDEX "` + table + `_open"`,
			`CREATE INDEX "` + table + `_open" ON ` + t + ` (state) WHERE state <> 2`,
		} {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("rebuild the open index: %w", err)
			}
		}
	}
	if v < schemaVersion {
		if _, err := tx.ExecContext(ctx, `PRAGMA user_version = `+strconv.Itoa(schemaVersion)); err != nil {
			return fmt.Errorf("set user_version: %w", err)
		}
	}
	return tx.Commit()
}

// Close closes the database. Calls after Close fail (writes still queued
// get the database's "closed" error). It is safe to call more than once.
func (s *Store) Close() error {
	s.closed.Store(true)
	s.closeWriter()
	s.ckpt.close()
	for _, st := range []*sql.Stmt{s.st.get, s.st.replay, s.st.lookup, s.st.list} {
		_ = st.Close() // closing the database below closes them anyway
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("sqlite: close: %w", err)
	}
	return nil
}

// RoundTrips returns how many SQLite transactions this Store has run since
// Open, schema setup included. It is for tests and diagnostics only.
//
// SQLite is in-process, so there is no network round trip; the counter
// measures the unit that costs instead: one transaction, which takes the
// locks, reads one snapshot and, for a write, commits to the WAL. It is
// counted at the database/sql driver connection, not by Store methods: one
// per transaction begun plus one per statement run outside a transaction
// (an autocommit statement). A Claim of a key this Store has not seen
// recently is one writer transaction (no read first); a Claim of a key it
// has seen that finds a blocking record (a replay, a duplicate in flight)
// is one autocommit SELECT, and one that then writes is that SELECT plus a
// writer transaction; Renew, Complete, Release and MarkUnknown are a
// writer transaction each; Lookup and List one autocommit statement each.
// A writer transaction is shared by every write in its batch, so under
// concurrency a new request costs a fraction of two commits (the
// conformance suite runs requests one at a time and counts 2). The
// store's WAL checkpoints run on a connection of their own and are not
// counted.
func (s *Store) RoundTrips() int64 { return s.trips.Load() }

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

// Claim implements idempotency.Store. For a key this Store has recently
// claimed or found (see internal/recentkeys) it first reads the key (one autocommit
// SELECT on any pooled connection, in parallel with every other reader): a
// live record that blocks the claim — completed, unknown, or in progress
// under a live lease — is returned at once, so a replay or a duplicate in
// flight takes no write lock and never queues behind writers. Otherwise,
// and for a key not seen here (most likely new), the claim goes to the
// writer (see writer.go), which runs the INSERT ... ON CONFLICT DO
// NOTHING, then if needed the takeover UPDATE ... WHERE claimable, under
// the write lock, with concurrent writes in the same transaction, and
// returns the blocking record read under that lock if there is one.
func (s *Store) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	if s.recent.Has(req.Key) {
		rec, err := scanRecord(req.Key, s.st.get.QueryRowContext(ctx, req.Key))
		switch {
		case err == nil && !rec.Claimable(req.Now):
			return idempotency.ClaimResult{Existing: rec}, nil
		case err != nil && !errors.Is(err, idempotency.ErrNotFound):
			return idempotency.ClaimResult{}, fmt.Errorf("sqlite: claim: %w", err)
		}
	}
	op := s.getOp()
	op.kind, op.req = opClaim, req
	if err := s.write(ctx, op); err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("sqlite: claim: %w", err)
	}
	res, err := op.res, op.err
	s.putOp(op)
	if err == nil && (res.Claimed || res.Existing != nil) {
		s.recent.Add(req.Key)
	}
	return res, err
}

// errCorrupt is wrapped by scanRecord for a row it cannot decode.
var errCorrupt = errors.New("corrupt record")

// scanRecord reads one row of get or lookup; ErrNotFound when there is none.
func scanRecord(key string, row *sql.Row) (*idempotency.Record, error) {
	var (
		fp, resp                []byte
		state, token, lease, ex int64
	)
	if err := row.Scan(&fp, &state, &token, &lease, &ex, &resp); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, idempotency.ErrNotFound
		}
		return nil, err
	}
	return decodeRecord(key, fp, state, token, lease, ex, resp)
}

// decodeRecord builds a record from its columns, refusing one that cannot
// be what the store wrote.
func decodeRecord(key string, fp []byte, state, token, lease, ex int64, resp []byte) (*idempotency.Record, error) {
	rec := &idempotency.Record{
		Key:        key,
		State:      idempotency.State(state),
		Token:      uint64(token),
		LeaseUntil: fromMS(lease),
		ExpiresAt:  fromMS(ex),
	}
	if len(fp) != len(rec.Fingerprint) {
		return nil, fmt.Errorf("%w %q: fingerprint is %d bytes", errCorrupt, key, len(fp))
	}
	copy(rec.Fingerprint[:], fp)
	if rec.State != idempotency.StateInProgress && rec.State != idempotency.StateCompleted && rec.State != idempotency.StateUnknown {
		return nil, fmt.Errorf("%w %q: state %d", errCorrupt, key, state)
	}
	if rec.State == idempotency.StateCompleted {
		r, err := idempotency.UnmarshalResponse(resp)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", errCorrupt, key, err)
		}
		rec.Response = &r
	}
	return rec, nil
}

// Renew implements idempotency.Store through the writer: one guarded
// UPDATE, in a transaction shared with concurrent writes.
func (s *Store) Renew(ctx context.Context, key string, token uint64, _, leaseUntil, expiresAt time.Time) error {
	return s.fencedWrite(ctx, opRenew, key, token, ms(leaseUntil), ms(expiresAt), nil)
}

// Complete implements idempotency.Store through the writer. The response
// is stored in the encoding of idempotency.MarshalResponse.
func (s *Store) Complete(ctx context.Context, key string, token uint64, resp idempotency.Response, _, expiresAt time.Time) error {
	return s.fencedWrite(ctx, opComplete, key, token, ms(expiresAt), 0, idempotency.MarshalResponse(resp))
}

// Release implements idempotency.Store through the writer.
func (s *Store) Release(ctx context.Context, key string, token uint64) error {
	return s.fencedWrite(ctx, opRelease, key, token, 0, 0, nil)
}

// MarkUnknown implements idempotency.Store through the writer.
func (s *Store) MarkUnknown(ctx context.Context, key string, token uint64, now, expiresAt time.Time) error {
	return s.fencedWrite(ctx, opMarkUnknown, key, token, ms(now), ms(expiresAt), nil)
}

// Features implements idempotency.Store: the store lists; SQLite runs
// in-process but waits on file locks and disk, so it is not InProcess and
// the engine keeps its per-call timeouts.
func (s *Store) Features() idempotency.Features { return idempotency.Features{List: true} }

// List implements idempotency.Store with one SELECT over the open-records
// index.
func (s *Store) List(ctx context.Context, req idempotency.ListRequest) ([]idempotency.Record, error) {
	rows, err := s.st.list.QueryContext(ctx, int64(req.State), req.After, ms(req.Now), req.Limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list: %w", err)
	}
	defer rows.Close()
	var out []idempotency.Record
	for rows.Next() {
		var (
			key                     string
			fp                      []byte
			state, token, lease, ex int64
		)
		if err := rows.Scan(&key, &fp, &state, &token, &lease, &ex); err != nil {
			return nil, fmt.Errorf("sqlite: list: %w", err)
		}
		rec := idempotency.Record{Key: key, State: idempotency.State(state), Token: uint64(token),
			LeaseUntil: fromMS(lease), ExpiresAt: fromMS(ex)}
		if len(fp) != len(rec.Fingerprint) {
			return nil, fmt.Errorf("sqlite: list: corrupt record %q: fingerprint is %d bytes", key, len(fp))
		}
		copy(rec.Fingerprint[:], fp)
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list: %w", err)
	}
	return out, nil
}

// Lookup implements idempotency.Store.
func (s *Store) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	rec, err := scanRecord(key, s.st.lookup.QueryRowContext(ctx, key, ms(now)))
	if err != nil {
		if errors.Is(err, idempotency.ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("sqlite: lookup: %w", err)
	}
	return rec, nil
}

// HasKeyPrefix reports whether the store holds a record, live or expired
// but not yet deleted, whose key begins with prefix: one step into the key
// index at prefix (the first key at or above it, in the index's byte
// order, begins with prefix exactly when some key does), compared in Go,
// byte by byte, on a reader connection. The gateway asks it before looking
// webhook ids up in the store during the move of webhook dedupe into the
// queue (docs/webhooks.md).
func (s *Store) HasKeyPrefix(ctx context.Context, prefix string) (bool, error) {
	var first string
	err := s.db.QueryRowContext(ctx, s.q.keyPrefix, prefix).Scan(&first)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("sqlite: key prefix: %w", err)
	}
	return strings.HasPrefix(first, prefix), nil
}

// DeleteExpired deletes up to limit records whose retention ended at or
// before now, oldest first, and returns how many it deleted; limit <= 0
// means no limit. A record still held by a live lease is kept (a claim
// whose retention is shorter than its lease). Expired records already
// count as absent to every other method; this only reclaims their space.
// It runs in the store's writer, in a batch with concurrent writes (so it
// never contends with them for the file's write lock): call it with a
// modest limit in a loop to keep each batch short.
func (s *Store) DeleteExpired(ctx context.Context, now time.Time, limit int) (int64, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	op := s.getOp()
	op.kind, op.t1, op.t2 = opDeleteExpired, ms(now), int64(limit)
	if err := s.write(ctx, op); err != nil {
		return 0, fmt.Errorf("sqlite: delete expired: %w", err)
	}
	n, err := op.n, op.err // err: from the writer, prefixed already
	s.putOp(op)
	if err != nil {
		return 0, err
	}
	return n, nil
}

var _ idempotency.Store = (*Store)(nil)
