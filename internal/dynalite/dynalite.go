// Package dynalite runs the dynalite DynamoDB emulator (npm) for tests:
// the one way levee's tests start it (scripts/test installs it into
// .cache/dynalite and exports LEVEE_DYNALITE).
package dynalite

import (
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/leveehq/levee/internal/emulator"
)

// Start runs dynalite (env LEVEE_DYNALITE, or dynalite on PATH) on a free
// loopback port for the life of t and returns its endpoint URL. Without
// dynalite it skips t (it is an optional second emulator; minidyn runs in
// process everywhere).
func Start(t testing.TB) string {
	t.Helper()
	path := os.Getenv("LEVEE_DYNALITE")
	if path == "" {
		p, err := exec.LookPath("dynalite")
		if err != nil {
			t.Skip("dynalite not available: set LEVEE_DYNALITE to a dynalite executable or put dynalite on PATH (npm install dynalite@4)")
		}
		path = p
	}
	addr := emulator.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	return emulator.Start(t, "dynalite", addr, exec.Command(path, "--host", "127.0.0.1", "--port", port,
		"--createTableMs", "50", "--deleteTableMs", "0", "--updateTableMs", "0"))
}
