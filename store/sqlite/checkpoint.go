package sqlite

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
	"time"
)

// checkpointEvery is the most often the store checkpoints its WAL while it
// is being written.
const checkpointEvery = 100 * time.Millisecond

// checkpointer moves the WAL's pages into the database file off the
// writer's path. SQLite's own automatic checkpoint (wal_autocheckpoint,
// turned off on every connection of a file Store) runs inside the commit
// that crosses 1,000 WAL pages: that commit, and every write queued behind
// it in the group-commit writer, waits for the copy and the database
// file's fsync — the store's p99 under load. Instead, after a commit the
// writer starts a PASSIVE checkpoint on a connection of its own when none
// is running and none ran in the last checkpointEvery; it runs beside the
// writer (a passive checkpoint never blocks writers or readers, it copies
// what no reader still needs) and its goroutine exits when done, so an
// idle Store holds none. Durability is unchanged: a commit is in the WAL
// before it returns, whether or not it has been checkpointed yet, and a
// process that opens the file after a crash replays the WAL. When the
// Store closes, SQLite checkpoints the rest as the last connection closes.
type checkpointer struct {
	db      *sql.DB // nil for Memory (no WAL)
	mu      sync.Mutex
	closed  bool
	last    atomic.Int64
	running atomic.Bool
	wg      sync.WaitGroup
	ran     atomic.Int64 // checkpoints run, for tests
}

func (c *checkpointer) afterCommit() {
	if c.db == nil {
		return
	}
	now := time.Now().UnixNano()
	if now-c.last.Load() < int64(checkpointEvery) || !c.running.CompareAndSwap(false, true) {
		return
	}
	c.last.Store(now)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.running.Store(false)
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer c.running.Store(false)
		// Errors are not returned to anyone: a failed or busy checkpoint
		// leaves the pages in the WAL, and the next one copies them.
		_, _ = c.db.ExecContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`)
		c.ran.Add(1)
	}()
}

// close waits for a running checkpoint and closes its connection.
func (c *checkpointer) close() {
	if c.db == nil {
		return
	}
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	_ = c.db.Close()
}
