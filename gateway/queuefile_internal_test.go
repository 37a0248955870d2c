package gateway

import (
	"os"
	"path/filepath"
	"testing"
)

// legacyQueueFile answers "no" only when it knows: a store file it cannot
// read is an error (a wrong "no" would open an empty queue file and strand
// the messages in the store's), a missing store file (a first start) or an
// existing queue file is a plain "no".
func TestLegacyQueueFileErrsWhenUnsure(t *testing.T) {
	dir := t.TempDir()
	store, queueFile := filepath.Join(dir, "levee.db"), filepath.Join(dir, "levee-queue.db")
	if legacy, err := legacyQueueFile(store, queueFile); legacy || err != nil {
		t.Fatalf("neither file exists: %v, %v; want false, nil", legacy, err)
	}
	if err := os.WriteFile(store, []byte("not a SQLite database, not even its header; long enough to be read as one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if legacy, err := legacyQueueFile(store, queueFile); err == nil {
		t.Fatalf("an unreadable store file: %v, nil; want an error", legacy)
	}
	if err := os.WriteFile(queueFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if legacy, err := legacyQueueFile(store, queueFile); legacy || err != nil {
		t.Fatalf("the queue file exists: %v, %v; want false, nil", legacy, err)
	}
}
