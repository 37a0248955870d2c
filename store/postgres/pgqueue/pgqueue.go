// Package pgqueue is a queue.Backend on PostgreSQL through a pgx v5 pool,
// for deployments whose replicas share one database.
//
// # Schema
//
// Four tables in Options.Schema (default "levee"): queue_messages,
// queue_dead, queue_dedupe and queue_targets. Backend.Migrate creates them;
// it is idempotent and serialized across replicas by a transaction-scoped
// advisory lock, so every replica may run it at start-up.
//
// # Guarantees
//
// Every method is one statement that writes (Claim's runs in a
// transaction that first sets two planner options for it alone), so each
// is atomic and durable once it returns (with the server's default
// synchronous_commit). Enqueue is group
// committed: concurrent calls are written by a few flusher goroutines as
// one pipelined batch, which PostgreSQL runs as one implicit transaction
// (one commit for all of them).
// Claim locks its candidates FOR UPDATE SKIP LOCKED, so concurrent claims
// by any number of workers never take the same message, and none waits for
// another. Times are the ones passed in, never the database clock.
//
// # Failures
//
// An error from the pool or the server is returned wrapped, prefixed
// "pgqueue:"; a failed statement changed nothing. If the connection breaks
// after the server committed, the caller cannot know; the queue's design
// makes every such case safe (a lost Ack redelivers, a lost Enqueue may be
// sent again with the same DedupeID).
package pgqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/queue"
)

// Options configure a Backend. The zero value selects the defaults.
type Options struct {
	// Schema holds the tables. Default "levee". It is quoted, so any name
	// of at most 63 bytes is valid.
	Schema string
	// Flushers is how many enqueue batches may be in flight at once.
	// Default 4.
	Flushers int
	// MaxBatch caps the messages of one enqueue batch. Default 512.
	MaxBatch int
}

// Backend is a queue.Backend on PostgreSQL. It is safe for concurrent use;
// it does not own the pool.
type Backend struct {
	pool     *pgxpool.Pool
	schema   string
	t        tables
	maxBatch int

	enq       chan *enqueueOp
	life      context.Context // canceled by Close: the flushers and an index build end
	stop      context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	// builds are the background index builds Migrate started (see
	// buildIndexes); buildMu also orders startBuild against Close.
	buildMu sync.Mutex
	builds  []*indexBuild
}

// indexBuild is one background build of the indexes an existing table
// lacked; done closes when it ended, with err its outcome.
type indexBuild struct {
	done chan struct{}
	err  error
}

type tables struct{ messages, dead, dedupe, targets string }

// New returns a Backend over pool and starts its enqueue flushers (Close
// stops them). It does not touch the database; call Migrate before first
// use.
func New(pool *pgxpool.Pool, opts Options) (*Backend, error) {
	if pool == nil {
		return nil, errors.New("pgqueue: nil pool")
	}
	if opts.Schema == "" {
		opts.Schema = "levee"
	}
	if len(opts.Schema) > 63 {
		return nil, fmt.Errorf("pgqueue: Options.Schema %q is longer than 63 bytes", opts.Schema)
	}
	if opts.Flushers < 0 || opts.MaxBatch < 0 {
		return nil, errors.New("pgqueue: Options.Flushers and MaxBatch must not be negative")
	}
	if opts.Flushers == 0 {
		opts.Flushers = 4
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = 512
	}
	id := func(n string) string { return pgx.Identifier{opts.Schema, n}.Sanitize() }
	b := &Backend{pool: pool, schema: opts.Schema, maxBatch: opts.MaxBatch, t: tables{
		messages: id("queue_messages"), dead: id("queue_dead"), dedupe: id("queue_dedupe"), targets: id("queue_targets"),
	}, enq: make(chan *enqueueOp)}
	b.life, b.stop = context.WithCancel(context.Background())
	b.wg.Add(opts.Flushers)
	for range opts.Flushers {
		go b.flusher()
	}
	return b, nil
}

// Migrate creates the schema and the tables if missing, with their
// indexes, in one transaction holding an advisory lock for the schema. It
// is idempotent; on error nothing is applied. An index an existing table
// lacks (an upgrade), or one an interrupted build left invalid, is built
// after the transaction, in the background and concurrently, so that the
// table's writes go on (see buildIndexes; WaitIndexes waits for it).
func (b *Backend) Migrate(ctx context.Context) error {
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgqueue: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	h := fnv.New64a()
	h.Write([]byte("levee/pgqueue/migrate\x00" + b.schema))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(h.Sum64())); err != nil {
		return fmt.Errorf("pgqueue: migrate: advisory lock: %w", err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, b.schema).Scan(&exists); err != nil {
		return fmt.Errorf("pgqueue: migrate: %w", err)
	}
	stmts := []string{`CREATE TABLE IF NOT EXISTS ` + b.t.messages + ` (
  seq          bigserial PRIMARY KEY,
  queue        text NOT NULL,
  id           text NOT NULL,
  target       text NOT NULL,
  payload      bytea,
  headers      jsonb,
  dedupe_id    text NOT NULL,
  enqueued_at  timestamptz NOT NULL,
  available_at timestamptz NOT NULL,
  attempts     integer NOT NULL DEFAULT 0,
  token        bigint NOT NULL DEFAULT 0,
  history      jsonb
)`,
		`CREATE INDEX IF NOT EXISTS queue_messages_ready ON ` + b.t.messages + ` (queue, available_at, seq)`,
		// The (queue, id) index is created after the other index that
		// leads with queue, on purpose. On a table not analyzed yet (a new
		// deployment, or autovacuum behind a burst), PostgreSQL costs a
		// lookup by queue and id the same through either index and takes
		// the newer one: through the ready index that is a walk over every
		// message of the queue (an Ack cost 384 µs and 160 buffer reads at
		// a 5,000-message backlog). Schemas of earlier versions had the
		// unique constraint created first: it is replaced below.
		`CREATE UNIQUE INDEX IF NOT EXISTS queue_messages_id ON ` + b.t.messages + ` (queue, id)`,
		`ALTER TABLE ` + b.t.messages + ` DROP CONSTRAINT IF EXISTS queue_messages_queue_id_key`,
		`CREATE TABLE IF NOT EXISTS ` + b.t.dead + ` (
  seq           bigserial PRIMARY KEY,
  queue         text NOT NULL,
  id            text NOT NULL,
  target        text NOT NULL,
  payload       bytea,
  headers       jsonb,
  dedupe_id     text NOT NULL,
  enqueued_at   timestamptz NOT NULL,
  attempts      integer NOT NULL,
  history       jsonb,
  reason        text NOT NULL,
  first_failure timestamptz NOT NULL,
  last_failure  timestamptz NOT NULL,
  dead_at       timestamptz NOT NULL
)`,
		`CREATE INDEX IF NOT EXISTS queue_dead_at ON ` + b.t.dead + ` (queue, dead_at)`,
		// After queue_dead_at, for the reason given for queue_messages_id.
		`CREATE UNIQUE INDEX IF NOT EXISTS queue_dead_id ON ` + b.t.dead + ` (queue, id)`,
		`ALTER TABLE ` + b.t.dead + ` DROP CONSTRAINT IF EXISTS queue_dead_queue_id_key`,
		`CREATE TABLE IF NOT EXISTS ` + b.t.dedupe + ` (
  queue      text NOT NULL,
  dedupe_id  text NOT NULL,
  message_id text NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (queue, dedupe_id)
)`,
		// DeleteExpired's walk, oldest first (expiry times only grow, so
		// each insert appends to the index's right edge).
		`CREATE INDEX IF NOT EXISTS queue_dedupe_expires ON ` + b.t.dedupe + ` (expires_at)`,
		`CREATE TABLE IF NOT EXISTS ` + b.t.targets + ` (
  queue    text NOT NULL,
  target   text NOT NULL,
  disabled boolean NOT NULL,
  reason   text NOT NULL,
  since    timestamptz NOT NULL,
  PRIMARY KEY (queue, target)
)`}
	if !exists {
		stmts = append([]string{`CREATE SCHEMA IF NOT EXISTS ` + pgx.Identifier{b.schema}.Sanitize()}, stmts...)
	}
	// An index that exists is not created again, nor a constraint that is
	// gone dropped again: both statements take their table's lock before
	// they look (DROP CONSTRAINT an ACCESS EXCLUSIVE one, which would stall
	// every claim and ack of the fleet at each replica's start). An index
	// an existing table lacks (an upgrade) is built after the transaction,
	// concurrently (see buildIndexes); so is one left invalid by a build
	// that did not finish.
	present, invalid := map[string]bool{}, map[string]bool{}
	for _, q := range []struct {
		sql string
		to  map[string]bool
	}{
		{`SELECT relname FROM pg_catalog.pg_class WHERE relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)`, present},
		{`SELECT conname FROM pg_catalog.pg_constraint WHERE connamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)`, present},
		{`SELECT c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1) AND NOT i.indisvalid`, invalid},
	} {
		rows, err := tx.Query(ctx, q.sql, b.schema)
		if err != nil {
			return fmt.Errorf("pgqueue: migrate: %w", err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("pgqueue: migrate: %w", err)
		}
		for _, n := range names {
			q.to[n] = true
		}
	}
	var later []laterIndex // for buildIndexes, in order
	for _, s := range stmts {
		if m := createIndexName.FindStringSubmatch(s); m != nil {
			name := m[1]
			constraint := replaces[name]
			if !present[constraint] {
				constraint = ""
			}
			if present[name] && !invalid[name] {
				if constraint != "" {
					later = append(later, laterIndex{name: name, constraint: constraint})
				}
				continue
			}
			if present[indexTable[name]] {
				// An existing table: built without blocking its writes.
				later = append(later, laterIndex{name: name, constraint: constraint,
					create: strings.Replace(s, " INDEX IF NOT EXISTS ", " INDEX CONCURRENTLY IF NOT EXISTS ", 1)})
				continue
			}
		}
		if dropConstraintName.MatchString(s) {
			continue // a constraint exists only on an existing table: dropped by buildIndexes
		}
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("pgqueue: migrate: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgqueue: migrate: commit: %w", err)
	}
	if len(later) > 0 {
		b.startBuild(later)
	}
	return nil
}

// indexTable is the table of each index Migrate creates.
var indexTable = map[string]string{
	"queue_messages_ready": "queue_messages", "queue_messages_id": "queue_messages",
	"queue_dead_at": "queue_dead", "queue_dead_id": "queue_dead", "queue_dedupe_expires": "queue_dedupe",
}

// replaces names the unique constraint of earlier versions that an index
// replaces (dropped once the index is valid).
var replaces = map[string]string{
	"queue_messages_id": "queue_messages_queue_id_key", "queue_dead_id": "queue_dead_queue_id_key",
}

// laterIndex is one step of a background build: create the index (if
// create is set and the index is missing or invalid), then drop the
// constraint it replaces (if set and the index is valid).
type laterIndex struct {
	name, create, constraint string
}

// startBuild runs steps in the background (buildIndexes), unless Close ran.
func (b *Backend) startBuild(steps []laterIndex) {
	bd := &indexBuild{done: make(chan struct{})}
	b.buildMu.Lock() // against Close: no wg.Add once Close waits
	defer b.buildMu.Unlock()
	if b.life.Err() != nil {
		close(bd.done) // closed: nothing to build, nothing to report
	} else {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer close(bd.done)
			bd.err = b.buildIndexes(b.life, steps)
		}()
	}
	b.builds = slices.DeleteFunc(b.builds, func(d *indexBuild) bool {
		select {
		case <-d.done:
			return true // ended: WaitIndexes waits on the builds still running and this one
		default:
			return false
		}
	})
	b.builds = append(b.builds, bd)
}

// buildIndexes builds, concurrently (CREATE INDEX CONCURRENTLY: the
// table's writes go on meanwhile), the indexes Migrate found missing or
// invalid on existing tables, then drops the constraints they replace. One
// process of a fleet builds at a time, under a session advisory lock; the
// others poll for it (see the loop). Under the lock each step looks at the
// catalog again (another process may have built or dropped meanwhile): an
// invalid index is dropped and built again (a build that a stop or a crash
// interrupted), a valid one is kept; a constraint is dropped only once its
// replacement is valid, with a 2 s lock_timeout (its ACCESS EXCLUSIVE lock
// queues every claim and ack of the table behind it while it waits). A
// failed step stops the later steps of its table only; the next Migrate
// tries again what failed. Until the indexes exist, what they serve works
// without them: the dedupe clean-up reads the table, lookups by id use the
// old constraint.
func (b *Backend) buildIndexes(ctx context.Context, steps []laterIndex) (err error) {
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pgqueue: index build: %w", err)
	}
	defer func() {
		if err != nil {
			// The session may be mid-cancel: end it, and its lock, before
			// the build reports (a next build must find the lock free).
			pc := conn.Conn().PgConn()
			_ = pc.Close(context.Background())
			<-pc.CleanupDone()
		}
		conn.Release()
	}()
	h := fnv.New64a()
	h.Write([]byte("levee/pgqueue/index-build\x00" + b.schema))
	key := int64(h.Sum64())
	// Waits while another process builds (then finds its work done), by
	// polling: a session blocked in pg_advisory_lock holds a snapshot, and
	// the other process's CREATE INDEX CONCURRENTLY waits for every older
	// snapshot to end: a deadlock.
	for {
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
			return fmt.Errorf("pgqueue: index build: advisory lock: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgqueue: index build: waiting for another process's build: %w", ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	defer func() {
		if _, uerr := conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, key); uerr != nil && err == nil {
			err = fmt.Errorf("pgqueue: index build: advisory unlock: %w", uerr) // the deferred close ends the session
		}
	}()
	var errs []error
	failed := map[string]bool{} // tables with a failed step: their later steps wait for the next Migrate
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			// Interrupted (Close): the next Migrate does the rest.
			return fmt.Errorf("pgqueue: index build: %w", err)
		}
		table := indexTable[st.name]
		if failed[table] {
			continue // keeps the indexes of a table in their order (the id index after the ready one)
		}
		if err := b.buildStep(ctx, conn, st); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("pgqueue: index build: %w", ctx.Err())
			}
			failed[table] = true
			errs = append(errs, fmt.Errorf("pgqueue: index build: %s: %w", st.name, err))
		}
	}
	return errors.Join(errs...)
}

// lockPoll is how often a build tries again for the build lock.
const lockPoll = 200 * time.Millisecond

// buildStep runs one step of buildIndexes on conn.
func (b *Backend) buildStep(ctx context.Context, conn *pgxpool.Conn, st laterIndex) error {
	exists, valid, err := b.indexState(ctx, conn, st.name)
	if err != nil {
		return err
	}
	if st.create != "" && !valid {
		if exists {
			if _, err := conn.Exec(ctx, `DROP INDEX CONCURRENTLY IF EXISTS `+pgx.Identifier{b.schema, st.name}.Sanitize()); err != nil {
				return err
			}
		}
		if _, err := conn.Exec(ctx, st.create); err != nil {
			return err
		}
		if _, valid, err = b.indexState(ctx, conn, st.name); err != nil {
			return err
		}
	}
	if st.constraint == "" || !valid {
		return nil
	}
	// DROP CONSTRAINT IF EXISTS takes its lock before it looks: look first.
	var present bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = $2
AND connamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1))`, b.schema, st.constraint).Scan(&present); err != nil || !present {
		return err
	}
	if _, err := conn.Exec(ctx, `SET lock_timeout = '2s'`); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, `ALTER TABLE `+pgx.Identifier{b.schema, indexTable[st.name]}.Sanitize()+` DROP CONSTRAINT IF EXISTS `+pgx.Identifier{st.constraint}.Sanitize())
	if _, rerr := conn.Exec(context.Background(), `RESET lock_timeout`); rerr != nil && err == nil {
		err = rerr // the deferred close keeps the setting off the pool
	}
	return err
}

// indexState reports whether index name exists in the schema, and whether
// it is valid (an interrupted concurrent build leaves it invalid).
func (b *Backend) indexState(ctx context.Context, conn *pgxpool.Conn, name string) (exists, valid bool, err error) {
	err = conn.QueryRow(ctx, `SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $2 AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)`, b.schema, name).Scan(&valid)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, nil
	}
	return err == nil, valid, err
}

// WaitIndexes waits for the background index builds Migrate started (an
// upgrade of existing tables, see buildIndexes) and returns their errors:
// the last Migrate's build and any earlier one still running (an earlier
// build that ended is forgotten by the next Migrate); nil at once when
// there was none. The gateway logs its outcome; tests wait with it.
func (b *Backend) WaitIndexes(ctx context.Context) error {
	b.buildMu.Lock()
	bds := slices.Clone(b.builds)
	b.buildMu.Unlock()
	var errs []error
	for _, bd := range bds {
		select {
		case <-bd.done:
			errs = append(errs, bd.err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// The names Migrate looks up before it creates an index or drops a
// constraint.
var (
	createIndexName    = regexp.MustCompile(`^CREATE (?:UNIQUE )?INDEX IF NOT EXISTS (\w+) ON `)
	dropConstraintName = regexp.MustCompile(`DROP CONSTRAINT IF EXISTS (\w+)$`)
)

func jsonOrNil(v any, empty bool) ([]byte, error) {
	if empty {
		return nil, nil
	}
	return json.Marshal(v)
}

// enqueueOp is one Enqueue call waiting for a flusher.
type enqueueOp struct {
	req queue.EnqueueRequest
	// canceled is the caller's ctx.Err: an op whose caller gave up before
	// a flusher took it is not written.
	canceled func() error
	res      []queue.EnqueueResult
	err      error
	done     chan struct{}
}

// flusher writes the waiting Enqueue calls, as many as are waiting (up to
// Options.MaxBatch messages), in one pipelined batch: one implicit
// transaction, one commit (group commit).
func (b *Backend) flusher() {
	defer b.wg.Done()
	ctx := context.Background()
	for {
		var ops []*enqueueOp
		select {
		case <-b.life.Done():
			return
		case o := <-b.enq:
			ops = append(ops, o)
		}
		n := len(ops[0].req.Messages)
	drain:
		for n < b.maxBatch {
			select {
			case o := <-b.enq:
				ops = append(ops, o)
				n += len(o.req.Messages)
			default:
				break drain
			}
		}
		live := ops[:0:0]
		for _, o := range ops {
			if o.err = o.canceled(); o.err != nil {
				close(o.done)
				continue
			}
			live = append(live, o)
		}
		if len(live) > 0 {
			b.flush(ctx, live)
		}
	}
}

func (b *Backend) flush(ctx context.Context, ops []*enqueueOp) {
	var all []*queue.Message
	var reqs []queue.EnqueueRequest
	for _, o := range ops {
		for range o.req.Messages {
			reqs = append(reqs, o.req)
		}
		all = append(all, o.req.Messages...)
	}
	res, err := b.enqueue(ctx, all, reqs)
	for _, o := range ops {
		if err != nil {
			o.err = err
		} else {
			o.res, res = res[:len(o.req.Messages):len(o.req.Messages)], res[len(o.req.Messages):]
		}
		close(o.done)
	}
}

// Enqueue implements queue.Backend. Concurrent calls share a transaction
// (group commit); a call returns after the commit that holds its messages.
// A call whose ctx ends while it waits returns ctx's error; if a flusher
// had already taken it, its messages may be stored.
func (b *Backend) Enqueue(ctx context.Context, req queue.EnqueueRequest) ([]queue.EnqueueResult, error) {
	if len(req.Messages) == 0 {
		return nil, nil
	}
	o := &enqueueOp{req: req, canceled: ctx.Err, done: make(chan struct{})}
	select {
	case b.enq <- o:
	case <-b.life.Done():
		return nil, errClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-o.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if o.err != nil {
		return nil, fmt.Errorf("pgqueue: enqueue: %w", o.err)
	}
	return o.res, nil
}

var errClosed = errors.New("pgqueue: backend closed")

// Close stops the enqueue flushers (waiting for the batches they are
// writing). It does not close the pool. It is safe to call more than once.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.buildMu.Lock()
		b.stop()
		b.buildMu.Unlock()
		b.wg.Wait()
	})
	return nil
}

// enqueue writes msgs in one batch; reqs[i] is the request msgs[i] came in.
func (b *Backend) enqueue(ctx context.Context, msgs []*queue.Message, reqs []queue.EnqueueRequest) ([]queue.EnqueueResult, error) {
	// One statement per message: the dedupe entry, then the message when
	// the entry is new (or absent). The outer SELECT sees the dedupe row as
	// it was before the statement, so it names the first message of a
	// duplicate.
	q := `WITH d AS (
  INSERT INTO ` + b.t.dedupe + ` (queue, dedupe_id, message_id, expires_at)
  SELECT $1, $6, $2, $8 WHERE $6 <> ''
  ON CONFLICT (queue, dedupe_id) DO UPDATE SET message_id = EXCLUDED.message_id, expires_at = EXCLUDED.expires_at
    WHERE ` + b.t.dedupe + `.expires_at <= $9
  RETURNING message_id
), ins AS (
  INSERT INTO ` + b.t.messages + ` (queue, id, target, payload, headers, dedupe_id, enqueued_at, available_at)
  SELECT $1, $2, $3, $4, $5, $6, $7, $7 WHERE $6 = '' OR EXISTS (SELECT 1 FROM d)
  ON CONFLICT (queue, id) DO NOTHING
  RETURNING id
)
SELECT (SELECT id FROM ins), (SELECT message_id FROM ` + b.t.dedupe + ` WHERE queue = $1 AND dedupe_id = $6 AND $6 <> '')`
	// Messages without a DedupeID go first, all in one multi-row INSERT.
	var plain []int
	var qs, ids, targets, dedupes []string
	var payloads, headers [][]byte
	var enqAt []time.Time
	batch := &pgx.Batch{}
	for i, m := range msgs {
		h, err := jsonOrNil(m.Headers, len(m.Headers) == 0)
		if err != nil {
			return nil, fmt.Errorf("headers: %w", err)
		}
		if m.DedupeID == "" {
			plain = append(plain, i)
			qs, ids, targets, dedupes = append(qs, m.Queue), append(ids, m.ID), append(targets, m.Target), append(dedupes, "")
			payloads, headers, enqAt = append(payloads, m.Payload), append(headers, h), append(enqAt, m.EnqueuedAt)
			continue
		}
		batch.Queue(q, m.Queue, m.ID, m.Target, m.Payload, h, m.DedupeID, m.EnqueuedAt, reqs[i].DedupeUntil, reqs[i].Now)
	}
	if len(plain) > 0 {
		var b0 pgx.Batch
		b0.Queue(`INSERT INTO `+b.t.messages+` (queue, id, target, payload, headers, dedupe_id, enqueued_at, available_at)
SELECT q, id, t, p, h::jsonb, d, e, e FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::timestamptz[]) AS u(q, id, t, p, h, d, e)
ON CONFLICT (queue, id) DO NOTHING
RETURNING queue, id`, qs, ids, targets, payloads, textOrNil(headers), dedupes, enqAt)
		b0.QueuedQueries = append(b0.QueuedQueries, batch.QueuedQueries...)
		batch = &b0
	}
	res := make([]queue.EnqueueResult, len(msgs))
	var raced []int
	err := func() error {
		br := b.pool.SendBatch(ctx, batch)
		defer br.Close()
		if len(plain) > 0 {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			stored := map[[2]string]bool{}
			for rows.Next() {
				var k [2]string
				if err := rows.Scan(&k[0], &k[1]); err != nil {
					rows.Close()
					return err
				}
				stored[k] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			for _, i := range plain {
				m := msgs[i]
				k := [2]string{m.Queue, m.ID}
				res[i] = queue.EnqueueResult{ID: m.ID, Duplicate: !stored[k]}
				delete(stored, k) // a second copy in the same call is a duplicate
			}
		}
		for i, m := range msgs {
			if m.DedupeID == "" {
				continue
			}
			var stored, first *string
			if err := br.QueryRow().Scan(&stored, &first); err != nil {
				return err
			}
			switch {
			case stored != nil:
				res[i] = queue.EnqueueResult{ID: *stored}
			case first != nil:
				res[i] = queue.EnqueueResult{ID: *first, Duplicate: true}
			default:
				raced = append(raced, i) // a concurrent enqueue committed the entry after our snapshot
			}
		}
		return br.Close()
	}()
	if err != nil {
		return nil, err
	}
	for _, i := range raced {
		m := msgs[i]
		var first string
		if err := b.pool.QueryRow(ctx, `SELECT message_id FROM `+b.t.dedupe+` WHERE queue = $1 AND dedupe_id = $2`, m.Queue, m.DedupeID).Scan(&first); err != nil {
			return nil, fmt.Errorf("dedupe entry: %w", err)
		}
		res[i] = queue.EnqueueResult{ID: first, Duplicate: true}
	}
	return res, nil
}

// textOrNil turns JSON documents into text array elements (NULL for none).
func textOrNil(bs [][]byte) []*string {
	out := make([]*string, len(bs))
	for i, b := range bs {
		if b != nil {
			s := string(b)
			out[i] = &s
		}
	}
	return out
}

// HonorsDedupeUntil implements queue.DedupeUntil: a dedupe entry lives
// until its enqueue's DedupeUntil.
func (b *Backend) HonorsDedupeUntil() bool { return true }

// claimPreamble opens the claim's transaction and leaves the ordered
// index walk as its only plan (see Claim).
var claimPreamble = []string{`BEGIN`, `SET LOCAL enable_bitmapscan = off`, `SET LOCAL enable_seqscan = off`}

// Claim implements queue.Backend.
func (b *Backend) Claim(ctx context.Context, req queue.ClaimRequest) ([]queue.Claimed, error) {
	if req.Limit <= 0 {
		return nil, nil
	}
	_, out, err := b.claim(ctx, nil, req)
	return out, err
}

// AckAndClaim implements queue.AckClaimer: the acknowledgements' DELETEs
// (Ack's statement, each) run first in the claim's transaction, in its one
// round trip and commit. A Worker so saves a commit per delivered message.
func (b *Backend) AckAndClaim(ctx context.Context, acks []queue.AckRef, req queue.ClaimRequest) ([]error, []queue.Claimed, error) {
	if req.Limit <= 0 && len(acks) == 0 {
		return nil, nil, nil
	}
	return b.claim(ctx, acks, req)
}

// ackSQL is Ack's statement.
func (b *Backend) ackSQL() string {
	return `DELETE FROM ` + b.t.messages + ` WHERE queue = $1 AND id = $2 AND token = $3`
}

// claim runs acks, then the claim of req (none when req.Limit <= 0), in
// one transaction sent as one round trip.
func (b *Backend) claim(ctx context.Context, acks []queue.AckRef, req queue.ClaimRequest) ([]error, []queue.Claimed, error) {
	perTarget := req.PerTarget
	if perTarget <= 0 {
		perTarget = req.Limit
	}
	token := rand.Int64() | 1 // never 0, the token of a released message
	exclude := append([]string{}, req.Exclude...)
	// The candidates must come from an ordered walk of the ready index
	// that stops after the claim's rows (or window): a backlog grows far
	// faster than statistics follow (autovacuum analyzes a minute later at
	// best), and a plan made while the table was small bitmap-scans and
	// sorts every available message on each claim (5,342 rows and 4-6 ms a
	// claim in a 5,000-event webhook burst). The claim runs in a
	// transaction of its own that turns the bitmap and sequential scans off
	// for it alone, all in one round trip.
	batch := &pgx.Batch{}
	for _, s := range claimPreamble {
		batch.Queue(s)
	}
	for _, a := range acks {
		batch.Queue(b.ackSQL(), a.Queue, a.ID, a.Token)
	}
	switch {
	case req.Limit <= 0:
	case len(exclude) == 0 && perTarget >= req.Limit:
		// Nothing to rank (the gateway's queues claim this way): lock
		// exactly the messages taken, not a window of candidates (each
		// row lock is a tuple write).
		batch.Queue(`UPDATE `+b.t.messages+` SET available_at = $4, attempts = attempts + 1, token = $5
WHERE seq IN (
  SELECT seq FROM `+b.t.messages+`
  WHERE queue = $1 AND available_at <= $2
    AND target NOT IN (SELECT target FROM `+b.t.targets+` WHERE queue = $1 AND disabled)
  ORDER BY available_at, seq LIMIT $3
  FOR UPDATE SKIP LOCKED)
RETURNING id, target, payload, headers, dedupe_id, enqueued_at, attempts, history`,
			req.Queue, req.Now, req.Limit, req.LeaseUntil, token)
	default:
		batch.Queue(`WITH cand AS (
  SELECT seq, target, available_at FROM `+b.t.messages+`
  WHERE queue = $1 AND available_at <= $2 AND NOT (target = ANY($3))
    AND target NOT IN (SELECT target FROM `+b.t.targets+` WHERE queue = $1 AND disabled)
  ORDER BY available_at, seq LIMIT $4
  FOR UPDATE SKIP LOCKED
), ranked AS (
  SELECT seq, available_at, row_number() OVER (PARTITION BY target ORDER BY available_at, seq) AS rn FROM cand
), pick AS (
  SELECT seq FROM ranked WHERE rn <= $7 ORDER BY rn, available_at, seq LIMIT $8
)
UPDATE `+b.t.messages+` m SET available_at = $5, attempts = m.attempts + 1, token = $6
FROM pick WHERE m.seq = pick.seq
RETURNING m.id, m.target, m.payload, m.headers, m.dedupe_id, m.enqueued_at, m.attempts, m.history`,
			req.Queue, req.Now, exclude, req.Limit*4+64, req.LeaseUntil, token, perTarget, req.Limit)
	}
	batch.Queue(`COMMIT`)
	br := b.pool.SendBatch(ctx, batch)
	defer func() { _ = br.Close() }()
	for range claimPreamble {
		if _, err := br.Exec(); err != nil {
			return nil, nil, fmt.Errorf("pgqueue: claim: %w", err)
		}
	}
	var ackErrs []error
	for range acks {
		tag, err := br.Exec()
		if err != nil {
			return nil, nil, fmt.Errorf("pgqueue: ack: %w", err)
		}
		ackErrs = append(ackErrs, settled("ack", tag.RowsAffected(), nil))
	}
	var out []queue.Claimed
	if req.Limit > 0 {
		var err error
		if out, err = claimed(br, req.Queue, token); err != nil {
			return nil, nil, err
		}
	}
	if _, err := br.Exec(); err != nil {
		return nil, nil, fmt.Errorf("pgqueue: claim: commit: %w", err)
	}
	if err := br.Close(); err != nil {
		return nil, nil, fmt.Errorf("pgqueue: claim: %w", err)
	}
	return ackErrs, out, nil
}

// claimed reads the claim statement's rows from br.
func claimed(br pgx.BatchResults, q string, token int64) ([]queue.Claimed, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("pgqueue: claim: %w", err)
	}
	defer rows.Close()
	var out []queue.Claimed
	for rows.Next() {
		c := queue.Claimed{Token: token}
		c.Queue = q
		var hdr, hist []byte
		if err := rows.Scan(&c.ID, &c.Target, &c.Payload, &hdr, &c.DedupeID, &c.EnqueuedAt, &c.Attempt, &hist); err != nil {
			return nil, fmt.Errorf("pgqueue: claim: %w", err)
		}
		if err := decode(hdr, hist, &c.Headers, &c.History); err != nil {
			return nil, fmt.Errorf("pgqueue: claim: message %q: %w", c.ID, err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgqueue: claim: %w", err)
	}
	return out, nil
}

func decode(hdr, hist []byte, h *http.Header, a *[]queue.Attempt) error {
	if len(hdr) > 0 {
		if err := json.Unmarshal(hdr, h); err != nil {
			return fmt.Errorf("headers: %w", err)
		}
	}
	if len(hist) > 0 {
		if err := json.Unmarshal(hist, a); err != nil {
			return fmt.Errorf("history: %w", err)
		}
	}
	return nil
}

// settled turns "no row matched the token" into queue.ErrLeaseLost.
func settled(op string, n int64, err error) error {
	if err != nil {
		return fmt.Errorf("pgqueue: %s: %w", op, err)
	}
	if n == 0 {
		return fmt.Errorf("pgqueue: %s: %w", op, queue.ErrLeaseLost)
	}
	return nil
}

// Ack implements queue.Backend.
func (b *Backend) Ack(ctx context.Context, q, id string, token int64) error {
	tag, err := b.pool.Exec(ctx, b.ackSQL(), q, id, token)
	return settled("ack", tag.RowsAffected(), err)
}

// Nack implements queue.Backend.
func (b *Backend) Nack(ctx context.Context, n queue.Nack) error {
	hist, err := jsonOrNil(n.History, len(n.History) == 0)
	if err != nil {
		return fmt.Errorf("pgqueue: nack: %w", err)
	}
	tag, err := b.pool.Exec(ctx, `UPDATE `+b.t.messages+` SET available_at = $4, attempts = $5, history = $6, token = 0
WHERE queue = $1 AND id = $2 AND token = $3`, n.Queue, n.ID, n.Token, n.AvailableAt, n.Attempts, hist)
	return settled("nack", tag.RowsAffected(), err)
}

// Bury implements queue.Backend.
func (b *Backend) Bury(ctx context.Context, d queue.Burial) error {
	hist, err := jsonOrNil(d.History, len(d.History) == 0)
	if err != nil {
		return fmt.Errorf("pgqueue: bury: %w", err)
	}
	first, last := d.At, d.At
	if len(d.History) > 0 {
		first, last = d.History[0].FailedAt, d.History[len(d.History)-1].FailedAt
	}
	tag, err := b.pool.Exec(ctx, `WITH del AS (
  DELETE FROM `+b.t.messages+` WHERE queue = $1 AND id = $2 AND token = $3
  RETURNING queue, id, target, payload, headers, dedupe_id, enqueued_at
)
INSERT INTO `+b.t.dead+` (queue, id, target, payload, headers, dedupe_id, enqueued_at, attempts, history, reason, first_failure, last_failure, dead_at)
SELECT queue, id, target, payload, headers, dedupe_id, enqueued_at, $4, $5, $6, $7, $8, $9 FROM del
ON CONFLICT (queue, id) DO UPDATE SET target = EXCLUDED.target, payload = EXCLUDED.payload, headers = EXCLUDED.headers,
  dedupe_id = EXCLUDED.dedupe_id, enqueued_at = EXCLUDED.enqueued_at, attempts = EXCLUDED.attempts, history = EXCLUDED.history,
  reason = EXCLUDED.reason, first_failure = EXCLUDED.first_failure, last_failure = EXCLUDED.last_failure, dead_at = EXCLUDED.dead_at`,
		d.Queue, d.ID, d.Token, d.Attempts, hist, string(d.Reason), first, last, d.At)
	return settled("bury", tag.RowsAffected(), err)
}

// where builds the WHERE clause of a dead-message filter.
func where(f queue.DeadFilter) (string, []any) {
	args := []any{f.Queue}
	conds := []string{"queue = $1"}
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if len(f.IDs) > 0 {
		add("id = ANY(?)", f.IDs)
	}
	if f.Target != "" {
		add("target = ?", f.Target)
	}
	if f.Reason != "" {
		add("reason = ?", string(f.Reason))
	}
	if !f.DeadBefore.IsZero() {
		add("dead_at < ?", f.DeadBefore)
	}
	if !f.DeadAfter.IsZero() {
		add("dead_at > ?", f.DeadAfter)
	}
	if f.AfterSeq > 0 {
		add("seq > ?", f.AfterSeq)
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

const deadCols = `seq, id, target, payload, headers, dedupe_id, enqueued_at, attempts, history, reason, first_failure, last_failure, dead_at`

func scanDead(q string, sc interface{ Scan(...any) error }) (queue.DeadMessage, error) {
	d := queue.DeadMessage{}
	var hdr, hist []byte
	var reason string
	if err := sc.Scan(&d.Seq, &d.ID, &d.Target, &d.Payload, &hdr, &d.DedupeID, &d.EnqueuedAt, &d.Attempts, &hist, &reason, &d.FirstFailure, &d.LastFailure, &d.DeadAt); err != nil {
		return d, err
	}
	d.Queue, d.Reason = q, queue.Reason(reason)
	if err := decode(hdr, hist, &d.Headers, &d.History); err != nil {
		return d, fmt.Errorf("dead message %q: %w", d.ID, err)
	}
	return d, nil
}

// ListDead implements queue.Backend.
func (b *Backend) ListDead(ctx context.Context, f queue.DeadFilter) ([]queue.DeadMessage, error) {
	w, args := where(f)
	q := `SELECT ` + deadCols + ` FROM ` + b.t.dead + w + ` ORDER BY seq`
	if f.Limit > 0 {
		q += ` LIMIT ` + strconv.Itoa(f.Limit)
	}
	rows, err := b.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("pgqueue: list dead: %w", err)
	}
	defer rows.Close()
	var out []queue.DeadMessage
	for rows.Next() {
		d, err := scanDead(f.Queue, rows)
		if err != nil {
			return nil, fmt.Errorf("pgqueue: list dead: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgqueue: list dead: %w", err)
	}
	return out, nil
}

// GetDead implements queue.Backend.
func (b *Backend) GetDead(ctx context.Context, q, id string) (*queue.DeadMessage, error) {
	d, err := scanDead(q, b.pool.QueryRow(ctx, `SELECT `+deadCols+` FROM `+b.t.dead+` WHERE queue = $1 AND id = $2`, q, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, queue.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("pgqueue: get dead: %w", err)
	}
	return &d, nil
}

// Requeue implements queue.Backend.
func (b *Backend) Requeue(ctx context.Context, q string, ids []string, now time.Time) (int, error) {
	tag, err := b.pool.Exec(ctx, `WITH del AS (
  DELETE FROM `+b.t.dead+` WHERE queue = $1 AND id = ANY($2)
  RETURNING queue, id, target, payload, headers, dedupe_id, enqueued_at, seq
)
INSERT INTO `+b.t.messages+` (queue, id, target, payload, headers, dedupe_id, enqueued_at, available_at)
SELECT queue, id, target, payload, headers, dedupe_id, enqueued_at, $3 FROM del ORDER BY seq
ON CONFLICT (queue, id) DO NOTHING`, q, ids, now)
	if err != nil {
		return 0, fmt.Errorf("pgqueue: requeue: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// DeleteDead implements queue.Backend.
func (b *Backend) DeleteDead(ctx context.Context, f queue.DeadFilter) (int, error) {
	w, args := where(f)
	q := `DELETE FROM ` + b.t.dead + w
	if f.Limit > 0 {
		q = `DELETE FROM ` + b.t.dead + ` WHERE seq IN (SELECT seq FROM ` + b.t.dead + w + ` ORDER BY seq LIMIT ` + strconv.Itoa(f.Limit) + `)`
	}
	tag, err := b.pool.Exec(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("pgqueue: delete dead: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// SetTarget implements queue.Backend.
func (b *Backend) SetTarget(ctx context.Context, s queue.TargetState) error {
	_, err := b.pool.Exec(ctx, `INSERT INTO `+b.t.targets+` (queue, target, disabled, reason, since) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (queue, target) DO UPDATE SET disabled = EXCLUDED.disabled, reason = EXCLUDED.reason, since = EXCLUDED.since`,
		s.Queue, s.Target, s.Disabled, s.Reason, s.Since)
	if err != nil {
		return fmt.Errorf("pgqueue: set target: %w", err)
	}
	return nil
}

// Targets implements queue.Backend.
func (b *Backend) Targets(ctx context.Context, q string) ([]queue.TargetState, error) {
	rows, err := b.pool.Query(ctx, `SELECT target, disabled, reason, since FROM `+b.t.targets+` WHERE queue = $1 ORDER BY target`, q)
	if err != nil {
		return nil, fmt.Errorf("pgqueue: targets: %w", err)
	}
	defer rows.Close()
	var out []queue.TargetState
	for rows.Next() {
		s := queue.TargetState{Queue: q}
		if err := rows.Scan(&s.Target, &s.Disabled, &s.Reason, &s.Since); err != nil {
			return nil, fmt.Errorf("pgqueue: targets: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgqueue: targets: %w", err)
	}
	return out, nil
}

var _ queue.Backend = (*Backend)(nil)

// Schema returns the schema holding the tables.
func (b *Backend) Schema() string { return b.schema }

// DeleteExpired deletes up to limit dedupe entries whose window ended
// at or before now and returns how many; call it periodically (expiry itself is
// logical: an expired entry never blocks an enqueue). A server error is
// returned wrapped.
func (b *Backend) DeleteExpired(ctx context.Context, now time.Time, limit int) (int, error) {
	// Sent unnamed (QueryExecModeExec) unless the pool speaks the simple
	// protocol anyway: planned with this call's bound, so that a chunk
	// walks the expires_at index rather than the table.
	args := []any{now, limit}
	if b.pool.Config().ConnConfig.DefaultQueryExecMode != pgx.QueryExecModeSimpleProtocol {
		args = append([]any{pgx.QueryExecModeExec}, args...)
	}
	tag, err := b.pool.Exec(ctx, `DELETE FROM `+b.t.dedupe+` WHERE (queue, dedupe_id) IN (
  SELECT queue, dedupe_id FROM `+b.t.dedupe+` WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED
) AND expires_at <= $1`, args...)
	if err != nil {
		return 0, fmt.Errorf("pgqueue: delete expired: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
