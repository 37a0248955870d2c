// Package emulator runs a test's emulator process (dynalite, goaws) on a
// free loopback port for the life of a test: the one way levee's tests
// start such a child, wait for it to listen, and show its log on failure.
package emulator

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// FreeAddr returns a 127.0.0.1 address with a port free at the time of
// the call.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// Start runs cmd (its output to a log file in tb's temp dir) until tb
// ends, waits up to 15s for it to accept connections on addr, and returns
// "http://"+addr. It fails tb if the process exits first or never listens,
// and prints the last 4 KB of its log if tb failed.
func Start(tb testing.TB, name, addr string, cmd *exec.Cmd) string {
	tb.Helper()
	logPath := filepath.Join(tb.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		tb.Fatalf("starting %s (%s): %v", name, cmd.Path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); _ = logFile.Close() }()
	logTail := func() string {
		out, _ := os.ReadFile(logPath)
		return string(out[max(0, len(out)-4096):])
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if tb.Failed() {
			tb.Logf("%s log (last 4 KB):\n%s", name, logTail())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			return "http://" + addr
		}
		select {
		case err := <-exited:
			tb.Fatalf("%s (%s) exited before listening: %v\n%s", name, cmd.Path, err, logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s (%s) not listening on %s after 15s\n%s", name, cmd.Path, addr, logTail())
		}
	}
}
