package lambda_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind: a handler given
// up on at the margin runs on until it returns, and then its goroutine
// ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
