package postgres_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/postgres"
)

// dropProxy forwards TCP connections to the PostgreSQL server. Armed, it
// swallows the server's next answer on any connection and closes that
// connection: the server has done (and committed) what it answers, and
// the client never learns it.
type dropProxy struct {
	ln      net.Listener
	target  string
	armed   atomic.Bool
	dropped atomic.Int32
	wg      sync.WaitGroup
}

func newDropProxy(t *testing.T, target string) *dropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(func() { _ = ln.Close(); p.wg.Wait() })
	return p
}

func (p *dropProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() {
			defer c.Close()
			s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				return
			}
			defer s.Close()
			go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 && p.armed.CompareAndSwap(true, false) {
					p.dropped.Add(1)
					return // the answer is lost: both sides close
				}
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
}

// TestLostAnswerIsAnErrorNotARerun: a batch of claims whose answer is lost
// after the server committed it (the connection breaks on the way back)
// gives every caller an error — the outcome is unknown — and is not run
// again: run again, each claim would find its own committed record and be
// told the key is held by someone else.
func TestLostAnswerIsAnErrorNotARerun(t *testing.T) {
	t.Parallel()
	schema, direct := migrated(t, pgx.QueryExecModeCacheStatement, 2)
	u, err := url.Parse(databaseURL())
	if err != nil {
		t.Fatal(err)
	}
	proxy := newDropProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s := mustNew(t, pool, postgres.Options{Schema: schema})
	warmUp(t, s) // statements prepared on the pool's one connection

	now := time.Now()
	var reqs []idempotency.ClaimRequest
	for _, k := range []string{"lost/a", "lost/b", "lost/c"} {
		reqs = append(reqs, claimAt(k, now))
	}
	proxy.armed.Store(true)
	res, errs := postgres.ClaimBatch(s, reqs)
	if proxy.dropped.Load() != 1 {
		t.Fatalf("the proxy dropped %d answers, want 1", proxy.dropped.Load())
	}
	for i, r := range reqs {
		if errs[i] == nil || res[i].Claimed || res[i].Existing != nil {
			t.Errorf("%s after a lost answer: %+v, %v; want an error and no result", r.Key, res[i], errs[i])
		}
		if errors.Is(errs[i], idempotency.ErrFenced) {
			t.Errorf("%s: %v, a lost answer is not a fence", r.Key, errs[i])
		}
		// The batch did commit: the record is the caller's own claim.
		rec, err := direct.Lookup(context.Background(), r.Key, now)
		if err != nil || rec.State != idempotency.StateInProgress || rec.Token != r.Token {
			t.Errorf("%s on the server: %+v, %v; want in progress under the lost claim's token", r.Key, rec, err)
		}
	}
}
