// Package sqlitefile holds what levee's two SQLite packages (the
// idempotency store, store/sqlite, and the queue, store/sqlite/sqlitequeue)
// both need of the modernc.org/sqlite driver: a file's URI and the reading
// of its errors.
package sqlitefile

import (
	"errors"
	"path/filepath"
	"strings"

	sqlitedrv "modernc.org/sqlite"
)

// URI is the file: URI of the absolute path abs, with any '%', '?' or '#'
// escaped rather than taken for the start of the driver's parameters.
func URI(abs string) string {
	u := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(abs))
	if !strings.HasPrefix(u, "/") {
		u = "/" + u // Windows drive letter: file:///C:/...
	}
	return "file://" + u
}

// IsBusy reports whether err is SQLITE_BUSY (any extended code).
func IsBusy(err error) bool {
	var se *sqlitedrv.Error
	return errors.As(err, &se) && se.Code()&0xff == 5
}

// TxLost reports whether err is one of the errors after which SQLite may
// have rolled the whole transaction back, not just the failed statement
// (SQLITE_BUSY, NOMEM, INTERRUPT, IOERR, CORRUPT, FULL, NOTADB): a caller
// running several statements in one transaction must stop there, or its
// next statements would run, and commit, one by one outside any
// transaction.
func TxLost(err error) bool {
	var se *sqlitedrv.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case 5, 7, 9, 10, 11, 13, 26:
		return true
	}
	return false
}
