package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// checkpointEvery is how often the store checkpoints its WAL while it is
// being written, and the most time a commit waits before a checkpoint (or,
// when the checkpoint cannot copy it, a sync of the WAL) makes it durable.
// Measured on the store's own benchmark (BenchmarkGatewayNewKeys, one P;
// docs/benchmarks.md): every 100ms cost 61 µs of CPU per request, every
// 500ms 53 µs, every 2s 43 µs — a page the writer keeps changing (the
// tables' last pages) is copied once per checkpoint, however often it
// changed — while the longer the interval, the longer each checkpoint and
// the worse the writer's tail latency when both share one core.
const checkpointEvery = 500 * time.Millisecond

// checkpointer makes the WAL durable and moves its pages into the database
// file, off the writer's path. SQLite's own automatic checkpoint
// (wal_autocheckpoint, turned off on every connection of a file Store) runs
// inside the commit that crosses 1,000 WAL pages: that commit, and every
// write queued behind it in the group-commit writer, waits for the copy and
// the database file's fsync — the store's p99 under load. Instead, the
// first commit after a quiet spell starts one goroutine that, every
// checkpointEvery while commits keep coming, runs a PASSIVE checkpoint on a
// connection of its own (a passive checkpoint never blocks writers or
// readers; it copies what no reader still needs), and exits after a
// checkpoint that no commit followed, so an idle Store holds no goroutine.
//
// Durability: a commit is in the WAL (synchronous=NORMAL: written, not yet
// fsynced) before it returns, so it survives a crash of the process
// whether or not a checkpoint has run. A checkpoint that copies pages
// first fsyncs the WAL; one that cannot copy everything (a reader, perhaps
// in another process, still holds an older snapshot, or another process
// is checkpointing) may sync nothing, and then the checkpointer fsyncs the
// WAL file itself. So the WAL is synced every checkpointEvery while
// commits come and once after the last one (or at Close, which checkpoints
// what the last interval left), and a power loss or an operating-system
// crash can take back the commits of about the last checkpointEvery, not
// more.
type checkpointer struct {
	db      *sql.DB // nil for Memory (no WAL)
	wal     string  // the WAL file's path, as SQLite resolved it (syncWAL sets it)
	dirty   atomic.Bool
	running atomic.Bool
	mu      sync.Mutex
	stop    chan struct{} // closed by close; nil until the first commit
	closed  bool
	wg      sync.WaitGroup
	ran     atomic.Int64 // checkpoints run, for tests
	synced  atomic.Int64 // WAL syncs by the checkpointer itself that succeeded, for tests
	last    atomic.Pointer[checkpointResult]
}

// checkpointResult is what the last checkpoint reported: frames in the
// WAL and frames copied into the database, for tests.
type checkpointResult struct{ logged, copied int }

// afterCommit is called by the writer after every commit.
func (c *checkpointer) afterCommit() {
	if c.db == nil {
		return
	}
	c.dirty.Store(true)
	if !c.running.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if c.stop == nil {
		c.stop = make(chan struct{})
	}
	stop := c.stop
	c.wg.Add(1)
	c.mu.Unlock()
	go c.loop(stop)
}

func (c *checkpointer) loop(stop <-chan struct{}) {
	defer c.wg.Done()
	t := time.NewTimer(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		c.dirty.Store(false)
		c.checkpoint()
		if !c.dirty.Load() {
			c.running.Store(false)
			// A commit between the check and the store found the loop
			// still running: take the work back rather than lose it.
			if !c.dirty.Load() || !c.running.CompareAndSwap(false, true) {
				return
			}
		}
		t.Reset(checkpointEvery)
	}
}

// checkpoint runs a PASSIVE checkpoint. One that copied every frame synced
// the WAL and the database file; otherwise the WAL is synced here: a
// checkpoint that can copy nothing syncs nothing, and one that found
// another connection checkpointing reports busy (logged and copied -1)
// without an error. Errors go to no one: a failed or busy checkpoint leaves
// the pages in the WAL, and the next one copies them.
func (c *checkpointer) checkpoint() {
	var busy, logged, copied int
	err := c.db.QueryRowContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &logged, &copied)
	c.ran.Add(1)
	if err == nil {
		c.last.Store(&checkpointResult{logged: logged, copied: copied})
	}
	if leftUnsynced(err, busy, logged, copied) && c.syncWAL() == nil {
		c.synced.Add(1)
	}
}

// leftUnsynced reports whether a PASSIVE checkpoint's answer leaves WAL
// frames that it may not have synced: it failed, another connection was
// checkpointing (busy, with -1 for both counts), or it copied fewer frames
// than the WAL holds (a reader held it back; it syncs only when it copies).
func leftUnsynced(err error, busy, logged, copied int) bool {
	return err != nil || busy != 0 || logged < 0 || copied < logged
}

// syncWAL fsyncs the WAL file (any descriptor of a file syncs what every
// descriptor wrote; write access, because Windows requires it). It is
// opened each time: SQLite removes the file when its last connection
// closes (after checkpointing it), and a descriptor kept open would then
// sync a file no longer in use. The path is the one SQLite opened (after
// symbolic links), read from the checkpoint connection the first time.
func (c *checkpointer) syncWAL() error {
	if c.wal == "" {
		var file string
		if err := c.db.QueryRowContext(context.Background(), `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&file); err != nil {
			return err
		}
		if file == "" {
			return errors.New("sqlite: the database has no file name")
		}
		c.wal = file + "-wal"
	}
	f, err := os.OpenFile(c.wal, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	return errors.Join(err, f.Close())
}

// close stops the loop and closes the checkpoint connection.
func (c *checkpointer) close() {
	if c.db == nil {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if c.stop != nil {
		close(c.stop)
	}
	c.mu.Unlock()
	c.wg.Wait()
	// Commits since the last checkpoint: SQLite checkpoints on closing
	// only when this was the last connection to the file in any process.
	if c.dirty.Load() {
		c.checkpoint()
	}
	_ = c.db.Close()
}
