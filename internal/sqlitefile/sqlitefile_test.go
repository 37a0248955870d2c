package sqlitefile

import (
	"database/sql"
	"errors"
	"path/filepath"
	"strconv"
	"testing"
)

func TestURIEscapesWhatTheDriverWouldParse(t *testing.T) {
	for abs, want := range map[string]string{
		"/var/lib/levee/levee.db":  "file:///var/lib/levee/levee.db",
		"/tmp/odd ?#% name.db":     "file:///tmp/odd %3f%23%25 name.db",
		"/a%3fb/c.db":              "file:///a%253fb/c.db",
		filepath.FromSlash("/x/y"): "file:///x/y",
	} {
		if got := URI(abs); got != want {
			t.Errorf("URI(%q) = %q, want %q", abs, got, want)
		}
	}
}

// A constraint violation undoes its statement alone; SQLITE_FULL may end
// the transaction; neither is SQLITE_BUSY.
func TestTxLostTellsTransactionEndingErrors(t *testing.T) {
	db, err := sql.Open("sqlite", URI(filepath.Join(t.TempDir(), "f.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)`); err != nil {
		t.Fatal(err)
	}
	_, constraint := db.Exec(`INSERT INTO t (k) VALUES (1), (1)`)
	var pages int
	if err := db.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA max_page_count = ` + strconv.Itoa(pages)); err != nil {
		t.Fatal(err)
	}
	_, full := db.Exec(`INSERT INTO t (k, v) VALUES (2, zeroblob(1000000))`)
	for _, c := range []struct {
		name       string
		err        error
		lost, busy bool
	}{
		{"constraint", constraint, false, false},
		{"full", full, true, false},
		{"not SQLite's", errors.New("other"), false, false},
	} {
		if c.err == nil {
			t.Fatalf("%s: no error", c.name)
		}
		if TxLost(c.err) != c.lost || IsBusy(c.err) != c.busy {
			t.Errorf("%s (%v): TxLost %v IsBusy %v, want %v %v", c.name, c.err, TxLost(c.err), IsBusy(c.err), c.lost, c.busy)
		}
	}
}
