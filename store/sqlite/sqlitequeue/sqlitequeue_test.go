package sqlitequeue_test

import (
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/queue/queuetest"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, path string) *sqlitequeue.Backend {
	t.Helper()
	b, err := sqlitequeue.Open(path, sqlitequeue.Options{})
	if err != nil {
		t.Fatalf("Open(%q): %v", path, err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// TestConformance runs the shared suite on a file per test; Reopen opens
// the same file again, as a second process would.
func TestConformance(t *testing.T) {
	var paths sync.Map // *Backend -> path
	queuetest.Run(t, queuetest.Harness{
		NewBackend: func(t testing.TB) queue.Backend {
			path := filepath.Join(t.TempDir(), "queue.db")
			b := open(t, path)
			paths.Store(b, path)
			return b
		},
		Reopen: func(t testing.TB, b queue.Backend) queue.Backend {
			path, ok := paths.Load(b)
			if !ok {
				t.Fatalf("Reopen: unknown backend %p", b)
			}
			return open(t, path.(string))
		},
	})
}

// BenchmarkQueue: go test -run '^$' -bench . -benchtime 5000x ./store/sqlite/sqlitequeue/
func BenchmarkQueue(b *testing.B) {
	queuetest.Bench(b, func(b *testing.B) queue.Backend { return open(b, filepath.Join(b.TempDir(), "queue.db")) })
}
