// Package syncbuf is a byte buffer that is safe for concurrent writes and
// reads: the collector of logs and child-process output in levee's tests.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer collects writes; String returns everything written so far.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns a copy of what was written.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
