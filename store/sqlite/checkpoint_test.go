package sqlite

import (
	"context"
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
	path := filepath.Join(t.TempDir(), "held.db")
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
	if _, err := reader.ExecContext(ctx, `BEGIN DEFERRED`); err != nil {
		// _txlock=immediate makes database/sql's transactions IMMEDIATE;
		// a plain BEGIN on the connection is a reader's.
		t.Fatal(err)
	}
	var n int
	if err := reader.QueryRowContext(ctx, `SELECT count(*) FROM idempotency_keys`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("reader saw %d records, %v", n, err)
	}
	synced := s.ckpt.synced.Load()
	deadline := time.Now().Add(20 * checkpointEvery)
	for i := 0; s.ckpt.synced.Load() == synced; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no WAL sync by the checkpointer while a reader held the checkpoint back (last checkpoint %+v)", s.ckpt.last.Load())
		}
		write("after" + time.Duration(i).String())
		time.Sleep(20 * time.Millisecond)
	}
	if last := s.ckpt.last.Load(); last == nil || last.copied >= last.logged {
		t.Fatalf("the checkpoint that the reader held back reported %+v; want fewer frames copied than logged", last)
	}
	if fi, err := os.Stat(s.ckpt.wal); err != nil || fi.Size() == 0 {
		t.Fatalf("the checkpointer syncs %s: %v, %v; want the store's WAL", s.ckpt.wal, fi, err)
	}
	if _, err := reader.ExecContext(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
}
