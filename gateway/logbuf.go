package gateway

import (
	"io"
	"sync"
	"time"
)

// lineBuffer batches whole log lines into few writes, like nginx's
// access_log buffer=64k flush=1s: a line reaches w when 64 KiB are
// pending, one second after it was written at the latest, and at Close.
// A crash can lose up to a second of access-log lines, never half a line.
type lineBuffer struct {
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	timer *time.Timer
	done  bool
}

const lineBufferSize = 64 << 10

func newLineBuffer(w io.Writer) *lineBuffer {
	b := &lineBuffer{w: w, buf: make([]byte, 0, lineBufferSize)}
	b.timer = time.AfterFunc(time.Hour, b.tick)
	b.timer.Stop()
	return b
}

// Write buffers p, which must be whole lines (slog writes one record per
// call).
func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return b.w.Write(p)
	}
	if len(b.buf)+len(p) > lineBufferSize {
		b.flushLocked()
		if len(p) > lineBufferSize {
			return b.w.Write(p)
		}
	}
	if len(b.buf) == 0 {
		b.timer.Reset(time.Second)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *lineBuffer) tick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
}

func (b *lineBuffer) flushLocked() {
	if len(b.buf) > 0 {
		_, _ = b.w.Write(b.buf)
		b.buf = b.buf[:0]
	}
}

// Close flushes what is pending; later writes go straight through.
func (b *lineBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer.Stop()
	b.flushLocked()
	b.done = true
	return nil
}
