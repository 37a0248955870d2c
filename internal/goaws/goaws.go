// Package goaws runs the goaws SQS emulator for tests: the one way levee's
// tests start it (store/sqs/sqsqueue's and the gateway's). The emulator is
// goaws v0.4.5 behind the AWS JSON front in
// store/sqs/sqsqueue/testdata/goaws, a module of its own so that goaws's
// dependencies stay out of levee's go.mod.
package goaws

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/emulator"
)

// Build builds the emulator (or takes LEVEE_GOAWS, a built one) and
// returns its path. A build that fails (no module proxy and goaws not in
// the module cache) skips tb, or fails it under CI=true.
func Build(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("LEVEE_GOAWS"); p != "" {
		return p
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("goaws: cannot locate the emulator's source")
	}
	src := filepath.Join(filepath.Dir(file), "..", "..", "store", "sqs", "sqsqueue", "testdata", "goaws")
	bin := filepath.Join(tb.TempDir(), "goaws")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("building goaws: %v\n%s", err, out)
		}
		tb.Skipf("building goaws (needs the Go module proxy; set LEVEE_GOAWS to a built store/sqs/sqsqueue/testdata/goaws): %v\n%s", err, out)
	}
	return bin
}

// Start runs bin on a free 127.0.0.1 port until tb ends and returns its
// endpoint URL; its log is printed if tb failed.
func Start(tb testing.TB, bin string) string {
	tb.Helper()
	addr := emulator.FreeAddr(tb)
	return emulator.Start(tb, "goaws", addr, exec.Command(bin, addr))
}
