package sqsqueue_test

import (
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/queue/queuetest"
	"github.com/leveehq/levee/store/sqs/sqsqueue"
)

// TestConformance runs the shared queuetest suite on goaws, with what SQS
// standard queues lack declared (docs/queue.md, "SQS"): ServerClock (SQS
// times visibility and delays on its own clock; the backend converts the
// times passed in to durations) and NoCrossCallDedupe (standard queues keep
// no dedupe ids). The subtests that need them skip, naming the feature;
// every other one runs. goaws delivers in send order, so OldestFirst and
// the replay-order check pass here; real standard queues order only best
// effort.
func TestConformance(t *testing.T) {
	endpoint := startGoaws(t, buildGoaws(t))
	c := newClient(t, endpoint)
	api := newFidelity(c)
	var mu sync.Mutex
	prefixes := map[queue.Backend]string{}
	open := func(t testing.TB, prefix string) queue.Backend {
		t.Helper()
		b, err := sqsqueue.New(api, sqsqueue.Options{Prefix: prefix, ScanWait: -1, ScanVisibility: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		prefixes[b] = prefix
		mu.Unlock()
		return b
	}
	queuetest.Run(t, queuetest.Harness{
		NewBackend: func(t testing.TB) queue.Backend {
			prefix := randomPrefix()
			// The suite's leases are a minute; goaws applies the queue's
			// visibility, not a receive's (see fidelity).
			createQueues(t, c, prefix, 60, 0, "q", "other")
			return open(t, prefix)
		},
		Reopen: func(t testing.TB, b queue.Backend) queue.Backend {
			mu.Lock()
			prefix, ok := prefixes[b]
			mu.Unlock()
			if !ok {
				t.Fatalf("Reopen: unknown backend %p", b)
			}
			return open(t, prefix)
		},
		Features: queuetest.Features{ServerClock: true, NoCrossCallDedupe: true},
	})
}
