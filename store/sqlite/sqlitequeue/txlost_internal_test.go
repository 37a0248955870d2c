package sqlitequeue

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/queue"
)

// TestBatchStopsAtAnErrorThatMayEndTheTransaction: after SQLITE_FULL (and
// the other errors after which SQLite may roll the whole transaction back)
// the batch must stop: its later writes would otherwise run, and commit,
// one by one outside any transaction. Here the file may not grow (a
// max_page_count at its size), and a batch of three writes is run: the
// first succeeds, the second needs a new page and gets SQLITE_FULL, the
// third would succeed. All three fail and none is committed.
func TestBatchStopsAtAnErrorThatMayEndTheTransaction(t *testing.T) {
	b, err := Open(filepath.Join(t.TempDir(), "queue.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	ctx := context.Background()
	now := time.Now()
	if _, err := b.Enqueue(ctx, queue.EnqueueRequest{Now: now, Messages: []*queue.Message{{Queue: "q", ID: "m1", Target: "t", EnqueuedAt: now}}}); err != nil {
		t.Fatal(err)
	}
	pageLimit := func(n string) {
		t.Helper()
		if err := b.write(ctx, modeSingle, func(wctx context.Context, tx *sql.Tx) error {
			if n == "" {
				var pages int
				if err := tx.QueryRowContext(wctx, `PRAGMA page_count`).Scan(&pages); err != nil {
					return err
				}
				n = fmt.Sprint(pages)
			}
			_, err := tx.ExecContext(wctx, `PRAGMA max_page_count = `+n)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	pageLimit("")
	defer pageLimit("1073741823")
	setAttempts := func(n int) *op {
		return &op{canceled: ctx.Err, mode: modeSingle, done: make(chan error, 1), fn: func(wctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(wctx, `UPDATE levee_queue_messages SET attempts = ?1 WHERE queue = 'q' AND id = 'm1'`, n)
			return err
		}}
	}
	big := &op{canceled: ctx.Err, mode: modeSingle, done: make(chan error, 1), fn: func(wctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(wctx, `INSERT INTO levee_queue_messages (queue, id, target, payload, dedupe_id, enqueued_at, available_at)
VALUES ('q', 'big', 't', zeroblob(1000000), '', 0, 0)`)
		return err
	}}
	// The writer goroutine is idle (every write above returned): run one
	// batch the way it would.
	batch := []*op{setAttempts(7), big, setAttempts(9)}
	b.commit(ctx, batch)
	for i, o := range batch {
		if err := <-o.done; err == nil {
			t.Errorf("write %d of the batch succeeded; every write of a batch stopped by SQLITE_FULL must fail", i+1)
		} else if i == 1 && !strings.Contains(err.Error(), "full") {
			t.Errorf("the growing write failed with %v, want SQLITE_FULL", err)
		}
	}
	var attempts int
	if err := b.rd.QueryRowContext(ctx, `SELECT attempts FROM levee_queue_messages WHERE queue = 'q' AND id = 'm1'`).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 {
		t.Fatalf("attempts = %d after the failed batch, want 0: a write of it was committed", attempts)
	}
}
