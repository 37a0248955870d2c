package sqlite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
)

// TestCheckpointsOffTheWriter: connections do not checkpoint on commit
// (wal_autocheckpoint is 0), the store's own checkpointer does while it is
// written and once after the last commit, then stops, and every record
// survives a reopen.
func TestCheckpointsOffTheWriter(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ckpt.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var auto int
	if err := s.db.QueryRow(`PRAGMA wal_autocheckpoint`).Scan(&auto); err != nil || auto != 0 {
		t.Fatalf("wal_autocheckpoint = %d, %v; want 0", auto, err)
	}
	ctx := context.Background()
	const n = 300
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < n || (s.ckpt.ran.Load() == 0 && time.Now().Before(deadline)); i++ {
		now := time.Now()
		key := "k" + time.Duration(i).String()
		tok := idempotency.NewToken()
		if res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: key, Token: tok, Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
			t.Fatalf("claim %d: %+v, %v", i, res, err)
		}
		if err := s.Complete(ctx, key, tok, idempotency.Response{Status: 200}, now, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if i >= n {
			time.Sleep(time.Millisecond)
		}
	}
	if s.ckpt.ran.Load() == 0 {
		t.Fatal("no checkpoint ran while the store was written")
	}
	// After the last commit, a trailing checkpoint covers it, and then the
	// checkpointer's goroutine is gone. (The count is read before that
	// commit: the loop above may end just after a checkpoint that covered
	// its own last commit.)
	ran := s.ckpt.ran.Load()
	now := time.Now()
	tok := idempotency.NewToken()
	if res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "last", Token: tok, Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
		t.Fatalf("last claim: %+v, %v", res, err)
	}
	if err := s.Complete(ctx, "last", tok, idempotency.Response{Status: 200}, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * checkpointEvery); s.ckpt.running.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the checkpointer still runs long after the last commit")
		}
	}
	if s.ckpt.ran.Load() <= ran {
		t.Fatal("no checkpoint after the last commit")
	}
	// The trailing checkpoint itself (not one run here) copied every frame.
	if last := s.ckpt.last.Load(); last == nil || last.logged == 0 || last.copied != last.logged {
		t.Fatalf("the trailing checkpoint reported %+v; want every WAL frame copied", last)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	var count int
	if err := s.db.QueryRow(`SELECT count(*) FROM idempotency_keys WHERE state = 2`).Scan(&count); err != nil || count < n {
		t.Fatalf("%d completed records after reopen, %v; want at least %d", count, err, n)
	}
}

// TestCheckpointSyncsWhatItCannotCopy: while a reader holds an older
// snapshot, a checkpoint cannot copy the commits after it (and need not
// have synced the WAL); the checkpointer then syncs the WAL file itself,
// so those commits are on disk within checkpointEvery all the same.
func TestCheckpointSyncsWhatItCannotCopy(t *testing.T) {
	t.Parallel()
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		checkpointSyncsWhatItCannotCopy(t, filepath.Join(t.TempDir(), "held.db"))
	})
	// Opened through a symbolic link, SQLite names the WAL after the
	// link's target: the checkpointer must sync that file.
	t.Run("symlink", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		real := filepath.Join(dir, "real.db")
		s, err := Open(real, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "link.db")
		if err := os.Symlink(real, link); err != nil {
			t.Skipf("no symbolic links here: %v", err)
		}
		checkpointSyncsWhatItCannotCopy(t, link)
	})
}

func checkpointSyncsWhatItCannotCopy(t *testing.T, path string) {
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	ctx := context.Background()
	write := func(key string) {
		t.Helper()
		now := time.Now()
		tok := idempotency.NewToken()
		if res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: key, Token: tok, Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
			t.Fatalf("claim %s: %+v, %v", key, res, err)
		}
	}
	write("before")
	// A reader in a transaction of its own, holding the snapshot it read.
	reader, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reader.Close() }()
	// _txlock=immediate makes database/sql's transactions IMMEDIATE; a
	// BEGIN DEFERRED sent on the connection is a reader's.
	if _, err := reader.ExecContext(ctx, `BEGIN DEFERRED`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRowContext(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("reader saw %d records, %v", n, err)
	}
	// Wait for a checkpoint the reader holds back entirely (it copies
	// nothing new: the count of frames copied stays where the one before
	// left it, short of the frames logged), followed by a successful sync
	// of the WAL by the checkpointer itself. The counter goes up after the
	// sync, which comes after the checkpoint's result is stored.
	synced, prevCopied := s.ckpt.synced.Load(), -1
	deadline := time.Now().Add(40 * checkpointEvery)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no WAL sync by the checkpointer after a checkpoint the reader held back (last checkpoint %+v)", s.ckpt.last.Load())
		}
		write("after" + time.Duration(i).String())
		time.Sleep(20 * time.Millisecond)
		n := s.ckpt.synced.Load()
		if n == synced {
			continue
		}
		synced = n
		last := s.ckpt.last.Load()
		if last == nil || last.copied >= last.logged {
			t.Fatalf("the checkpointer synced the WAL after a checkpoint that copied everything (%+v)", last)
		}
		if last.copied == prevCopied {
			break
		}
		prevCopied = last.copied
	}
	if fi, err := os.Stat(s.ckpt.wal); err != nil || fi.Size() == 0 {
		t.Fatalf("the checkpointer syncs %s: %v, %v; want the store's WAL", s.ckpt.wal, fi, err)
	}
	if _, err := reader.ExecContext(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
}

// TestCloseCheckpointsTheLastCommits: a Store closed within a checkpoint
// interval of its last commit checkpoints (and so syncs) those commits
// itself: SQLite does it on closing only for the last connection to the
// file in any process.
func TestCloseCheckpointsTheLastCommits(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "close.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if res, err := s.Claim(context.Background(), idempotency.ClaimRequest{Key: "k", Token: 1, Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
		t.Fatalf("claim: %+v, %v", res, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := s.ckpt.ran.Load(); n != 1 {
		t.Fatalf("%d checkpoints by a Store closed just after its only commit; want 1 (at Close)", n)
	}
	if last := s.ckpt.last.Load(); last == nil || last.logged == 0 || last.copied != last.logged {
		t.Fatalf("the checkpoint at Close reported %+v; want every frame copied", last)
	}
}

// TestLeftUnsynced: every answer of a PASSIVE checkpoint that can leave
// frames unsynced makes the checkpointer sync the WAL itself, including
// SQLite's answer while another connection checkpoints (busy, -1, -1),
// which comes without an error and which no single-process test provokes
// reliably; an answer that copied every frame does not.
func TestLeftUnsynced(t *testing.T) {
	for _, c := range []struct {
		name                 string
		err                  error
		busy, logged, copied int
		want                 bool
	}{
		{"everything copied", nil, 0, 40, 40, false},
		{"empty WAL", nil, 0, 0, 0, false},
		{"held back by a reader", nil, 0, 40, 12, true},
		{"nothing copied", nil, 0, 40, 0, true},
		{"another connection checkpointing", nil, 1, -1, -1, true},
		{"failed", errors.New("disk I/O error"), 0, 0, 0, true},
	} {
		if got := leftUnsynced(c.err, c.busy, c.logged, c.copied); got != c.want {
			t.Errorf("%s: leftUnsynced = %v, want %v", c.name, got, c.want)
		}
	}
}
