package pgqueue_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

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
