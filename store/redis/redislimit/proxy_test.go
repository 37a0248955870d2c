package redislimit_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/internal/tcpproxy"
	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/store/redis/redislimit"
)

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
			px := tcpproxy.Start(t, addr)
			// Long client timeouts: only the middleware's bounds apply.
			c := goredis.NewClient(&goredis.Options{Addr: px.Addr(), ContextTimeoutEnabled: true, PoolSize: 64,
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
				px.Freeze()
			} else {
				px.Cut()
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
