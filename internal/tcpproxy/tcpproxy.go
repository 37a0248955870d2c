// Package tcpproxy is a TCP proxy for tests that put faults between a
// client and a real server on loopback: bytes held (a hung server or a
// black-holed link), connections cut, the server's answers delayed, or one
// answer swallowed after the server sent it (an answer lost on the way).
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards every connection it accepts to the target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{}
	conns  []net.Conn

	delay   atomic.Int64 // time.Duration before each chunk from the server
	drop    atomic.Bool
	dropped atomic.Int32
	wg      sync.WaitGroup
}

// Start listens on 127.0.0.1 and forwards to target until the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, thaw: make(chan struct{})}
	p.wg.Go(p.serve)
	t.Cleanup(func() { p.Cut(); p.Unfreeze(); p.wg.Wait() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(c, up, true) })
		p.wg.Go(func() { p.pipe(up, c, false) })
	}
}

// pipe copies src to dst chunk by chunk, applying the faults set.
func (p *Proxy) pipe(dst, src net.Conn, fromServer bool) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			frozen, thaw := p.frozen, p.thaw
			p.mu.Unlock()
			if frozen {
				<-thaw
			}
			if fromServer {
				if p.drop.CompareAndSwap(true, false) {
					p.dropped.Add(1)
					_ = src.Close()
					return
				}
				if d := time.Duration(p.delay.Load()); d > 0 {
					time.Sleep(d)
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = src.Close()
			}
			return
		}
	}
}

// Freeze holds every byte in both directions, connections open, until
// Unfreeze.
func (p *Proxy) Freeze() { p.mu.Lock(); p.frozen = true; p.mu.Unlock() }

// Unfreeze passes on what Freeze held.
func (p *Proxy) Unfreeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
		p.thaw = make(chan struct{})
	}
}

// Cut closes the listener (new connections are refused) and every open
// connection.
func (p *Proxy) Cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// DelayAnswers holds each chunk the server sends for d before passing it
// on (0: no delay).
func (p *Proxy) DelayAnswers(d time.Duration) { p.delay.Store(int64(d)) }

// DropNextAnswer makes the proxy swallow the next chunk the server sends,
// on any connection, and close that connection: the server did what it
// answers, and the client never learns it.
func (p *Proxy) DropNextAnswer() { p.drop.Store(true) }

// Dropped is how many answers DropNextAnswer has swallowed.
func (p *Proxy) Dropped() int { return int(p.dropped.Load()) }
