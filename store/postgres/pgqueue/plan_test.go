package pgqueue_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/postgres/pgqueue"
)

// explainGenericPlans makes the pool's one session report the plan of
// every statement it runs as a notice (auto_explain), with the generic plan
// forced (plan_cache_mode): the plan a prepared statement settles on and
// keeps as the table grows, whatever PostgreSQL would choose at this call.
// Without auto_explain the test is skipped, or fails under CI=true.
func explainGenericPlans(ctx context.Context, t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	for _, s := range []string{`LOAD 'auto_explain'`, `SET auto_explain.log_min_duration = 0`, `SET auto_explain.log_level = 'notice'`,
		`SET client_min_messages = 'notice'`, `SET plan_cache_mode = force_generic_plan`} {
		if _, err := pool.Exec(ctx, s); err != nil {
			msg := fmt.Sprintf("auto_explain is not available to this user (%s: %v): plans cannot be read (it needs a superuser and the contrib module)", s, err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// TestClaimWalksTheReadyIndexWhateverTheStatistics: a backlog grows far
// faster than statistics follow, and a plan PostgreSQL caches for the
// claim while the table is small must not become a scan of every
// available message once thousands wait. The claims' own plans are read
// through auto_explain, sent to this connection as notices, with the
// generic plan forced: a claim made after the table grew from one message
// to 3,000 (its statistics never refreshed: autovacuum is off for the
// table) still walks the ready index in order (and stops early), with no
// bitmap or sequential scan of the messages.
func TestClaimWalksTheReadyIndexWhateverTheStatistics(t *testing.T) {
	var mu sync.Mutex
	var plans []string
	capture := false
	pool := newPoolWith(t, func(cfg *pgxpool.Config) {
		cfg.MaxConns = 1 // one session: the one whose cached plan is read
		cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			mu.Lock()
			defer mu.Unlock()
			if capture && strings.Contains(n.Message, "FOR UPDATE SKIP LOCKED") {
				plans = append(plans, n.Message)
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	explainGenericPlans(ctx, t, pool)
	b := newBackendOn(t, pool, pgqueue.Options{Flushers: 1})
	schema := b.Schema()
	if _, err := pool.Exec(ctx, `ALTER TABLE `+pgx.Identifier{schema, "queue_messages"}.Sanitize()+` SET (autovacuum_enabled = false)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE `+pgx.Identifier{schema, "queue_messages"}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(b, queue.Config{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claim := func(perTarget int) []queue.Claimed {
		t.Helper()
		cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: time.Now(), LeaseUntil: time.Now().Add(time.Hour), Limit: 2, PerTarget: perTarget})
		if err != nil {
			t.Fatalf("Claim: %v", err)
		}
		return cs
	}
	// While the table is small, both claim statements run often enough
	// for PostgreSQL to settle on a cached generic plan.
	for range 8 {
		if _, err := q.Enqueue(ctx, &queue.Message{Target: "t", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		claim(2)
		claim(1)
	}
	msgs := make([]*queue.Message, 500)
	for range 6 {
		for i := range msgs {
			msgs[i] = &queue.Message{Target: "t", Payload: []byte("x"), EnqueuedAt: now}
		}
		if _, err := q.Enqueue(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	capture = true
	mu.Unlock()
	for _, c := range []struct {
		name      string
		perTarget int
	}{{"usual claim", 2}, {"claim ranked per target", 1}} {
		mu.Lock()
		plans = plans[:0]
		mu.Unlock()
		if got := claim(c.perTarget); len(got) == 0 {
			t.Fatalf("%s: claimed nothing from a backlog of 3,000", c.name)
		}
		mu.Lock()
		if len(plans) != 1 {
			mu.Unlock()
			t.Fatalf("%s: %d plans reported, want the claim's one", c.name, len(plans))
		}
		plan := plans[0]
		mu.Unlock()
		for _, bad := range []string{"Bitmap Heap Scan on queue_messages", "Seq Scan on queue_messages"} {
			if strings.Contains(plan, bad) {
				t.Errorf("%s: the plan scans the whole backlog (%s):\n%s", c.name, bad, plan)
			}
		}
		if !strings.Contains(plan, "Index Scan using queue_messages_ready") {
			t.Errorf("%s: the plan does not walk the ready index:\n%s", c.name, plan)
		}
	}
}

// TestLookupsByIDUseTheIDIndex: Ack, Nack, Bury and GetDead find one
// message by queue and id. On a table never analyzed (a new deployment, or
// autovacuum behind a burst) PostgreSQL costs that lookup the same through
// the (queue, id) index and through the other index that leads with queue,
// and takes the newer index. When that was the ready index, every Ack
// walked all the queue's messages (384 µs and 160 buffer reads an Ack at a
// 5,000-message webhook backlog). The plans are read through auto_explain
// with the generic plan forced, on a new schema and on one migrated from
// the layout of earlier versions (the unique constraint created first).
func TestLookupsByIDUseTheIDIndex(t *testing.T) {
	for _, upgraded := range []bool{false, true} {
		name := "new schema"
		if upgraded {
			name = "schema of an earlier version, migrated"
		}
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var plans []string
			pool := newPoolWith(t, func(cfg *pgxpool.Config) {
				cfg.MaxConns = 1
				cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
					mu.Lock()
					defer mu.Unlock()
					plans = append(plans, n.Message)
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			b := newBackendOn(t, pool, pgqueue.Options{Flushers: 1})
			tbl := func(n string) string { return pgx.Identifier{b.Schema(), n}.Sanitize() }
			if upgraded {
				// The earlier layout: the unique constraints, then the
				// indexes leading with queue created after them.
				for _, s := range []string{
					`DROP INDEX ` + tbl("queue_messages_id"), `DROP INDEX ` + tbl("queue_messages_ready"),
					`ALTER TABLE ` + tbl("queue_messages") + ` ADD CONSTRAINT queue_messages_queue_id_key UNIQUE (queue, id)`,
					`CREATE INDEX queue_messages_ready ON ` + tbl("queue_messages") + ` (queue, available_at, seq)`,
					`DROP INDEX ` + tbl("queue_dead_id"), `DROP INDEX ` + tbl("queue_dead_at"),
					`ALTER TABLE ` + tbl("queue_dead") + ` ADD CONSTRAINT queue_dead_queue_id_key UNIQUE (queue, id)`,
					`CREATE INDEX queue_dead_at ON ` + tbl("queue_dead") + ` (queue, dead_at)`,
				} {
					if _, err := pool.Exec(ctx, s); err != nil {
						t.Fatalf("%s: %v", s, err)
					}
				}
				if err := b.Migrate(ctx); err != nil {
					t.Fatal(err)
				}
				// Existing tables: the indexes are built, and the constraints
				// dropped, in the background.
				if err := b.WaitIndexes(ctx); err != nil {
					t.Fatal(err)
				}
				var left int
				if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_constraint WHERE conname IN ('queue_messages_queue_id_key', 'queue_dead_queue_id_key') AND connamespace = $1::regnamespace`,
					pgx.Identifier{b.Schema()}.Sanitize()).Scan(&left); err != nil || left != 0 {
					t.Fatalf("the earlier unique constraints left after Migrate: %d (%v)", left, err)
				}
			}
			for _, tb := range []string{"queue_messages", "queue_dead"} {
				if _, err := pool.Exec(ctx, `ALTER TABLE `+tbl(tb)+` SET (autovacuum_enabled = false)`); err != nil {
					t.Fatal(err)
				}
			}
			q, err := queue.New(b, queue.Config{Name: "q"})
			if err != nil {
				t.Fatal(err)
			}
			msgs := make([]*queue.Message, 300)
			for i := range msgs {
				msgs[i] = &queue.Message{Target: "t", Payload: []byte("x")}
			}
			if _, err := q.Enqueue(ctx, msgs...); err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "q", Now: now, LeaseUntil: now.Add(time.Hour), Limit: 3})
			if err != nil || len(cs) != 3 {
				t.Fatalf("Claim: %d messages, %v", len(cs), err)
			}
			explainGenericPlans(ctx, t, pool)
			calls := []struct {
				name, index string
				call        func() error
			}{
				{"Ack", "queue_messages_id", func() error { return b.Ack(ctx, "q", cs[0].ID, cs[0].Token) }},
				{"Nack", "queue_messages_id", func() error {
					return b.Nack(ctx, queue.Nack{Queue: "q", ID: cs[1].ID, Token: cs[1].Token, Attempts: 1, AvailableAt: now})
				}},
				{"Bury", "queue_messages_id", func() error {
					return b.Bury(ctx, queue.Burial{Queue: "q", ID: cs[2].ID, Token: cs[2].Token, Attempts: 1, Reason: queue.ReasonPermanent, At: now})
				}},
				{"GetDead", "queue_dead_id", func() error { _, err := b.GetDead(ctx, "q", cs[2].ID); return err }},
			}
			for _, c := range calls {
				mu.Lock()
				plans = plans[:0]
				mu.Unlock()
				if err := c.call(); err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				mu.Lock()
				got := strings.Join(plans, "\n")
				mu.Unlock()
				if !strings.Contains(got, "Index Scan using "+c.index+" on") {
					t.Errorf("%s: the lookup does not use %s:\n%s", c.name, c.index, got)
				}
				for _, bad := range []string{"queue_messages_ready on", "queue_dead_at on", "Seq Scan on queue_messages", "Seq Scan on queue_dead"} {
					if strings.Contains(got, bad) {
						t.Errorf("%s: the lookup walks the queue (%s):\n%s", c.name, bad, got)
					}
				}
			}
		})
	}
}
