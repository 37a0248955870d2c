package webhook_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind (the handler
// tests start concurrent deliveries).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
