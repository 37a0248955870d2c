package pgqueue_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/queue/queuetest"
	"github.com/leveehq/levee/store/postgres/pgqueue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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

func newPool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	return newPoolWith(t, func(cfg *pgxpool.Config) { cfg.MaxConns = maxConns })
}

// newPoolWith is newPool with the pool's config set by configure.
func newPoolWith(t testing.TB, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(databaseURL())
	if err != nil {
		t.Fatalf("LEVEE_POSTGRES_URL: %v", err)
	}
	configure(cfg)
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

// newBackend returns a backend over a fresh schema of its own, dropped
// (that schema only) when the test ends.
func newBackend(t testing.TB) *pgqueue.Backend {
	t.Helper()
	return newBackendOn(t, newPool(t, 8), pgqueue.Options{})
}

// newBackendOn is newBackend over pool, with opts (its Schema is set to
// the fresh one).
func newBackendOn(t testing.TB, pool *pgxpool.Pool, opts pgqueue.Options) *pgqueue.Backend {
	t.Helper()
	var rb [6]byte
	_, _ = rand.Read(rb[:])
	schema := "levee_qtest_" + hex.EncodeToString(rb[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop test schema %s: %v", schema, err)
		}
	})
	opts.Schema = schema
	b, err := pgqueue.New(pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if err := b.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return b
}

// TestConformance runs the shared suite, one schema per test; Reopen is a
// second pool (a second process) on the same schema.
func TestConformance(t *testing.T) {
	queuetest.Run(t, queuetest.Harness{
		NewBackend: func(t testing.TB) queue.Backend { return newBackend(t) },
		Reopen: func(t testing.TB, b queue.Backend) queue.Backend {
			schema := b.(*pgqueue.Backend).Schema()
			r, err := pgqueue.New(newPool(t, 8), pgqueue.Options{Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close() })
			return r
		},
	})
}

func TestMigrateIdempotent(t *testing.T) {
	b := newBackend(t)
	if err := b.Migrate(context.Background()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
}

// BenchmarkQueue: go test -run '^$' -bench . -benchtime 5000x ./store/postgres/pgqueue/
func BenchmarkQueue(b *testing.B) {
	queuetest.Bench(b, func(b *testing.B) queue.Backend { return newBackend(b) })
}

// TestMigrateAgainTakesNoTableLock: on a migrated schema Migrate creates
// and drops nothing, so it runs while another session holds the queue
// tables in ROW EXCLUSIVE mode (as every enqueue, claim and ack does): a
// CREATE INDEX (SHARE) or a DROP CONSTRAINT (ACCESS EXCLUSIVE) would wait
// for it, and every replica's start would stall the fleet's queue traffic.
func TestMigrateAgainTakesNoTableLock(t *testing.T) {
	pool := newPool(t, 4)
	b := newBackendOn(t, pool, pgqueue.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	for _, tb := range []string{"queue_messages", "queue_dead", "queue_dedupe", "queue_targets"} {
		if _, err := tx.Exec(ctx, `LOCK TABLE `+pgx.Identifier{b.Schema(), tb}.Sanitize()+` IN ROW EXCLUSIVE MODE`); err != nil {
			t.Fatal(err)
		}
	}
	mctx, mcancel := context.WithTimeout(ctx, 3*time.Second)
	defer mcancel()
	if err := b.Migrate(mctx); err != nil {
		t.Fatalf("Migrate on a migrated schema, beside a writer: %v", err)
	}
}

// ackCounter counts Ack's statement sent on its own (pool.Exec), not in a
// claim's batch.
type ackCounter struct{ n atomic.Int64 }

func (c *ackCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(d.SQL, "DELETE FROM ") && strings.Contains(d.SQL, "queue_messages") {
		c.n.Add(1)
	}
	return ctx
}

func (c *ackCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestWorkerAcksRideOnClaims: a Worker on this backend (a queue.AckClaimer)
// sends no acknowledgement on its own while it runs: each goes with the
// claim the delivery's freed slot starts, in that claim's commit. Every
// delivered message is gone afterwards, including one whose handler
// returned after Stop began (acknowledged at the end of the run).
func TestWorkerAcksRideOnClaims(t *testing.T) {
	var acks ackCounter
	pool := newPoolWith(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 8; cfg.ConnConfig.Tracer = &acks })
	b := newBackendOn(t, pool, pgqueue.Options{})
	q, err := queue.New(b, queue.Config{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var delivered atomic.Int64
	last, inLast := make(chan struct{}), make(chan struct{})
	w, err := q.NewWorker(queue.WorkerConfig{Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
		if d.ID == "last" {
			close(inLast)
			<-last // returns nil after Stop began
		}
		delivered.Add(1)
		return nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := q.Enqueue(ctx, &queue.Message{ID: fmt.Sprintf("m%d", i), Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !poll.Wait(20*time.Second, func() bool { return delivered.Load() == 50 }) {
		t.Fatalf("%d of 50 delivered", delivered.Load())
	}
	if n := acks.n.Load(); n != 0 {
		t.Fatalf("%d acknowledgements sent on their own while the worker ran, want 0 (with the claims)", n)
	}
	if _, err := q.Enqueue(ctx, &queue.Message{ID: "last", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	<-inLast
	stopped := make(chan struct{})
	go func() { defer close(stopped); w.Stop() }()
	time.Sleep(100 * time.Millisecond) // let Stop cancel the worker first
	close(last)
	<-stopped
	if delivered.Load() != 51 {
		t.Fatalf("%d delivered, want 51", delivered.Load())
	}
	now := time.Now().Add(24 * time.Hour) // every lease lapsed
	left, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: now, LeaseUntil: now.Add(time.Minute), Limit: 100})
	if err != nil || len(left) != 0 {
		t.Fatalf("after the worker: %d messages left (%v), want none", len(left), err)
	}
}

// indexState reports whether the schema has index name, and whether it is
// valid, with its definition.
func indexState(t *testing.T, pool *pgxpool.Pool, schema, name string) (exists, valid bool, def string) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $2 AND c.relnamespace = $1::regnamespace`, pgx.Identifier{schema}.Sanitize(), name).Scan(&valid, &def)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return true, valid, def
}

// TestMigrateBuildsAnUpgradesIndexWithoutBlockingWrites: on an existing
// dedupe table that lacks its expires_at index (a deployment of an earlier
// version), Migrate returns while another session holds the table in ROW
// EXCLUSIVE mode (as an enqueue in flight does): the index is built after
// Migrate's transaction, concurrently, once that session is done; a plain
// CREATE INDEX would have waited for the lock inside Migrate.
func TestMigrateBuildsAnUpgradesIndexWithoutBlockingWrites(t *testing.T) {
	pool, b, ctx, dedupe := withoutDedupeIndex(t, 4, 30*time.Second, `SELECT 'q', 'd' || i, 'm' || i, now() + interval '1 hour' FROM generate_series(1, 5000) i`)
	tx := holdTable(t, pool, ctx, dedupe)
	b2 := newBackendOnSchema(t, pool, b.Schema())
	mctx, mcancel := context.WithTimeout(ctx, 3*time.Second)
	defer mcancel()
	if err := b2.Migrate(mctx); err != nil {
		t.Fatalf("Migrate beside a writer, on a table lacking an index: %v", err)
	}
	if exists, valid, _ := indexState(t, pool, b.Schema(), "queue_dedupe_expires"); exists && valid {
		t.Fatal("the index is valid while a writer that began before its build still runs")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b2.WaitIndexes(ctx); err != nil {
		t.Fatalf("background build: %v", err)
	}
	if exists, valid, def := indexState(t, pool, b.Schema(), "queue_dedupe_expires"); !exists || !valid || !strings.Contains(def, "(expires_at)") {
		t.Fatalf("after the build: exists %v valid %v (%s), want a valid index on expires_at", exists, valid, def)
	}
}

// TestMigrateRebuildsAnInvalidIndex: a concurrent build that did not
// finish (a stop, a crash, a failure) leaves an invalid index under the
// name; the next Migrate drops it and builds the index again.
func TestMigrateRebuildsAnInvalidIndex(t *testing.T) {
	pool, b, ctx, dedupe := withoutDedupeIndex(t, 4, 30*time.Second, `SELECT 'q', 'd' || i, 'same', now() + interval '1 hour' FROM generate_series(1, 10) i`)
	// A unique build over duplicate values fails and leaves its index invalid.
	if _, err := pool.Exec(ctx, `CREATE UNIQUE INDEX CONCURRENTLY queue_dedupe_expires ON `+dedupe+` (message_id)`); err == nil {
		t.Fatal("the unique build over duplicates succeeded")
	}
	if exists, valid, _ := indexState(t, pool, b.Schema(), "queue_dedupe_expires"); !exists || valid {
		t.Fatalf("before Migrate: exists %v valid %v, want an invalid index", exists, valid)
	}
	b2 := newBackendOnSchema(t, pool, b.Schema())
	if err := b2.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b2.WaitIndexes(ctx); err != nil {
		t.Fatalf("background build: %v", err)
	}
	if exists, valid, def := indexState(t, pool, b.Schema(), "queue_dedupe_expires"); !exists || !valid || !strings.Contains(def, "(expires_at)") || strings.Contains(def, "UNIQUE") {
		t.Fatalf("after Migrate: exists %v valid %v (%s), want a valid index on expires_at", exists, valid, def)
	}
}

// newBackendOnSchema is a second Backend (another replica) over schema.
func newBackendOnSchema(t testing.TB, pool *pgxpool.Pool, schema string) *pgqueue.Backend {
	t.Helper()
	b, err := pgqueue.New(pool, pgqueue.Options{Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// TestCloseStopsAnIndexBuild: Close cancels a background build that is
// waiting (here for a writer that began before it) and returns; the next
// Migrate builds the index.
func TestCloseStopsAnIndexBuild(t *testing.T) {
	pool, b, ctx, dedupe := withoutDedupeIndex(t, 4, 30*time.Second, `SELECT 'q', 'd1', 'm1', now() + interval '1 hour'`)
	tx := holdTable(t, pool, ctx, dedupe)
	b2 := newBackendOnSchema(t, pool, b.Schema())
	if err := b2.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the build is waiting for tx
	closed := make(chan struct{})
	go func() { defer close(closed); _ = b2.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return while the index build waited")
	}
	if err := b2.WaitIndexes(ctx); err == nil {
		t.Fatal("the interrupted build reported success")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b3 := newBackendOnSchema(t, pool, b.Schema())
	if err := b3.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b3.WaitIndexes(ctx); err != nil {
		t.Fatalf("the build after the interrupted one: %v", err)
	}
	if exists, valid, _ := indexState(t, pool, b.Schema(), "queue_dedupe_expires"); !exists || !valid {
		t.Fatalf("after the next Migrate: exists %v valid %v, want a valid index", exists, valid)
	}
}

// TestMigrateDropsAReplacedConstraintInTheBackground: an earlier unique
// constraint whose replacement index exists (a drop that timed out before)
// is dropped by the background build, not inside Migrate, and with a lock
// timeout: beside a writer holding the table, Migrate returns, the drop
// gives up after 2 s, and the next Migrate, with the writer gone, drops it.
func TestMigrateDropsAReplacedConstraintInTheBackground(t *testing.T) {
	pool := newPool(t, 4)
	b := newBackendOn(t, pool, pgqueue.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	messages := pgx.Identifier{b.Schema(), "queue_messages"}.Sanitize()
	if _, err := pool.Exec(ctx, `ALTER TABLE `+messages+` ADD CONSTRAINT queue_messages_queue_id_key UNIQUE (queue, id)`); err != nil {
		t.Fatal(err)
	}
	constraintLeft := func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_constraint WHERE conname = 'queue_messages_queue_id_key' AND connamespace = $1::regnamespace`,
			pgx.Identifier{b.Schema()}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	tx := holdTable(t, pool, ctx, messages)
	b2 := newBackendOnSchema(t, pool, b.Schema())
	mctx, mcancel := context.WithTimeout(ctx, 3*time.Second)
	defer mcancel()
	if err := b2.Migrate(mctx); err != nil {
		t.Fatalf("Migrate beside a writer, with a constraint to drop: %v", err)
	}
	if err := b2.WaitIndexes(ctx); err == nil || !constraintLeft() {
		t.Fatalf("the drop beside a writer: %v, constraint left %v; want a lock timeout and the constraint kept", err, constraintLeft())
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b3 := newBackendOnSchema(t, pool, b.Schema())
	if err := b3.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b3.WaitIndexes(ctx); err != nil || constraintLeft() {
		t.Fatalf("the next Migrate: %v, constraint left %v; want it dropped", err, constraintLeft())
	}
}

// TestTwoReplicasUpgradeAtOnce: two replicas upgrading at once both start
// a background build; one builds while the other waits for the build lock
// (without holding a snapshot, which the concurrent build would wait for:
// with a blocking pg_advisory_lock PostgreSQL reported a deadlock here),
// then finds the index built. Both report success.
func TestTwoReplicasUpgradeAtOnce(t *testing.T) {
	pool, b, ctx, _ := withoutDedupeIndex(t, 8, 60*time.Second, `SELECT 'q', 'd' || i, 'm' || i, now() + i * interval '1 second' FROM generate_series(1, 200000) i`)
	r1, r2 := newBackendOnSchema(t, pool, b.Schema()), newBackendOnSchema(t, pool, b.Schema())
	errs := make(chan error, 2)
	for _, r := range []*pgqueue.Backend{r1, r2} {
		go func() {
			if err := r.Migrate(ctx); err != nil {
				errs <- err
				return
			}
			errs <- r.WaitIndexes(ctx)
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("a replica's migration: %v", err)
		}
	}
	if exists, valid, _ := indexState(t, pool, b.Schema(), "queue_dedupe_expires"); !exists || !valid {
		t.Fatalf("after both: exists %v valid %v, want a valid index", exists, valid)
	}
}

// holdTable begins a transaction holding table in ROW EXCLUSIVE mode (as
// an enqueue, claim or ack in flight does), rolled back at the test's end
// at the latest.
func holdTable(t *testing.T, pool *pgxpool.Pool, ctx context.Context, table string) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, `LOCK TABLE `+table+` IN ROW EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	return tx
}

// withoutDedupeIndex is a migrated schema whose dedupe table lacks its
// expires_at index, as an earlier version left it, filled by rows (a
// SELECT of the table's four columns), on a pool of maxConns, with a
// context bounded by timeout.
func withoutDedupeIndex(t *testing.T, maxConns int32, timeout time.Duration, rows string) (*pgxpool.Pool, *pgqueue.Backend, context.Context, string) {
	t.Helper()
	pool := newPool(t, maxConns)
	b := newBackendOn(t, pool, pgqueue.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	dedupe := pgx.Identifier{b.Schema(), "queue_dedupe"}.Sanitize()
	for _, s := range []string{
		`DROP INDEX ` + pgx.Identifier{b.Schema(), "queue_dedupe_expires"}.Sanitize(),
		`INSERT INTO ` + dedupe + ` ` + rows,
	} {
		if _, err := pool.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	return pool, b, ctx, dedupe
}
