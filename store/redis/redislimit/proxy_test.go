package redislimit_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/store/redis/redislimit"
)

// proxy is a TCP proxy in front of Redis that can be frozen (bytes are
// held, connections stay open: a hung server or a black-holed link) and
// cut (every connection closed and new ones refused).
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	thaw   chan struct{}
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, thaw: make(chan struct{})}
	go p.serve()
	t.Cleanup(func() { p.cut(); p.unfreeze() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// pipe copies src to dst, holding every chunk while the proxy is frozen.
func (p *proxy) pipe(dst, src net.Conn) {
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

func (p *proxy) freeze() { p.mu.Lock(); p.frozen = true; p.mu.Unlock() }

func (p *proxy) unfreeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
		p.thaw = make(chan struct{})
	}
}

// cut closes the listener (new connections are refused) and every open
// connection.
func (p *proxy) cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// At the middleware's defaults (Timeout 250ms, MaxWait 1s), a Redis that
// freezes or is cut while 40 requests are in flight or arriving still
// answers every one of them with its failure mode — fail_open rules from
// the fallback, fail_closed ones 503 — by the Timeout path (a stall or a
// refused connection), never by MaxWait and never by hanging.
func TestFrozenAndCutRedisAtDefaults(t *testing.T) {
	t.Parallel()
	addr := redisAddr(t)
	for _, how := range []string{"frozen", "cut"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			px := startProxy(t, addr)
			// Long client timeouts: only the middleware's bounds apply.
			c := goredis.NewClient(&goredis.Options{Addr: px.addr(), ContextTimeoutEnabled: true, PoolSize: 64,
				ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, DialTimeout: 30 * time.Second})
			t.Cleanup(func() { _ = c.Close() })
			prefix := "levee:rltest:" + randHex(6) + ":"
			s, err := redislimit.New(c, redislimit.Options{Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { deletePrefix(newClient(t, addr), prefix) })
			if err := s.Load(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := s.Warm(context.Background(), 16); err != nil {
				t.Fatal(err)
			}
			evs := &events{}
			mw, err := ratelimit.Middleware(ratelimit.Options{Store: s, OnDecision: evs.add, Rules: []ratelimit.Rule{
				{Policy: policy(t, "open", "1000/s"), Key: ratelimit.Header("X-Open")},
				{Policy: policy(t, "closed", "1000/s"), Key: ratelimit.Header("X-Closed"), OnStoreError: ratelimit.FailClosed},
			}})
			if err != nil {
				t.Fatal(err)
			}
			h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
			do := func(hdr string) (int, time.Duration) {
				r := httptest.NewRequest(http.MethodGet, "/", nil)
				r.Header.Set(hdr, "k")
				w := httptest.NewRecorder()
				start := time.Now()
				h.ServeHTTP(w, r)
				return w.Code, time.Since(start)
			}
			for _, hdr := range []string{"X-Open", "X-Closed"} {
				if code, _ := do(hdr); code != http.StatusOK {
					t.Fatalf("%s with Redis up: %d", hdr, code)
				}
			}
			if ev := evs.last(); ev.Err != nil || ev.Fallback {
				t.Fatalf("with Redis up: %+v", ev)
			}
			if how == "frozen" {
				px.freeze()
			} else {
				px.cut()
			}
			type answer struct {
				hdr  string
				code int
				took time.Duration
			}
			answers := make(chan answer, 40)
			var wg sync.WaitGroup
			for i := range 40 {
				hdr := "X-Open"
				if i%2 == 1 {
					hdr = "X-Closed"
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(i) * 10 * time.Millisecond) // in flight at the failure and arriving after it
					code, took := do(hdr)
					answers <- answer{hdr, code, took}
				}()
			}
			wg.Wait()
			close(answers)
			for a := range answers {
				want := http.StatusOK
				if a.hdr == "X-Closed" {
					want = http.StatusServiceUnavailable
				}
				// MaxWait is 1s: an answer by then came from the Timeout
				// path. This is the no-hang bound, not a speed figure.
				if a.code != want || a.took >= time.Second {
					t.Fatalf("%s with Redis %s: %d in %v, want %d before MaxWait", a.hdr, how, a.code, a.took, want)
				}
			}
			evs.mu.Lock()
			defer evs.mu.Unlock()
			for _, ev := range evs.evs[2:] {
				if ev.Err == nil || errors.Is(ev.Err, context.DeadlineExceeded) {
					t.Fatalf("event %+v: want a stall, a refused connection or the open breaker, not MaxWait", ev)
				}
			}
		})
	}
}
