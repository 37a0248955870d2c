package memory_test

import (
	"testing"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/idempotency/idemtest"
	"github.com/leveehq/levee/store/memory"
)

func TestConformance(t *testing.T) {
	idemtest.Run(t, idemtest.Harness{
		NewStore:   func(testing.TB) idempotency.Store { return memory.New(memory.Options{}) },
		RoundTrips: func(s idempotency.Store) int64 { return s.(*memory.Store).Ops() },
	})
}

// The cap is raised so that millions of fresh keys fit (the default, 1M, is
// reached in a 2 s run and then, correctly, refuses new keys).
func BenchmarkStore(b *testing.B) { idemtest.Bench(b, memory.New(memory.Options{MaxEntries: 1 << 24})) }
