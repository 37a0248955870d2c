//go:build race

package queuetest

// raceEnabled: the race detector slows the pure-Go SQLite driver tenfold,
// so the counting tests count fewer messages under it.
const raceEnabled = true
