// Package sqlitequeue is a queue.Backend on one SQLite file through the
// pure-Go driver modernc.org/sqlite: levee's embedded default, so that
// durable delivery needs no other service. The file may be the one the
// idempotency store (package store/sqlite) uses; the tables do not clash.
//
// # Group commit
//
// Every write (Enqueue, Claim, Ack, Nack, Bury, Requeue, DeleteDead,
// SetTarget) is handed to one writer goroutine that runs whatever writes
// are waiting as one transaction and commits once: concurrent enqueues
// share one fsync. Each write is isolated from the others in its batch: a
// single-statement write (Ack, Nack, the usual Claim) needs nothing more,
// since SQLite undoes a failed statement alone; a multi-statement one runs in a
// savepoint of its own, except Enqueue, whose statements fail only when
// SQLite does: it runs bare, and should it fail, the batch is rolled back
// and run again with every write in a savepoint (bare, and with its
// upsert an Exec, an enqueue costs 40% less CPU: docs/benchmarks.md). A call returns after the
// commit that holds its write. Reads (ListDead, GetDead, Targets) use a
// separate pool of connections and see the last commit (WAL).
//
// # Durability
//
// The file is in WAL mode with synchronous=FULL (Options.Synchronous):
// a returned Enqueue survives a process crash and, with FULL, an operating
// system crash or power loss too. Several processes may open the same
// file; their writers take turns on SQLite's write lock (waiting up to
// Options.BusyTimeout).
//
// # Failures
//
// An error after which SQLite may have rolled the transaction back (a full
// disk, an I/O error, SQLITE_BUSY or NOMEM) fails every write of the batch
// it happened in (nothing of that batch is committed) and is returned
// wrapped, prefixed "sqlitequeue:"; an error confined to one write (a
// constraint, ErrLeaseLost) is that write's alone, and the others commit.
// A call whose context ends before its write was started is not written
// and returns the context's error (so is one whose batch had to be run
// again and whose context ended meanwhile); once its batch commits, its
// result is returned even if its context ended.
package sqlitequeue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/leveehq/levee/internal/sqlitefile"
	"github.com/leveehq/levee/queue"
)

// Options configure a Backend. The zero value selects the defaults.
type Options struct {
	// BusyTimeout is how long a write waits for another process's write
	// lock before failing. Default 5s.
	BusyTimeout time.Duration
	// Synchronous is SQLite's synchronous pragma: "FULL" (default: every
	// commit is fsynced, durable across power loss) or "NORMAL" (durable
	// across a process crash; the last commits may be lost with the
	// operating system).
	Synchronous string
	// MaxBatch caps how many writes share one transaction. Default 512.
	MaxBatch int
}

// Backend is a queue.Backend on a SQLite file. Close it when done.
type Backend struct {
	rd        *sql.DB
	wr        *sql.DB
	stmts     map[string]*sql.Stmt // query text -> prepared on wr's one connection
	toPrepare map[string]struct{}
	ops       chan *op
	quit      chan struct{}
	done      chan struct{}
	closeMu   sync.Once
	max       int
	busy      time.Duration
}

// op is one write waiting for the writer.
type op struct {
	// canceled is the caller's ctx.Err: a write whose caller gave up
	// before the writer reached it is skipped.
	canceled func() error
	// fn runs the write; wctx is the writer's context (a started write is
	// completed even if its caller gives up).
	fn   func(wctx context.Context, tx *sql.Tx) error
	mode opMode
	done chan error
}

// opMode is how the writer isolates an op from the others in its batch.
type opMode uint8

const (
	// modeSavepoint: fn runs in a savepoint of its own; an error rolls
	// back its writes alone and is the op's result.
	modeSavepoint opMode = iota
	// modeSingle: fn runs at most one statement that writes (and any
	// number of reads), so it needs no savepoint: SQLite undoes a failed
	// statement alone.
	modeSingle
	// modeOptimistic: fn runs several statements that write and fails
	// only when SQLite does (an I/O error, a full disk): it runs without a
	// savepoint, and an error rolls the whole batch back, which the writer
	// then runs again with every op in a savepoint, so that each caller
	// gets its own op's outcome and nothing of a failed op is committed.
	modeOptimistic
)

// errRerun aborts a batch whose optimistic op failed.
var errRerun = errors.New("sqlitequeue: an optimistic write failed; the batch runs again in savepoints")

// Open opens (creating if needed) the database file at path and the queue
// tables in it, and starts the writer goroutine. The directory must exist.
func Open(path string, opts Options) (*Backend, error) {
	if opts.BusyTimeout < 0 || opts.MaxBatch < 0 {
		return nil, errors.New("sqlitequeue: Options.BusyTimeout and MaxBatch must not be negative")
	}
	if opts.BusyTimeout == 0 {
		opts.BusyTimeout = 5 * time.Second
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = 512
	}
	switch strings.ToUpper(opts.Synchronous) {
	case "":
		opts.Synchronous = "FULL"
	case "FULL", "NORMAL":
	default:
		return nil, fmt.Errorf("sqlitequeue: Options.Synchronous %q is not FULL or NORMAL", opts.Synchronous)
	}
	if path == "" || path == ":memory:" {
		return nil, errors.New("sqlitequeue: a file path is required (an in-memory queue would not be durable)")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlitequeue: open %q: %w", path, err)
	}
	if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("sqlitequeue: open %q: the directory does not exist", path)
	}
	u := sqlitefile.URI(abs)
	// SQLite's own busy handler sleeps up to 100ms between tries, and a
	// writer that commits back to back never leaves it a gap that long: the
	// writer waits for the lock itself (beginTx) and leaves gaps (writer).
	dsn := u + "?_pragma=busy_timeout(0)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + opts.Synchronous + ")&_txlock=immediate"
	wr, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlitequeue: open %q: %w", path, err)
	}
	wr.SetMaxOpenConns(1)
	wr.SetMaxIdleConns(1)
	wr.SetConnMaxLifetime(0)
	wr.SetConnMaxIdleTime(0)
	rd, err := sql.Open("sqlite", dsn)
	if err != nil {
		_ = wr.Close()
		return nil, fmt.Errorf("sqlitequeue: open %q: %w", path, err)
	}
	rd.SetMaxOpenConns(4)
	b := &Backend{rd: rd, wr: wr, ops: make(chan *op), quit: make(chan struct{}), done: make(chan struct{}), max: opts.MaxBatch, busy: opts.BusyTimeout,
		stmts: map[string]*sql.Stmt{}, toPrepare: map[string]struct{}{}}
	ctx, cancel := context.WithTimeout(context.Background(), opts.BusyTimeout+5*time.Second)
	defer cancel()
	if err := b.migrate(ctx); err != nil {
		_ = wr.Close()
		_ = rd.Close()
		return nil, fmt.Errorf("sqlitequeue: open %q: %w", path, err)
	}
	go b.writer()
	return b, nil
}

// Close stops the writer (pending writes fail with an error) and closes the
// database. It is safe to call more than once.
func (b *Backend) Close() error {
	var err error
	b.closeMu.Do(func() {
		close(b.quit)
		<-b.done
		for _, st := range b.stmts {
			_ = st.Close()
		}
		err = errors.Join(b.wr.Close(), b.rd.Close())
	})
	return err
}

var errClosed = errors.New("sqlitequeue: backend closed")

// HasQueueTables reports whether the SQLite file at path (which must
// exist) holds this package's tables, read without changing the file.
func HasQueueTables(path string) (bool, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	u := sqlitefile.URI(abs)
	db, err := sql.Open("sqlite", u+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return false, err
	}
	defer func() { _ = db.Close() }()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'levee_queue_messages'`).Scan(&n); err != nil {
		return false, fmt.Errorf("sqlitequeue: %s: %w", path, err)
	}
	return n > 0, nil
}

func (b *Backend) migrate(ctx context.Context) error {
	tx, err := b.beginTx(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, schema); err != nil {
		return err
	}
	return tx.Commit()
}

// beginTx begins an IMMEDIATE transaction, waiting up to the busy timeout
// for another process's write lock, trying every half millisecond.
func (b *Backend) beginTx(ctx context.Context) (*sql.Tx, error) {
	deadline := time.Now().Add(b.busy)
	for {
		tx, err := b.wr.BeginTx(ctx, nil)
		if err == nil || !sqlitefile.IsBusy(err) || time.Now().After(deadline) {
			return tx, err
		}
		t := time.NewTimer(500 * time.Microsecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-b.quit:
			t.Stop()
			return nil, errClosed
		case <-t.C:
		}
	}
}

// schema is the queue's tables. Times are Unix microseconds.
const schema = `
CREATE TABLE IF NOT EXISTS levee_queue_messages (
  seq          INTEGER PRIMARY KEY AUTOINCREMENT,
  queue        TEXT NOT NULL,
  id           TEXT NOT NULL,
  target       TEXT NOT NULL,
  payload      BLOB,
  headers      BLOB,
  dedupe_id    TEXT NOT NULL,
  enqueued_at  INTEGER NOT NULL,
  available_at INTEGER NOT NULL,
  attempts     INTEGER NOT NULL DEFAULT 0,
  token        INTEGER NOT NULL DEFAULT 0,
  history      BLOB,
  UNIQUE (queue, id)
);
-- The claim's candidate scan reads only this index (target included: no
-- table lookup per candidate). It replaces levee_queue_messages_ready
-- (queue, available_at, seq), dropped below on files that have it.
CREATE INDEX IF NOT EXISTS levee_queue_messages_due ON levee_queue_messages (queue, available_at, seq, target);
DROP INDEX IF EXISTS levee_queue_messages_ready;
-- The claim's per-target step walks targets and each target's oldest
-- messages through this one.
CREATE INDEX IF NOT EXISTS levee_queue_messages_target ON levee_queue_messages (queue, target, available_at, seq);
CREATE TABLE IF NOT EXISTS levee_queue_dead (
  seq           INTEGER PRIMARY KEY AUTOINCREMENT,
  queue         TEXT NOT NULL,
  id            TEXT NOT NULL,
  target        TEXT NOT NULL,
  payload       BLOB,
  headers       BLOB,
  dedupe_id     TEXT NOT NULL,
  enqueued_at   INTEGER NOT NULL,
  attempts      INTEGER NOT NULL,
  history       BLOB,
  reason        TEXT NOT NULL,
  first_failure INTEGER NOT NULL,
  last_failure  INTEGER NOT NULL,
  dead_at       INTEGER NOT NULL,
  UNIQUE (queue, id)
);
CREATE INDEX IF NOT EXISTS levee_queue_dead_at ON levee_queue_dead (queue, dead_at);
CREATE TABLE IF NOT EXISTS levee_queue_dedupe (
  queue      TEXT NOT NULL,
  dedupe_id  TEXT NOT NULL,
  message_id TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (queue, dedupe_id)
);
CREATE INDEX IF NOT EXISTS levee_queue_dedupe_expires ON levee_queue_dedupe (expires_at);
CREATE TABLE IF NOT EXISTS levee_queue_targets (
  queue    TEXT NOT NULL,
  target   TEXT NOT NULL,
  disabled INTEGER NOT NULL,
  reason   TEXT NOT NULL,
  since    INTEGER NOT NULL,
  PRIMARY KEY (queue, target)
);`

// writer runs the writes in batches, one transaction per batch.
func (b *Backend) writer() {
	defer close(b.done)
	ctx := context.Background()
	batch := make([]*op, 0, b.max)
	busySince := time.Time{}
	for {
		batch = batch[:0]
		// A writer busy for a while leaves a gap before its next
		// transaction, so that another process's writer gets a turn.
		if !busySince.IsZero() && time.Since(busySince) > 50*time.Millisecond {
			select {
			case <-b.quit:
				return
			case <-time.After(2 * time.Millisecond):
			}
			busySince = time.Time{}
		}
		select {
		case o := <-b.ops:
			batch = append(batch, o)
			if busySince.IsZero() {
				busySince = time.Now()
			}
		default:
			busySince = time.Time{}
		}
		if len(batch) == 0 {
			select {
			case <-b.quit:
				return
			case o := <-b.ops:
				batch = append(batch, o)
				busySince = time.Now()
			}
		}
	drain:
		for len(batch) < b.max {
			select {
			case o := <-b.ops:
				batch = append(batch, o)
			default:
				break drain
			}
		}
		b.commit(ctx, batch)
		if len(b.toPrepare) > 0 {
			b.prepareQueued(ctx)
		}
	}
}

func (b *Backend) commit(ctx context.Context, batch []*op) {
	errs := make([]error, len(batch))
	err := b.runBatch(ctx, batch, errs, false)
	if errors.Is(err, errRerun) {
		clear(errs)
		err = b.runBatch(ctx, batch, errs, true)
	}
	for i, o := range batch {
		if err != nil && errs[i] == nil {
			errs[i] = err
		}
		o.done <- errs[i]
	}
}

// runBatch runs batch as one transaction and commits it, setting errs[i]
// to op i's own error. It returns an error that fails every op without one
// (nothing was committed), errRerun when an optimistic op failed (nothing
// was committed; run it again with isolate set: every op but the single
// ones in a savepoint).
func (b *Backend) runBatch(ctx context.Context, batch []*op, errs []error, isolate bool) error {
	tx, err := b.beginTx(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for i, o := range batch {
		if err := o.canceled(); err != nil {
			errs[i] = err
			continue
		}
		// A single statement needs no savepoint (SQLite undoes a failed
		// statement alone), nor does an optimistic op on the first run.
		savepoint := o.mode == modeSavepoint || (o.mode == modeOptimistic && isolate)
		if savepoint {
			if _, err := b.txExec(ctx, tx, `SAVEPOINT op`); err != nil {
				return err
			}
		}
		err := o.fn(ctx, tx)
		switch {
		case err == nil:
		case sqlitefile.TxLost(err):
			return err
		case o.mode == modeOptimistic && !isolate:
			return errRerun
		default:
			errs[i] = err
			if savepoint {
				if _, err := b.txExec(ctx, tx, `ROLLBACK TO op`); err != nil {
					return err
				}
			}
		}
		if savepoint {
			if _, err := b.txExec(ctx, tx, `RELEASE op`); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

// Statements the writer runs are prepared once on its connection (wr has
// exactly one, kept forever): modernc's SQLite parses the text of every
// statement run unprepared, and parsing the claim's statement was a tenth
// of the gateway's CPU under webhook load. A statement's first run is
// unprepared (the connection is inside the batch's transaction, so nothing
// can be prepared on it then); the writer prepares it after that batch.
// Only the writer goroutine touches stmts and toPrepare.

func (b *Backend) stmt(ctx context.Context, tx *sql.Tx, query string) *sql.Stmt {
	if st, ok := b.stmts[query]; ok {
		return tx.StmtContext(ctx, st)
	}
	b.toPrepare[query] = struct{}{}
	return nil
}

// prepareQueued prepares the statements first run in the last batch.
func (b *Backend) prepareQueued(ctx context.Context) {
	for q := range b.toPrepare {
		delete(b.toPrepare, q)
		if st, err := b.wr.PrepareContext(ctx, q); err == nil {
			b.stmts[q] = st
		}
	}
}

func (b *Backend) txExec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	if st := b.stmt(ctx, tx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, query, args...)
}

func (b *Backend) txQuery(ctx context.Context, tx *sql.Tx, query string, args ...any) (*sql.Rows, error) {
	if st := b.stmt(ctx, tx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, query, args...)
}

func (b *Backend) txQueryRow(ctx context.Context, tx *sql.Tx, query string, args ...any) *sql.Row {
	if st := b.stmt(ctx, tx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, query, args...)
}

// write runs fn in the writer's next transaction, isolated from the
// batch's other ops as mode says, and returns its error. fn may run more
// than once (a batch rolled back and run again): it must set its results
// afresh on every run.
func (b *Backend) write(ctx context.Context, mode opMode, fn func(wctx context.Context, tx *sql.Tx) error) error {
	return b.do(ctx, &op{canceled: ctx.Err, fn: fn, mode: mode, done: make(chan error, 1)})
}

func (b *Backend) do(ctx context.Context, o *op) error {
	select {
	case b.ops <- o:
	case <-b.quit:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := <-o.done; err != nil {
		return fmt.Errorf("sqlitequeue: %w", err)
	}
	return nil
}

func us(t time.Time) int64 { return t.UnixMicro() }

func fromUS(v int64) time.Time { return time.UnixMicro(v) }

func encodeHeaders(h http.Header) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	return json.Marshal(h)
}

func decodeHeaders(b []byte) (http.Header, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var h http.Header
	err := json.Unmarshal(b, &h)
	return h, err
}

func encodeHistory(h []queue.Attempt) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	return json.Marshal(h)
}

func decodeHistory(b []byte) ([]queue.Attempt, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var h []queue.Attempt
	err := json.Unmarshal(b, &h)
	return h, err
}

// Enqueue implements queue.Backend.
func (b *Backend) Enqueue(ctx context.Context, req queue.EnqueueRequest) ([]queue.EnqueueResult, error) {
	rows := make([][]byte, len(req.Messages))
	for i, m := range req.Messages {
		h, err := encodeHeaders(m.Headers)
		if err != nil {
			return nil, fmt.Errorf("sqlitequeue: enqueue: headers: %w", err)
		}
		rows[i] = h
	}
	res := make([]queue.EnqueueResult, len(req.Messages))
	// Optimistic: the statements fail only when SQLite does (a duplicate
	// is a result, not an error), and then the writer runs the batch
	// again with this op in a savepoint, so that a dedupe row is never
	// committed without its message.
	err := b.write(ctx, modeOptimistic, func(wctx context.Context, tx *sql.Tx) error {
		for i, m := range req.Messages {
			res[i] = queue.EnqueueResult{ID: m.ID}
			if m.DedupeID != "" {
				// One row changed: the id is new (or its entry had
				// expired) and now names this message; none: a live entry
				// names the first message.
				r, err := b.txExec(wctx, tx, `INSERT INTO levee_queue_dedupe (queue, dedupe_id, message_id, expires_at) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (queue, dedupe_id) DO UPDATE SET message_id = excluded.message_id, expires_at = excluded.expires_at
  WHERE levee_queue_dedupe.expires_at <= ?5`, m.Queue, m.DedupeID, m.ID, us(req.DedupeUntil), us(req.Now))
				if err != nil {
					return err
				}
				if n, err := r.RowsAffected(); err != nil {
					return err
				} else if n == 0 {
					var first string
					if err := b.txQueryRow(wctx, tx, `SELECT message_id FROM levee_queue_dedupe WHERE queue = ?1 AND dedupe_id = ?2`,
						m.Queue, m.DedupeID).Scan(&first); err != nil {
						return err
					}
					res[i] = queue.EnqueueResult{ID: first, Duplicate: true}
					continue
				}
			}
			r, err := b.txExec(wctx, tx, `INSERT INTO levee_queue_messages (queue, id, target, payload, headers, dedupe_id, enqueued_at, available_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (queue, id) DO NOTHING`, m.Queue, m.ID, m.Target, m.Payload, rows[i], m.DedupeID, us(m.EnqueuedAt))
			if err != nil {
				return err
			}
			if n, err := r.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				res[i].Duplicate = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// claimWindow bounds the first scan of a claim: the oldest available
// messages it looks at, whatever their target.
func claimWindow(limit int) int { return limit*4 + 64 }

// The claim's two statements. claimOldest takes, from the oldest
// claimWindow available messages, up to ?8 whose target is neither
// excluded (?3, a JSON array) nor disabled, at most ?7 per target: a
// bounded scan of the due index, whatever the backlog. When that window is
// full and the claim is still short (the window is all one saturated or
// disabled target's backlog, say), claimPerTarget walks the distinct
// targets through the target index (one seek per target, a skip-scan) and
// takes the oldest ?7 available messages of each target still eligible:
// other targets' messages behind a hanging target's backlog are reached
// at a cost of one seek per target, not a scan of that backlog (which made
// every claim O(backlog) while one target was saturated).
//
// A subquery's LIMIT is written "?N + 0", never a bare "?N": SQLite plans
// with the value bound to a bare LIMIT parameter and so marks the
// prepared statement expired whenever that parameter is bound again; every
// claim then parsed and planned its statement anew (a tenth of the CPU of
// BenchmarkQueue/EndToEnd, 60% of the claim's under webhook ingest).
const (
	claimOldest = `WITH win AS (
  SELECT seq, target, available_at FROM levee_queue_messages
  WHERE queue = ?1 AND available_at <= ?2
  ORDER BY available_at, seq LIMIT ?4 + 0
), cand AS (
  SELECT seq, target, available_at FROM win
  WHERE target NOT IN (SELECT value FROM json_each(?3))
    AND target NOT IN (SELECT target FROM levee_queue_targets WHERE queue = ?1 AND disabled = 1)
), ranked AS (
  SELECT seq, available_at, row_number() OVER (PARTITION BY target ORDER BY available_at, seq) AS rn FROM cand
)
UPDATE levee_queue_messages SET available_at = ?5, attempts = attempts + 1, token = ?6
WHERE seq IN (SELECT seq FROM ranked WHERE rn <= ?7 ORDER BY rn, available_at, seq LIMIT ?8 + 0)
RETURNING id, target, payload, headers, dedupe_id, enqueued_at, attempts, history`
	// claimSimple is claimOldest when nothing can be filtered out: no
	// target excluded, none disabled in this queue, and the per-target
	// share no smaller than the claim (the gateway's one-target queues
	// claim this way): the oldest ?8 available messages in index order, no
	// window, no ranking, no sort.
	claimSimple = `UPDATE levee_queue_messages SET available_at = ?5, attempts = attempts + 1, token = ?6
WHERE seq IN (SELECT seq FROM levee_queue_messages WHERE queue = ?1 AND available_at <= ?2
  ORDER BY available_at, seq LIMIT ?8 + 0)
RETURNING id, target, payload, headers, dedupe_id, enqueued_at, attempts, history`
	claimAnyDisabled = `SELECT EXISTS (SELECT 1 FROM levee_queue_targets WHERE queue = ?1 AND disabled = 1)`
	claimWindowFull  = `SELECT count(*) FROM (SELECT 1 FROM levee_queue_messages
  WHERE queue = ?1 AND available_at <= ?2 ORDER BY available_at, seq LIMIT ?3 + 0)`
	claimPerTarget = `WITH RECURSIVE tg(t) AS (
  SELECT (SELECT min(target) FROM levee_queue_messages WHERE queue = ?1)
  UNION ALL
  SELECT (SELECT min(target) FROM levee_queue_messages WHERE queue = ?1 AND target > tg.t) FROM tg WHERE tg.t IS NOT NULL
), live AS (
  SELECT t FROM tg WHERE t IS NOT NULL
    AND t NOT IN (SELECT value FROM json_each(?3))
    AND t NOT IN (SELECT target FROM levee_queue_targets WHERE queue = ?1 AND disabled = 1)
), cand AS (
  SELECT m.seq, m.available_at FROM live, levee_queue_messages m WHERE m.seq IN (
    SELECT x.seq FROM levee_queue_messages x WHERE x.queue = ?1 AND x.target = live.t AND x.available_at <= ?2
    ORDER BY x.available_at, x.seq LIMIT ?7 + 0)
)
UPDATE levee_queue_messages SET available_at = ?5, attempts = attempts + 1, token = ?6
WHERE seq IN (SELECT seq FROM cand ORDER BY available_at, seq LIMIT ?8 + 0)
RETURNING id, target, payload, headers, dedupe_id, enqueued_at, attempts, history`
)

// HonorsDedupeUntil implements queue.DedupeUntil: a dedupe entry lives
// until its enqueue's DedupeUntil.
func (b *Backend) HonorsDedupeUntil() bool { return true }

// Claim implements queue.Backend.
func (b *Backend) Claim(ctx context.Context, req queue.ClaimRequest) ([]queue.Claimed, error) {
	if req.Limit <= 0 {
		return nil, nil
	}
	exclude, err := json.Marshal(append([]string{}, req.Exclude...))
	if err != nil {
		return nil, fmt.Errorf("sqlitequeue: claim: %w", err)
	}
	perTarget := req.PerTarget
	if perTarget <= 0 {
		perTarget = req.Limit
	}
	token := rand.Int64() | 1 // never 0, the token of a released message
	window := claimWindow(req.Limit)
	var out []queue.Claimed
	if len(req.Exclude) == 0 && perTarget >= req.Limit {
		// The gateway's usual claim: one statement that writes, no
		// savepoint, unless a target of the queue is disabled.
		simple := false
		err := b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
			out, simple = out[:0], false
			var disabled bool
			if err := b.txQueryRow(wctx, tx, claimAnyDisabled, req.Queue).Scan(&disabled); err != nil || disabled {
				return err
			}
			simple = true
			return b.claimRows(wctx, tx, &out, token, claimSimple,
				req.Queue, us(req.Now), nil, nil, us(req.LeaseUntil), token, nil, req.Limit)
		})
		if err != nil {
			return nil, err
		}
		if simple {
			return out, nil
		}
	}
	err = b.write(ctx, modeSavepoint, func(wctx context.Context, tx *sql.Tx) error {
		out = out[:0]
		if err := b.claimRows(wctx, tx, &out, token, claimOldest,
			req.Queue, us(req.Now), string(exclude), window, us(req.LeaseUntil), token, perTarget, req.Limit); err != nil {
			return err
		}
		if len(out) >= req.Limit {
			return nil
		}
		var n int
		if err := b.txQueryRow(wctx, tx, claimWindowFull, req.Queue, us(req.Now), window).Scan(&n); err != nil {
			return err
		}
		if n < window {
			return nil // the window held every available message
		}
		// Targets served by the first statement had their turn.
		more := append([]string{}, req.Exclude...)
		for _, c := range out {
			more = append(more, c.Target)
		}
		ex, err := json.Marshal(more)
		if err != nil {
			return err
		}
		return b.claimRows(wctx, tx, &out, token, claimPerTarget,
			req.Queue, us(req.Now), string(ex), nil, us(req.LeaseUntil), token, perTarget, req.Limit-len(out))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// claimRows runs one claim statement and appends what it claimed.
func (b *Backend) claimRows(ctx context.Context, tx *sql.Tx, out *[]queue.Claimed, token int64, query string, args ...any) error {
	rows, err := b.txQuery(ctx, tx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		c := queue.Claimed{Token: token}
		c.Queue = args[0].(string)
		var hdr, hist []byte
		var enq int64
		if err := rows.Scan(&c.ID, &c.Target, &c.Payload, &hdr, &c.DedupeID, &enq, &c.Attempt, &hist); err != nil {
			return err
		}
		c.EnqueuedAt = fromUS(enq)
		if c.Headers, err = decodeHeaders(hdr); err != nil {
			return fmt.Errorf("message %q: headers: %w", c.ID, err)
		}
		if c.History, err = decodeHistory(hist); err != nil {
			return fmt.Errorf("message %q: history: %w", c.ID, err)
		}
		*out = append(*out, c)
	}
	return rows.Err()
}

// settled turns "no row matched the token" into queue.ErrLeaseLost.
func settled(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return queue.ErrLeaseLost
	}
	return nil
}

// Ack implements queue.Backend.
func (b *Backend) Ack(ctx context.Context, q, id string, token int64) error {
	err := b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
		return settled(b.txExec(wctx, tx, `DELETE FROM levee_queue_messages WHERE queue = ?1 AND id = ?2 AND token = ?3`, q, id, token))
	})
	return err
}

// Nack implements queue.Backend.
func (b *Backend) Nack(ctx context.Context, n queue.Nack) error {
	hist, err := encodeHistory(n.History)
	if err != nil {
		return fmt.Errorf("sqlitequeue: nack: %w", err)
	}
	return b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
		return settled(b.txExec(wctx, tx, `UPDATE levee_queue_messages SET available_at = ?4, attempts = ?5, history = ?6, token = 0
WHERE queue = ?1 AND id = ?2 AND token = ?3`, n.Queue, n.ID, n.Token, us(n.AvailableAt), n.Attempts, hist))
	})
}

// Bury implements queue.Backend.
func (b *Backend) Bury(ctx context.Context, d queue.Burial) error {
	hist, err := encodeHistory(d.History)
	if err != nil {
		return fmt.Errorf("sqlitequeue: bury: %w", err)
	}
	first, last := d.At, d.At
	if len(d.History) > 0 {
		first, last = d.History[0].FailedAt, d.History[len(d.History)-1].FailedAt
	}
	return b.write(ctx, modeSavepoint, func(wctx context.Context, tx *sql.Tx) error {
		if err := settled(b.txExec(wctx, tx, `INSERT INTO levee_queue_dead (queue, id, target, payload, headers, dedupe_id, enqueued_at, attempts, history, reason, first_failure, last_failure, dead_at)
SELECT queue, id, target, payload, headers, dedupe_id, enqueued_at, ?4, ?5, ?6, ?7, ?8, ?9 FROM levee_queue_messages
WHERE queue = ?1 AND id = ?2 AND token = ?3
ON CONFLICT (queue, id) DO UPDATE SET target = excluded.target, payload = excluded.payload, headers = excluded.headers,
  dedupe_id = excluded.dedupe_id, enqueued_at = excluded.enqueued_at, attempts = excluded.attempts, history = excluded.history,
  reason = excluded.reason, first_failure = excluded.first_failure, last_failure = excluded.last_failure, dead_at = excluded.dead_at`,
			d.Queue, d.ID, d.Token, d.Attempts, hist, string(d.Reason), us(first), us(last), us(d.At))); err != nil {
			return err
		}
		_, err := b.txExec(wctx, tx, `DELETE FROM levee_queue_messages WHERE queue = ?1 AND id = ?2 AND token = ?3`, d.Queue, d.ID, d.Token)
		return err
	})
}

// where builds the WHERE clause of a dead-message filter.
func where(f queue.DeadFilter) (string, []any) {
	conds := []string{"queue = ?"}
	args := []any{f.Queue}
	if len(f.IDs) > 0 {
		conds = append(conds, "id IN ("+strings.TrimSuffix(strings.Repeat("?,", len(f.IDs)), ",")+")")
		for _, id := range f.IDs {
			args = append(args, id)
		}
	}
	if f.Target != "" {
		conds, args = append(conds, "target = ?"), append(args, f.Target)
	}
	if f.Reason != "" {
		conds, args = append(conds, "reason = ?"), append(args, string(f.Reason))
	}
	if !f.DeadBefore.IsZero() {
		conds, args = append(conds, "dead_at < ?"), append(args, us(f.DeadBefore))
	}
	if !f.DeadAfter.IsZero() {
		conds, args = append(conds, "dead_at > ?"), append(args, us(f.DeadAfter))
	}
	if f.AfterSeq > 0 {
		conds, args = append(conds, "seq > ?"), append(args, f.AfterSeq)
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

const deadCols = `seq, id, target, payload, headers, dedupe_id, enqueued_at, attempts, history, reason, first_failure, last_failure, dead_at`

func scanDead(q string, sc interface{ Scan(...any) error }) (queue.DeadMessage, error) {
	var d queue.DeadMessage
	var hdr, hist []byte
	var enq, first, last, dead int64
	var reason string
	if err := sc.Scan(&d.Seq, &d.ID, &d.Target, &d.Payload, &hdr, &d.DedupeID, &enq, &d.Attempts, &hist, &reason, &first, &last, &dead); err != nil {
		return d, err
	}
	d.Queue, d.Reason = q, queue.Reason(reason)
	d.EnqueuedAt, d.FirstFailure, d.LastFailure, d.DeadAt = fromUS(enq), fromUS(first), fromUS(last), fromUS(dead)
	var err error
	if d.Headers, err = decodeHeaders(hdr); err != nil {
		return d, fmt.Errorf("dead message %q: headers: %w", d.ID, err)
	}
	if d.History, err = decodeHistory(hist); err != nil {
		return d, fmt.Errorf("dead message %q: history: %w", d.ID, err)
	}
	return d, nil
}

// ListDead implements queue.Backend.
func (b *Backend) ListDead(ctx context.Context, f queue.DeadFilter) ([]queue.DeadMessage, error) {
	w, args := where(f)
	q := `SELECT ` + deadCols + ` FROM levee_queue_dead` + w + ` ORDER BY seq`
	if f.Limit > 0 {
		q += ` LIMIT ` + strconv.Itoa(f.Limit)
	}
	rows, err := b.rd.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlitequeue: list dead: %w", err)
	}
	defer rows.Close()
	var out []queue.DeadMessage
	for rows.Next() {
		d, err := scanDead(f.Queue, rows)
		if err != nil {
			return nil, fmt.Errorf("sqlitequeue: list dead: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitequeue: list dead: %w", err)
	}
	return out, nil
}

// GetDead implements queue.Backend.
func (b *Backend) GetDead(ctx context.Context, q, id string) (*queue.DeadMessage, error) {
	d, err := scanDead(q, b.rd.QueryRowContext(ctx, `SELECT `+deadCols+` FROM levee_queue_dead WHERE queue = ?1 AND id = ?2`, q, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, queue.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitequeue: get dead: %w", err)
	}
	return &d, nil
}

// Requeue implements queue.Backend.
func (b *Backend) Requeue(ctx context.Context, q string, ids []string, now time.Time) (int, error) {
	moved := 0
	err := b.write(ctx, modeSavepoint, func(wctx context.Context, tx *sql.Tx) error {
		moved = 0
		for _, id := range ids {
			res, err := b.txExec(wctx, tx, `INSERT INTO levee_queue_messages (queue, id, target, payload, headers, dedupe_id, enqueued_at, available_at)
SELECT queue, id, target, payload, headers, dedupe_id, enqueued_at, ?3 FROM levee_queue_dead WHERE queue = ?1 AND id = ?2
ON CONFLICT (queue, id) DO NOTHING`, q, id, us(now))
			if err != nil {
				return err
			}
			n, _ := res.RowsAffected()
			if _, err := b.txExec(wctx, tx, `DELETE FROM levee_queue_dead WHERE queue = ?1 AND id = ?2`, q, id); err != nil {
				return err
			}
			moved += int(n)
		}
		return nil
	})
	return moved, err
}

// DeleteDead implements queue.Backend.
func (b *Backend) DeleteDead(ctx context.Context, f queue.DeadFilter) (int, error) {
	w, args := where(f)
	q := `DELETE FROM levee_queue_dead` + w
	if f.Limit > 0 {
		q = `DELETE FROM levee_queue_dead WHERE seq IN (SELECT seq FROM levee_queue_dead` + w + ` ORDER BY seq LIMIT ` + strconv.Itoa(f.Limit) + `)`
	}
	var n int64
	err := b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
		res, err := tx.ExecContext(wctx, q, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}

// SetTarget implements queue.Backend.
func (b *Backend) SetTarget(ctx context.Context, s queue.TargetState) error {
	return b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
		_, err := b.txExec(wctx, tx, `INSERT INTO levee_queue_targets (queue, target, disabled, reason, since) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (queue, target) DO UPDATE SET disabled = excluded.disabled, reason = excluded.reason, since = excluded.since`,
			s.Queue, s.Target, s.Disabled, s.Reason, us(s.Since))
		return err
	})
}

// Targets implements queue.Backend.
func (b *Backend) Targets(ctx context.Context, q string) ([]queue.TargetState, error) {
	rows, err := b.rd.QueryContext(ctx, `SELECT target, disabled, reason, since FROM levee_queue_targets WHERE queue = ?1 ORDER BY target`, q)
	if err != nil {
		return nil, fmt.Errorf("sqlitequeue: targets: %w", err)
	}
	defer rows.Close()
	var out []queue.TargetState
	for rows.Next() {
		s := queue.TargetState{Queue: q}
		var since int64
		if err := rows.Scan(&s.Target, &s.Disabled, &s.Reason, &since); err != nil {
			return nil, fmt.Errorf("sqlitequeue: targets: %w", err)
		}
		s.Since = fromUS(since)
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitequeue: targets: %w", err)
	}
	return out, nil
}

var _ queue.Backend = (*Backend)(nil)

// DeleteExpired deletes up to limit dedupe entries whose window ended
// before now and returns how many; call it periodically to keep the file
// small (expiry itself is logical: an expired entry never blocks an
// enqueue). A driver error is returned wrapped.
func (b *Backend) DeleteExpired(ctx context.Context, now time.Time, limit int) (int, error) {
	var n int64
	err := b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
		res, err := b.txExec(wctx, tx, `DELETE FROM levee_queue_dedupe WHERE rowid IN
  (SELECT rowid FROM levee_queue_dedupe WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2 + 0)`, us(now), limit)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return int(n), err
}
