package ratelimit_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The middleware runs each store call of a shared store on its own
// goroutine; every one of them must have ended when the tests do
// (abandoned calls end at MaxWait or when their context is canceled).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
