package gateway

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a test leaves goroutines behind (a server,
// connection or upstream that was not shut down). Idle keep-alive
// connections of net/http's Transports (http.DefaultClient's in the
// black-box tests) are not counted: they close on their idle timeout.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"))
}
