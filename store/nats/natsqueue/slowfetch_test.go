package natsqueue_test

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/nats/natsqueue"
)

// slowProxy forwards one client's TCP connection to the NATS server and,
// while slow is set, holds what the server sends for hold before passing
// it on: a server (or a starved client) answering a claim late.
type slowProxy struct {
	ln   net.Listener
	slow atomic.Bool
	hold time.Duration
	wg   sync.WaitGroup
	mu   sync.Mutex
	cs   []net.Conn
}

func newSlowProxy(t *testing.T, hold time.Duration) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, hold: hold}
	server := strings.TrimPrefix(natsURL(), "nats://")
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", server)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.cs = append(p.cs, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
			go func() {
				defer p.wg.Done()
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						if p.slow.Load() {
							time.Sleep(p.hold)
						}
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.cs {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// TestLateClaimAnswerCountsNothing: a claim's answer that arrives after the
// claim gave up waiting for it (here held 1.5s by a proxy; in CI, a loaded
// machine) is a delivery the server counted. It must be handed back
// uncounted at once, not left to come back after AckWait as an attempt.
func TestLateClaimAnswerCountsNothing(t *testing.T) {
	t.Parallel()
	const ackWait = 4 * time.Second
	p := newSlowProxy(t, 1500*time.Millisecond)
	if natsURL() != nats.DefaultURL && !strings.HasPrefix(natsURL(), "nats://") {
		t.Skip("the proxy needs a nats://host:port LEVEE_NATS_URL")
	}
	nc, err := nats.Connect("nats://"+p.ln.Addr().String(), nats.Timeout(3*time.Second), nats.MaxReconnects(0))
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
	p.slow.Store(true)
	cs, err := slow.Claim(ctx, queue.ClaimRequest{Queue: "q", Limit: 1})
	p.slow.Store(false)
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
