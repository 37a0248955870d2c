// Package keyrange turns a key prefix into the half-open byte range
// [prefix, end) that holds exactly the keys beginning with it, so that a
// store can answer "any key with this prefix?" with one ordered index
// range read (SQLite's BINARY collation and PostgreSQL's "C" collation
// compare keys byte by byte).
package keyrange

// PrefixEnd returns the smallest string greater than every string that
// begins with prefix: prefix with its trailing 0xFF bytes removed and its
// last byte incremented. ok is false when no such string exists (prefix is
// empty or all 0xFF bytes): then every key at or above prefix matches.
func PrefixEnd(prefix string) (end string, ok bool) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xFF {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}
