// Package poll is the one way levee's tests wait for a condition that
// another goroutine or process makes true: poll it, bounded in time.
package poll

import (
	"fmt"
	"testing"
	"time"
)

// Interval is how often Until checks.
const Interval = 5 * time.Millisecond

// Until checks cond every Interval until it returns true, and fails t
// (from the test's goroutine only, as t.Fatal requires) with the message
// if timeout passes first.
func Until(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Wait(timeout, cond) {
		t.Fatalf("after %v: %s", timeout, fmt.Sprintf(format, args...))
	}
}

// Wait checks cond every Interval until it returns true (then it returns
// true) or timeout passes (false). Safe to call from any goroutine.
func Wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
	return true
}
