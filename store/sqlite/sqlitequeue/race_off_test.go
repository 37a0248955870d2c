//go:build !race

package sqlitequeue_test

const raceEnabled = false
