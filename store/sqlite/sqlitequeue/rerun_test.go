package sqlitequeue_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

// openRefusingBoom opens a backend on a file of its own whose messages
// table refuses, by a trigger, a message to target "boom" (after the
// enqueue's dedupe row was written), and a second connection to the file.
func openRefusingBoom(t *testing.T) (*sqlitequeue.Backend, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "queue.db")
	b := open(t, path)
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Exec(`CREATE TRIGGER refuse_boom BEFORE INSERT ON levee_queue_messages
WHEN NEW.target = 'boom' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`); err != nil {
		t.Fatal(err)
	}
	return b, db
}

// TestFailedEnqueueKeepsNoDedupeEntry: enqueues run without a savepoint
// each; when one fails inside SQLite (here a trigger refuses its message
// row, after its dedupe row was written), the batch runs again with every
// op isolated: the failing enqueue returns an error and leaves no dedupe
// entry behind (its id is not taken for a message that was never stored),
// and the enqueues that shared its batch are stored.
func TestFailedEnqueueKeepsNoDedupeEntry(t *testing.T) {
	b, db := openRefusingBoom(t)
	q, err := queue.New(b, queue.Config{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 16)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := &queue.Message{Target: "ok", DedupeID: fmt.Sprintf("r%d-%d", round, i), Payload: []byte("x")}
				if i == 7 {
					m.Target = "boom"
				}
				_, errs[i] = q.Enqueue(ctx, m)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			switch {
			case i == 7 && (err == nil || !strings.Contains(err.Error(), "refused by the test")):
				t.Fatalf("round %d: the refused enqueue returned %v, want the trigger's error", round, err)
			case i != 7 && err != nil:
				t.Fatalf("round %d: enqueue %d, batched with a failing one: %v", round, i, err)
			}
		}
		// The refused message's dedupe id is free: the next enqueue with
		// it is stored, not reported as a duplicate of nothing.
		res, err := q.Enqueue(ctx, &queue.Message{Target: "ok", DedupeID: fmt.Sprintf("r%d-7", round), Payload: []byte("x")})
		if err != nil || res[0].Duplicate {
			t.Fatalf("round %d: re-enqueue of the refused id: %+v, %v (want stored)", round, res, err)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM levee_queue_messages WHERE queue = 'q'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if want := 20 * 16; n != want {
		t.Fatalf("%d messages stored, want %d (15 per round and the re-enqueued one)", n, want)
	}
	var dd int
	if err := db.QueryRow(`SELECT count(*) FROM levee_queue_dedupe d WHERE NOT EXISTS
  (SELECT 1 FROM levee_queue_messages m WHERE m.queue = d.queue AND m.id = d.message_id)`).Scan(&dd); err != nil {
		t.Fatal(err)
	}
	if dd != 0 {
		t.Fatalf("%d dedupe entries name a message that was never stored", dd)
	}
}

// TestRerunKeepsTheOtherWritesOwnResults: a batch run again because an
// enqueue in it failed runs its claims and acks again too; each caller
// still gets its own write's outcome: a claim returns messages no other
// claim got, under a token its ack then holds, and nothing is claimed
// twice or lost.
func TestRerunKeepsTheOtherWritesOwnResults(t *testing.T) {
	b, db := openRefusingBoom(t)
	ctx := context.Background()
	work, err := queue.New(b, queue.Config{Name: "work"})
	if err != nil {
		t.Fatal(err)
	}
	incoming, err := queue.New(b, queue.Config{Name: "in"})
	if err != nil {
		t.Fatal(err)
	}
	const total = 60
	for i := range total {
		if _, err := work.Enqueue(ctx, &queue.Message{ID: fmt.Sprintf("w%02d", i), Target: "ok", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	claimed := map[string]int{}
	for round := range 20 {
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := &queue.Message{Target: "ok", Payload: []byte("x")}
				if i == 0 {
					m.Target = "boom"
				}
				_, _ = incoming.Enqueue(ctx, m)
			}()
		}
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				now := time.Now()
				cs, err := b.Claim(ctx, queue.ClaimRequest{Queue: "work", Now: now, LeaseUntil: now.Add(time.Hour), Limit: 1})
				if err != nil {
					t.Errorf("round %d: claim: %v", round, err)
					return
				}
				for _, c := range cs {
					mu.Lock()
					claimed[c.ID]++
					mu.Unlock()
					if err := b.Ack(ctx, "work", c.ID, c.Token); err != nil {
						t.Errorf("round %d: ack of %s with its claim's token: %v", round, c.ID, err)
					}
				}
			}()
		}
		wg.Wait()
	}
	for id, n := range claimed {
		if n != 1 {
			t.Errorf("%s claimed %d times", id, n)
		}
	}
	var left int
	if err := db.QueryRow(`SELECT count(*) FROM levee_queue_messages WHERE queue = 'work'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left+len(claimed) != total {
		t.Fatalf("%d claimed and acknowledged, %d left: %d messages, want %d", len(claimed), left, left+len(claimed), total)
	}
}
