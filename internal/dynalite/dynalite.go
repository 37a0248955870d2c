// Package dynalite runs the dynalite DynamoDB emulator (npm) for tests:
// the one way levee's tests start it (scripts/test installs it into
// .cache/dynalite and exports LEVEE_DYNALITE).
package dynalite

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	addr := l.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	l.Close()
	logPath := filepath.Join(t.TempDir(), "dynalite.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "--host", "127.0.0.1", "--port", port,
		"--createTableMs", "50", "--deleteTableMs", "0", "--updateTableMs", "0")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting dynalite %s: %v", path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logFile.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			t.Fatalf("dynalite %s exited before listening: %v\n%s", path, err, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			t.Fatalf("dynalite %s not listening on %s after 15s\n%s", path, addr, out)
		}
	}
}
