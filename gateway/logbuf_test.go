package gateway

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
)

type syncWriter struct {
	mu     sync.Mutex
	b      strings.Builder
	writes int
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.b.Write(p)
}

func (w *syncWriter) get() (string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String(), w.writes
}

func TestLineBuffer(t *testing.T) {
	t.Parallel()
	out := &syncWriter{}
	b := newLineBuffer(out)
	for i := 0; i < 100; i++ {
		b.Write([]byte("a line\n"))
	}
	if s, _ := out.get(); s != "" {
		t.Fatal("lines were written before a flush")
	}
	// The timer flushes within a second or so (bounded wait, not a speed assertion).
	poll.Until(t, 10*time.Second, func() bool { s, _ := out.get(); return strings.Count(s, "\n") == 100 }, "buffered lines were never flushed")
	if _, n := out.get(); n != 1 {
		t.Fatalf("100 lines took %d writes, want 1", n)
	}
	// Filling the buffer flushes at once; Close flushes the rest.
	line := strings.Repeat("x", 1000) + "\n"
	for i := 0; i < 70; i++ {
		b.Write([]byte(line))
	}
	if s, _ := out.get(); strings.Count(s, "\n") < 100+65 {
		t.Fatalf("a full buffer was not flushed: %d lines out", strings.Count(s, "\n"))
	}
	b.Write([]byte("last\n"))
	b.Close()
	if s, _ := out.get(); !strings.HasSuffix(s, "last\n") || strings.Count(s, "\n") != 171 {
		t.Fatalf("Close did not flush: %d lines", strings.Count(s, "\n"))
	}
	b.Write([]byte("after close\n"))
	if s, _ := out.get(); !strings.HasSuffix(s, "after close\n") {
		t.Fatal("a write after Close was lost")
	}
}
