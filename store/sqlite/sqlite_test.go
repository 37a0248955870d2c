package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/idempotency/idemtest"
	"github.com/leveehq/levee/store/sqlite"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path) // never returns: the parent kills it
	}
	goleak.VerifyTestMain(m)
}

// open opens a Store on path and closes it when the test ends.
func open(t testing.TB, path string, opts sqlite.Options) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// TestConformance runs the shared suite on a file per test, with Replica
// opening a second Store (its own connection pool) on the same file, as a
// second gateway process would.
func TestConformance(t *testing.T) {
	var paths sync.Map // *sqlite.Store -> file path
	idemtest.Run(t, idemtest.Harness{
		NewStore: func(t testing.TB) idempotency.Store {
			path := filepath.Join(t.TempDir(), "levee.db")
			s := open(t, path, sqlite.Options{})
			paths.Store(s, path)
			return s
		},
		Replica: func(t testing.TB, s idempotency.Store) idempotency.Store {
			path, ok := paths.Load(s)
			if !ok {
				t.Fatalf("Replica: unknown store %p", s)
			}
			return open(t, path.(string), sqlite.Options{})
		},
		RoundTrips: func(s idempotency.Store) int64 { return s.(*sqlite.Store).RoundTrips() },
		// A snapshot read, then the claim's and the completion's write
		// transactions, each shared with concurrent writes (group commit).
		NewRequestRoundTrips: 2,
	})
}

// TestConformanceMemory runs the suite on ":memory:" (one connection, no
// replica: an in-memory database cannot be shared).
func TestConformanceMemory(t *testing.T) {
	idemtest.Run(t, idemtest.Harness{
		NewStore:             func(t testing.TB) idempotency.Store { return open(t, sqlite.Memory, sqlite.Options{}) },
		RoundTrips:           func(s idempotency.Store) int64 { return s.(*sqlite.Store).RoundTrips() },
		NewRequestRoundTrips: 2,
	})
}

// TestTwoStoresOneFileOneWinner is two processes' worth of contention on one
// file: two Stores with their own pools, 25 goroutines each, all claiming the
// same key at once, over several rounds. Exactly one claim per key wins,
// every loser sees the winner's token, and no SQLITE_BUSY leaks out.
func TestTwoStoresOneFileOneWinner(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "shared.db")
	stores := []*sqlite.Store{open(t, path, sqlite.Options{}), open(t, path, sqlite.Options{})}
	ctx := context.Background()
	now := time.Now()
	const perStore, rounds = 25, 10
	for round := range rounds {
		key := "round/" + string(rune('a'+round))
		var (
			won      atomic.Int32
			winner   atomic.Uint64
			mu       sync.Mutex
			existing []*idempotency.Record
			errs     []error
			wg       sync.WaitGroup
		)
		start := make(chan struct{})
		for _, s := range stores {
			for range perStore {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					req := idempotency.ClaimRequest{
						Key: key, Fingerprint: idempotency.FingerprintOf([]byte("x")), Token: idempotency.NewToken(),
						Now: now, LeaseUntil: now.Add(30 * time.Second), ExpiresAt: now.Add(time.Hour),
					}
					res, err := s.Claim(ctx, req)
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err != nil:
						errs = append(errs, err)
					case res.Claimed:
						won.Add(1)
						winner.Store(req.Token)
					default:
						existing = append(existing, res.Existing)
					}
				}()
			}
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			t.Errorf("round %d: Claim: %v", round, err)
		}
		if won.Load() != 1 {
			t.Fatalf("round %d: %d of %d claims won, want exactly 1", round, won.Load(), 2*perStore)
		}
		for _, ex := range existing {
			if ex == nil || ex.Token != winner.Load() {
				t.Fatalf("round %d: loser saw %+v, want the winner's token %d", round, ex, winner.Load())
			}
		}
		// The other store sees the winner's completion at once.
		if err := stores[0].Complete(ctx, key, winner.Load(), idempotency.Response{Status: 201}, now, now.Add(time.Hour)); err != nil &&
			!errors.Is(err, idempotency.ErrFenced) {
			t.Fatalf("round %d: Complete: %v", round, err)
		}
		rec, err := stores[1].Lookup(ctx, key, now)
		if err != nil || rec.State != idempotency.StateCompleted || rec.Response.Status != 201 {
			t.Fatalf("round %d: the other store sees %+v, %v; want the completed record", round, rec, err)
		}
	}
}

// TestMixedLoadTwoStoresNoBusy runs claims, completions, renewals and
// lookups on many keys from two Stores at once: under the default busy
// timeout no call may fail.
func TestMixedLoadTwoStoresNoBusy(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mixed.db")
	stores := []*sqlite.Store{open(t, path, sqlite.Options{}), open(t, path, sqlite.Options{})}
	ctx := context.Background()
	now := time.Now()
	var wg sync.WaitGroup
	var failures atomic.Int64
	report := func(op string, err error) {
		if err != nil && !errors.Is(err, idempotency.ErrFenced) && !errors.Is(err, idempotency.ErrNotFound) {
			if failures.Add(1) <= 5 {
				t.Errorf("%s: %v", op, err)
			}
		}
	}
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, other := stores[g%2], stores[(g+1)%2]
			for i := range 50 {
				key := "k" + string(rune('a'+i%8)) // 8 hot keys
				req := idempotency.ClaimRequest{
					Key: key, Token: idempotency.NewToken(), Now: now,
					LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour),
				}
				res, err := s.Claim(ctx, req)
				report("Claim", err)
				if err == nil && res.Claimed {
					report("Renew", other.Renew(ctx, key, req.Token, now, now.Add(2*time.Minute), req.ExpiresAt))
					if i%3 == 0 {
						report("Release", s.Release(ctx, key, req.Token))
					} else {
						report("Complete", other.Complete(ctx, key, req.Token, idempotency.Response{Status: 200}, now, now.Add(time.Hour)))
					}
				}
				_, err = other.Lookup(ctx, key, now)
				report("Lookup", err)
			}
		}()
	}
	wg.Wait()
}

func TestOpenMissingDirectory(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "levee.db")
	s, err := sqlite.Open(path, sqlite.Options{})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open in a missing directory succeeded")
	}
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "sqlite: open ") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open in a missing directory = %q, want a wrapped fs.ErrNotExist naming the path", err)
	}
	if _, statErr := os.Stat(filepath.Dir(path)); !errors.Is(statErr, fs.ErrNotExist) {
		t.Fatalf("Open created the directory: %v", statErr)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path string
		opts sqlite.Options
		want string
	}{
		{"empty path", "", sqlite.Options{}, "empty path"},
		{"parent is a file", filepath.Join(notDir, "x.db"), sqlite.Options{}, "not a directory"},
		{"bad table", filepath.Join(dir, "a.db"), sqlite.Options{Table: `x"; DROP TABLE y; --`}, "Options.Table"},
		{"negative busy timeout", filepath.Join(dir, "b.db"), sqlite.Options{BusyTimeout: -time.Second}, "Options.BusyTimeout"},
		{"not a database", garbage, sqlite.Options{}, "sqlite: open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sqlite.Open(tc.path, tc.opts)
			if err == nil {
				_ = s.Close()
				t.Fatalf("Open succeeded, want an error containing %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), "sqlite: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %q, want an error containing %q", err, tc.want)
			}
		})
	}
}

// rawDB opens the absolute path with the plain driver, to inspect what
// Open left.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	u := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(path))
	db, err := sql.Open("sqlite", "file://"+u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestSchemaAndPragmas(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "odd ?#% name.db")
	open(t, path, sqlite.Options{Table: "custom_keys"})
	open(t, path, sqlite.Options{}) // a second table in the same file
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the literal path: %v", err)
	}
	db := rawDB(t, path)
	var mode string
	var version int
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != 2 {
		t.Fatalf("user_version = %d, %v; want 2", version, err)
	}
	for _, name := range []string{"custom_keys", "idempotency_keys", "custom_keys_expires_at", "idempotency_keys_expires_at",
		"custom_keys_open", "idempotency_keys_open"} {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = ?`, name).Scan(&n); err != nil || n != 1 {
			t.Fatalf("schema object %q: count %d, %v", name, n, err)
		}
	}
}

// TestUpgradeFromVersion1 opens a file written by schema version 1 (the
// table and expires_at index only, user_version 1) holding an in-progress
// and a completed record: Open upgrades it to version 2 (the open-records
// index), keeps both records, and the in-progress one can then be held
// with an unknown outcome.
func TestUpgradeFromVersion1(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "v1.db")
	db := rawDB(t, path)
	for _, stmt := range append(version1Schema(),
		`PRAGMA user_version = 1`,
	) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fp := make([]byte, 32)
	resp := idempotency.MarshalResponse(idempotency.Response{Status: 201, Body: []byte("done")})
	if _, err := db.Exec(`INSERT INTO "idempotency_keys" VALUES ('running', ?1, 1, 7, ?2, ?3, NULL), ('done', ?1, 2, 8, ?2, ?3, ?4)`,
		fp, t0.Add(time.Minute).UnixMilli(), t0.Add(time.Hour).UnixMilli(), resp); err != nil {
		t.Fatal(err)
	}
	s := open(t, path, sqlite.Options{})
	var version, n int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != 2 {
		t.Fatalf("user_version after upgrade = %d, %v; want 2", version, err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name = 'idempotency_keys_open'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("open-records index after upgrade: %d, %v", n, err)
	}
	ctx := context.Background()
	if rec, err := s.Lookup(ctx, "done", t0); err != nil || rec.State != idempotency.StateCompleted || string(rec.Response.Body) != "done" {
		t.Fatalf("completed record after upgrade: %+v, %v", rec, err)
	}
	if err := s.MarkUnknown(ctx, "running", 7, t0, t0.Add(2*time.Hour)); err != nil {
		t.Fatalf("MarkUnknown of a version 1 record: %v", err)
	}
	res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "running", Token: 9, Now: t0.Add(time.Hour),
		LeaseUntil: t0.Add(2 * time.Hour), ExpiresAt: t0.Add(3 * time.Hour)})
	if err != nil || res.Claimed || res.Existing == nil || res.Existing.State != idempotency.StateUnknown {
		t.Fatalf("claim of the held record past its lease: %+v, %v; want blocked by the unknown record", res, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "future.db")
	open(t, path, sqlite.Options{})
	if _, err := rawDB(t, path).Exec(`PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	s, err := sqlite.Open(path, sqlite.Options{})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "schema version 99 is newer") {
		t.Fatalf("Open = %q, want a schema version error", err)
	}
}

func TestTablesAreIndependent(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "two.db")
	a := open(t, path, sqlite.Options{Table: "a"})
	b := open(t, path, sqlite.Options{Table: "b"})
	ctx := context.Background()
	now := time.Now()
	req := idempotency.ClaimRequest{Key: "k", Token: 7, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	for _, s := range []*sqlite.Store{a, b} {
		if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
			t.Fatalf("Claim in its own table: %+v, %v", res, err)
		}
	}
}

// TestDeleteExpired runs the shared DeleteExpired checks, each on a file
// of its own (DeleteExpired is table-wide).
func TestDeleteExpired(t *testing.T) {
	idemtest.RunDeleteExpired(t, func(t testing.TB) idemtest.Expirer {
		return open(t, filepath.Join(t.TempDir(), "gc.db"), sqlite.Options{})
	})
}

func TestPersistsAcrossReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "durable.db")
	ctx := context.Background()
	now := time.Now()
	s, err := sqlite.Open(path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	req := idempotency.ClaimRequest{Key: "k", Token: 42, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	if _, err := s.Claim(ctx, req); err != nil {
		t.Fatal(err)
	}
	want := idempotency.Response{Status: 201, Body: []byte("done")}
	if err := s.Complete(ctx, "k", 42, want, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "k", now); err == nil {
		t.Fatal("Lookup after Close succeeded")
	}
	rec, err := open(t, path, sqlite.Options{}).Lookup(ctx, "k", now)
	if err != nil || rec.Response == nil || string(rec.Response.Body) != "done" {
		t.Fatalf("after reopen: %+v, %v", rec, err)
	}
}

func TestCorruptRowIsAnError(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "corrupt.db")
	s := open(t, path, sqlite.Options{})
	ctx := context.Background()
	now := time.Now()
	if _, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, LeaseUntil: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "k", 1, idempotency.Response{Status: 200}, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := rawDB(t, path).Exec(`UPDATE idempotency_keys SET response = x'ff00'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "k", now); err == nil || !strings.HasPrefix(err.Error(), "sqlite: lookup: ") {
		t.Fatalf("Lookup of a corrupt response = %v, want a sqlite: lookup error", err)
	}
	if _, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "k", Token: 2, Now: now, ExpiresAt: now.Add(time.Hour)}); err == nil {
		t.Fatal("Claim blocked by a corrupt record succeeded, want an error")
	}
}

func BenchmarkStore(b *testing.B) {
	s, err := sqlite.Open(filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	idemtest.Bench(b, s)
}

// TestConcurrentOpenOfNewFile is several processes starting at once on a
// file that does not exist yet: the WAL switch and the schema creation
// serialize under the busy timeout and every Open succeeds.
func TestConcurrentOpenOfNewFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "race.db")
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	stores := make([]*sqlite.Store, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = sqlite.Open(path, sqlite.Options{})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		if err := stores[i].Close(); err != nil {
			t.Errorf("Close %d: %v", i, err)
		}
	}
}

// TestGroupCommit runs 100 claims and then 100 completions at once: each
// caller gets its own exact result, and the writes share transactions (far
// fewer than one per write).
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	s := open(t, filepath.Join(t.TempDir(), "group.db"), sqlite.Options{})
	ctx := context.Background()
	now := time.Now()
	const n = 100
	reqs := make([]idempotency.ClaimRequest, n)
	for i := range reqs {
		reqs[i] = idempotency.ClaimRequest{Key: fmt.Sprint("k", i), Token: idempotency.NewToken(), Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	}
	before := s.RoundTrips()
	run := func(f func(i int) error) {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				if err := f(i); err != nil {
					t.Errorf("%d: %v", i, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	run(func(i int) error {
		res, err := s.Claim(ctx, reqs[i])
		if err == nil && !res.Claimed {
			err = fmt.Errorf("not claimed: %+v", res.Existing)
		}
		return err
	})
	run(func(i int) error {
		// Every other completion uses a wrong token: fenced, alone in its batch or not.
		tok := reqs[i].Token
		if i%2 == 1 {
			tok++
		}
		err := s.Complete(ctx, reqs[i].Key, tok, idempotency.Response{Status: 200 + i%2}, now, now.Add(time.Hour))
		if i%2 == 1 {
			if !errors.Is(err, idempotency.ErrFenced) {
				return fmt.Errorf("wrong token: %v, want ErrFenced", err)
			}
			return nil
		}
		return err
	})
	trips := s.RoundTrips() - before
	if trips >= 3*n {
		t.Fatalf("%d round trips for %d claims (each a read and a write) and %d completions: no write shared a transaction", trips, n, n)
	}
	t.Logf("%d round trips for %d claims and %d completions", trips, n, n)
	for i, req := range reqs {
		rec, err := s.Lookup(ctx, req.Key, now)
		want := idempotency.StateCompleted
		if i%2 == 1 {
			want = idempotency.StateInProgress
		}
		if err != nil || rec.State != want || rec.Token != req.Token {
			t.Fatalf("record %d = %+v, %v; want %v with its own token", i, rec, err, want)
		}
	}
}

// TestGroupCommitStatementError poisons one key with a trigger: its claim
// fails with an SQL error, which rolls its batch back; every other claim
// of the batch is then run again on its own and succeeds.
func TestGroupCommitStatementError(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "poison.db")
	s := open(t, path, sqlite.Options{})
	if _, err := rawDB(t, path).Exec(`CREATE TRIGGER poison BEFORE INSERT ON idempotency_keys
WHEN NEW.key = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned key'); END`); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	for round := range 5 {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 30 {
			key := fmt.Sprintf("r%d/k%d", round, i)
			if i == 15 {
				key = "poison"
			}
			wg.Go(func() {
				<-start
				res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: key, Token: idempotency.NewToken(), Now: now,
					LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)})
				switch {
				case key == "poison" && (err == nil || !strings.Contains(err.Error(), "poisoned key")):
					t.Errorf("poisoned claim = %+v, %v; want the trigger's error", res, err)
				case key != "poison" && (err != nil || !res.Claimed):
					t.Errorf("claim %s = %+v, %v; want claimed", key, res, err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
}

// TestClosedStore: calls after Close fail instead of hanging.
func TestClosedStore(t *testing.T) {
	t.Parallel()
	s, err := sqlite.Open(filepath.Join(t.TempDir(), "closed.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// A store that has written (its checkpointer started) closes twice too.
	if res, err := s.Claim(context.Background(), idempotency.ClaimRequest{Key: "w", Token: 1, Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
		t.Fatalf("claim: %+v, %v", res, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Complete(context.Background(), "k", 1, idempotency.Response{}, now, now); err == nil {
		t.Fatal("Complete after Close succeeded")
	}
	if _, err := s.Claim(context.Background(), idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, ExpiresAt: now.Add(time.Hour)}); err == nil {
		t.Fatal("Claim after Close succeeded")
	}
}

// TestCloseWithWritesQueued closes a store while writers keep queueing:
// every write gets an outcome, and afterwards no file of the database is
// still open in this process (a batch reached after Close used to pin a
// new connection that nothing closed).
func TestCloseWithWritesQueued(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("needs /proc/self/fd")
	}
	for round := range 10 {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("close%d.db", round))
		s, err := sqlite.Open(path, sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for w := range 64 {
			wg.Go(func() {
				for i := 0; ; i++ {
					now := time.Now()
					if _, err := s.Claim(context.Background(), idempotency.ClaimRequest{Key: fmt.Sprint(w, "/", i), Token: 1,
						Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil {
						return // closed
					}
				}
			})
		}
		time.Sleep(5 * time.Millisecond)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(target, path) {
				t.Fatalf("round %d: %s still open after Close", round, target)
			}
		}
	}
}

// TestOpenIndexRebuilt: a version 2 file whose open-records index has the
// first shape, (state, key), gets it rebuilt on state alone at Open, keeps
// version 2 (readers of either shape read both), and List still pages
// through the open records in key order.
func TestOpenIndexRebuilt(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "v2.db")
	db := rawDB(t, path)
	for _, stmt := range append(version1Schema(),
		`CREATE INDEX "idempotency_keys_open" ON "idempotency_keys" (state, key) WHERE state <> 2`,
		`PRAGMA user_version = 2`,
	) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fp := make([]byte, 32)
	for _, k := range []string{"c", "a", "b"} {
		if _, err := db.Exec(`INSERT INTO "idempotency_keys" VALUES (?1, ?2, 3, 7, ?3, ?4, NULL)`,
			k, fp, t0.UnixMilli(), t0.Add(time.Hour).UnixMilli()); err != nil {
			t.Fatal(err)
		}
	}
	s := open(t, path, sqlite.Options{})
	var version int
	var def string
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != 2 {
		t.Fatalf("user_version = %d, %v; want 2", version, err)
	}
	if err := db.QueryRow(`SELECT sql FROM sqlite_schema WHERE name = 'idempotency_keys_open'`).Scan(&def); err != nil ||
		!strings.HasSuffix(def, "(state) WHERE state <> 2") {
		t.Fatalf("open index after Open: %q, %v; want it on (state)", def, err)
	}
	e := idempotency.New(s, idempotency.Options{})
	var got []string
	after := ""
	for {
		page, err := e.List(context.Background(), idempotency.StateUnknown, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, r.Key)
		}
		if len(page) < 2 {
			break
		}
		after = page[len(page)-1].Key
	}
	if strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("List pages = %v, want a,b,c in key order", got)
	}
}

// version1Schema is the default table as schema version 1 created it,
// frozen here (the package's own schema moves on).
func version1Schema() []string {
	return []string{
		`CREATE TABLE "idempotency_keys" (
  key         TEXT PRIMARY KEY NOT NULL,
  fingerprint BLOB NOT NULL,
  state       INTEGER NOT NULL,
  token       INTEGER NOT NULL,
  lease_until INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL,
  response    BLOB
) STRICT`,
		`CREATE INDEX "idempotency_keys_expires_at" ON "idempotency_keys" (expires_at)`,
	}
}

// TestHasKeyPrefixComparesBytes: a prefix with a NUL byte or a multi-byte
// character is compared byte by byte (SQL's substr and length would count
// characters and stop at the NUL).
func TestHasKeyPrefixComparesBytes(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "p.db"), sqlite.Options{})
	ctx := context.Background()
	now := time.Now()
	for _, k := range []string{"levee:webhook:a\x00b:0a", "levee:webhook:\u00e9t\u00e9:0b"} {
		if res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: k, Token: idempotency.NewToken(), Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
			t.Fatalf("claim %q: %+v %v", k, res, err)
		}
	}
	for _, c := range []struct {
		prefix string
		want   bool
	}{
		{"levee:webhook:a\x00b:", true}, {"levee:webhook:a\x00c:", false}, {"levee:webhook:a\x00", true},
		{"levee:webhook:\u00e9t\u00e9:", true}, {"levee:webhook:\u00e9t\u00e8:", false},
	} {
		if got, err := s.HasKeyPrefix(ctx, c.prefix); err != nil || got != c.want {
			t.Errorf("HasKeyPrefix(%q) = %v, %v; want %v", c.prefix, got, err, c.want)
		}
	}
}
