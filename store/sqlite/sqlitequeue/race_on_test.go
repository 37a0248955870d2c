//go:build race

package sqlitequeue_test

// raceEnabled: the race detector slows the pure-Go driver tenfold; the
// crash test sends fewer messages under it.
const raceEnabled = true
