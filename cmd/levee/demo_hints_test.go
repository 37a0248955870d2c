package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/demo"
	"github.com/leveehq/levee/internal/syncbuf"
)

// TestDemoHintsRun: every levee command `levee demo` prints to try by hand
// is spelled as a newcomer who ran `go run ./cmd/levee demo` can type it,
// and runs against the serving demo, with the token it prints.
func TestDemoHintsRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole demo tour")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		_, err := demo.Run(ctx, demo.Options{Out: &out, Serve: true})
		done <- err
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(out.String(), "Try it by hand") {
		select {
		case err := <-done:
			t.Fatalf("the demo ended before serving: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo did not reach its by-hand commands:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the hints are printed right after the heading
	_, hints, _ := strings.Cut(out.String(), "Try it by hand")
	var commands [][]string
	sc := bufio.NewScanner(strings.NewReader(hints))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if tok, ok := strings.CutPrefix(line, "export LEVEE_ADMIN_TOKEN="); ok {
			t.Setenv("LEVEE_ADMIN_TOKEN", tok)
			continue
		}
		if strings.HasPrefix(line, "levee ") {
			t.Errorf("hint %q: there is no levee binary after go run ./cmd/levee demo; print it as go run ./cmd/levee …", line)
		}
		if cmd, ok := strings.CutPrefix(line, "go run ./cmd/levee "); ok {
			cmd, _, _ = strings.Cut(cmd, "#")
			commands = append(commands, strings.Fields(cmd))
		}
	}
	if len(commands) < 2 {
		t.Fatalf("found %d levee commands among the hints, want the keys and dlq ones:\n%s", len(commands), hints)
	}
	for _, args := range commands {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Errorf("levee %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, stdout.String(), stderr.String())
		}
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("demo: %v", err)
	}
}
