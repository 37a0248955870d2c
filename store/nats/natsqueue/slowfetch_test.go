package natsqueue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leveehq/levee/internal/tcpproxy"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/nats/natsqueue"
)

// TestLateClaimAnswerCountsNothing: a claim's answer that arrives after the
// claim gave up waiting for it (here held 1.5s by a proxy; in CI, a loaded
// machine) is a delivery the server counted. It must be handed back
// uncounted at once, not left to come back after AckWait as an attempt.
func TestLateClaimAnswerCountsNothing(t *testing.T) {
	t.Parallel()
	const ackWait = 4 * time.Second
	if natsURL() != nats.DefaultURL && !strings.HasPrefix(natsURL(), "nats://") {
		t.Skip("the proxy needs a nats://host:port LEVEE_NATS_URL")
	}
	p := tcpproxy.Start(t, strings.TrimPrefix(natsURL(), "nats://"))
	nc, err := nats.Connect("nats://"+p.Addr(), nats.Timeout(3*time.Second), nats.MaxReconnects(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b := newBackend(t, natsqueue.Options{AckWait: ackWait})
	slow, err := natsqueue.New(context.Background(), js, natsqueue.Options{Prefix: b.Prefix(), AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = slow.Close() })
	// Bind the consumer before the answers are slowed.
	if _, err := slow.Claim(ctx, queue.ClaimRequest{Queue: "q", Limit: 1}); err != nil {
		t.Fatal(err)
	}
	enqueue(t, b, &queue.Message{ID: "a", Target: "x"})
	p.DelayAnswers(1500 * time.Millisecond)
	cs, err := slow.Claim(ctx, queue.ClaimRequest{Queue: "q", Limit: 1})
	p.DelayAnswers(0)
	t.Logf("the slowed claim: %d claimed, err %v", len(cs), err)
	if len(cs) == 1 {
		t.Skip("the slowed answer came in time; nothing to check")
	}
	start := time.Now()
	again := claimAll(t, b, 1, 0)[0]
	if again.Attempt != 1 || time.Since(start) > ackWait/2 {
		t.Fatalf("the late answer's message came back after %v as attempt %d, want at once as attempt 1", time.Since(start), again.Attempt)
	}
}
