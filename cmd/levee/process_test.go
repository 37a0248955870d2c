package main

// These tests run the real `levee serve` as separate OS processes (the test
// binary re-executes itself as levee), to prove what only processes can:
// replicas sharing a store, kill -9, signals.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/internal/syncbuf"
	"github.com/leveehq/levee/internal/tcpproxy"
)

func TestMain(m *testing.M) {
	if os.Getenv("LEVEE_TEST_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func randID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// need skips (or fails under CI=true) when a backend is unreachable.
func need(t *testing.T, name, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required in CI but unreachable at %s: %v", name, addr, err)
	}
	t.Skipf("%s unreachable at %s: %v", name, addr, err)
}

type replica struct {
	cmd   *exec.Cmd
	addr  string
	admin string
	out   *syncbuf.Buffer
	done  chan struct{} // closed when the process has exited
	err   error         // its exit error, valid after done
}

// startProcess runs `levee serve --config cfg` in a child process, killed
// when the test ends, without waiting for it to be ready.
func startProcess(t *testing.T, cfgPath, addr, admin string) *replica {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "--config", cfgPath)
	cmd.Env = append(os.Environ(), "LEVEE_TEST_RUN_MAIN=1")
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &replica{cmd: cmd, addr: addr, admin: admin, out: out, done: make(chan struct{})}
	go func() { r.err = cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-r.done
	})
	return r
}

// startReplica runs `levee serve --config cfg` in a child process and waits
// until it is ready.
func startReplica(t *testing.T, cfgPath, addr, admin string) *replica {
	t.Helper()
	r := startProcess(t, cfgPath, addr, admin)
	out := r.out
	exited := false
	poll.Until(t, 20*time.Second, func() bool {
		select {
		case <-r.done:
			exited = true
			return true
		default:
		}
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "levee not ready:\n%s", out)
	if exited {
		t.Fatalf("levee exited before it was ready: %v\n%s", r.err, out)
	}
	return r
}

// charges is an upstream that counts executions. While hold is set, each
// charge waits for release to close; delay slows every charge.
type charges struct {
	n       atomic.Int64
	delay   atomic.Int64 // nanoseconds
	hold    atomic.Bool
	release chan struct{}
	srv     *http.Server
	url     string
}

func newCharges(t *testing.T) *charges {
	c := &charges{release: make(chan struct{})}
	t.Cleanup(func() { close(c.release) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.url = "http://" + ln.Addr().String()
	c.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := c.n.Add(1)
		if c.hold.Load() {
			select {
			case <-c.release:
			case <-time.After(20 * time.Second):
			}
		}
		time.Sleep(time.Duration(c.delay.Load()))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"charge":%d}`, n)
	})}
	go c.srv.Serve(ln)
	t.Cleanup(func() { c.srv.Close() })
	return c
}

func writeConfig(t *testing.T, addr, admin, store, upstream, idem string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "levee.yaml")
	cfg := fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {level: warn, access_log: false}
store:
%s
routes:
  - name: charges
    match: {path_prefix: /v1/charges}
    upstream: %s
    idempotency:
%s
`, addr, admin, store, upstream, idem)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func post(url, key, body string) (int, string, http.Header, error) {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, nil
}

func redisStore(t *testing.T) string {
	addr := os.Getenv("LEVEE_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	need(t, "Redis", addr)
	return fmt.Sprintf("  type: redis\n  redis: {addr: %q, prefix: \"levee:proctest:%s:\"}", addr, randID())
}

// postgresURL is the PostgreSQL the process tests use.
func postgresURL() string {
	if url := os.Getenv("LEVEE_POSTGRES_URL"); url != "" {
		return url
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

func postgresStore(t *testing.T) string {
	url := postgresURL()
	need(t, "PostgreSQL", "127.0.0.1:5432")
	schema := "levee_proc_" + randID()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
	})
	return fmt.Sprintf("  type: postgres\n  postgres: {url: %q, schema: %s}", url, schema)
}

func testReplicasExecuteOnce(t *testing.T, store string) {
	up := newCharges(t)
	up.delay.Store(int64(200 * time.Millisecond))
	var reps []*replica
	for i := 0; i < 3; i++ {
		addr, admin := freePort(t), freePort(t)
		reps = append(reps, startReplica(t, writeConfig(t, addr, admin, store, up.url, "      in_flight_wait: 20s"), addr, admin))
	}
	const n = 100
	statuses := make([]int, n)
	bodies := make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, b, _, err := post("http://"+reps[i%3].addr+"/v1/charges", "order-77", `{"amount":100}`)
			if err != nil {
				t.Error(err)
			}
			statuses[i], bodies[i] = st, b
		}()
	}
	wg.Wait()
	if got := up.n.Load(); got != 1 {
		t.Fatalf("100 concurrent identical POSTs across 3 replicas reached the upstream %d times, want 1", got)
	}
	for i := range statuses {
		if statuses[i] != 201 || bodies[i] != `{"charge":1}` {
			t.Fatalf("response %d = %d %s, want the one 201", i, statuses[i], bodies[i])
		}
	}
}

func TestThreeReplicasShareRedis(t *testing.T) {
	t.Parallel()
	testReplicasExecuteOnce(t, redisStore(t))
}

func TestThreeReplicasSharePostgres(t *testing.T) {
	t.Parallel()
	testReplicasExecuteOnce(t, postgresStore(t))
}

func TestKill9InFlightThenRetryOnAnotherReplica(t *testing.T) {
	t.Parallel()
	store := redisStore(t)
	up := newCharges(t)
	up.hold.Store(true)
	idem := "      lease: 2s"
	aAddr, aAdmin := freePort(t), freePort(t)
	bAddr, bAdmin := freePort(t), freePort(t)
	a := startReplica(t, writeConfig(t, aAddr, aAdmin, store, up.url, idem), aAddr, aAdmin)
	b := startReplica(t, writeConfig(t, bAddr, bAdmin, store, up.url, idem), bAddr, bAdmin)

	go post("http://"+a.addr+"/v1/charges", "order-9", `{"amount":9}`) // will never get its answer
	poll.Until(t, 10*time.Second, func() bool { return up.n.Load() > 0 }, "the first request never reached the upstream")
	reached := time.Now() // the claim was taken just before this
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	killedAt := time.Now()

	// Within the lease: the retry is refused and nothing runs again.
	st, _, hdr, err := post("http://"+b.addr+"/v1/charges", "order-9", `{"amount":9}`)
	if err != nil || st != 409 || hdr.Get("Retry-After") == "" || up.n.Load() != 1 {
		t.Fatalf("retry within the lease: %d %v (upstream %d), want 409 + Retry-After, no execution", st, err, up.n.Load())
	}
	// After the lease: exactly one re-execution.
	up.hold.Store(false) // new charges answer at once
	var body string
	for {
		st, body, _, err = post("http://"+b.addr+"/v1/charges", "order-9", `{"amount":9}`)
		if err != nil {
			t.Fatal(err)
		}
		if st != 409 {
			break
		}
		if time.Since(killedAt) > 15*time.Second {
			t.Fatal("the dead holder's claim was never taken over")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st != 201 || up.n.Load() != 2 {
		t.Fatalf("retry after the lease: %d %s, upstream executions %d (want 201 and 2: the lost one + one re-execution)", st, body, up.n.Load())
	}
	if since := time.Since(reached); since < time.Second {
		t.Fatalf("taken over %v after the claim, before the 2s lease could have lapsed", since)
	}
	st, body2, hdr, _ := post("http://"+b.addr+"/v1/charges", "order-9", `{"amount":9}`)
	if st != 201 || body2 != body || hdr.Get("Idempotent-Replayed") != "true" || up.n.Load() != 2 {
		t.Fatalf("later retry: %d %s replayed=%q upstream=%d, want the replay", st, body2, hdr.Get("Idempotent-Replayed"), up.n.Load())
	}
}

func TestSignals(t *testing.T) {
	t.Parallel()
	up := newCharges(t)
	addr, admin := freePort(t), freePort(t)
	dbPath := filepath.Join(t.TempDir(), "levee.db")
	store := fmt.Sprintf("  type: sqlite\n  sqlite: {path: %q}", dbPath)
	cfg := writeConfig(t, addr, admin, store, up.url, "      required: false")
	r := startReplica(t, cfg, addr, admin)

	// SIGHUP with a valid new file: the new route serves.
	data, _ := os.ReadFile(cfg)
	newCfg := string(data) + fmt.Sprintf("  - name: extra\n    match: {path: /extra}\n    upstream: %s\n", up.url)
	os.WriteFile(cfg, []byte(newCfg), 0o600)
	r.cmd.Process.Signal(syscall.SIGHUP)
	poll.Until(t, 10*time.Second, func() bool {
		st, _, _, _ := post("http://"+addr+"/extra", "k", "{}")
		return st == 201
	}, "SIGHUP reload not applied:\n%s", r.out)
	// SIGHUP with an invalid file: logged, old config keeps serving.
	os.WriteFile(cfg, []byte("routes: [{name: broken}]\n"), 0o600)
	r.cmd.Process.Signal(syscall.SIGHUP)
	poll.Until(t, 10*time.Second, func() bool {
		m := get(t, "http://"+admin+"/metrics")
		return strings.Contains(m, `levee_config_reloads_total{result="failure"}`) && !strings.Contains(m, `levee_config_reloads_total{result="failure"} 0`)
	}, "failed reload not counted")
	if st, _, _, _ := post("http://"+addr+"/extra", "k2", "{}"); st != 201 {
		t.Fatalf("after an invalid reload the old config stopped serving: %d", st)
	}
	// SIGTERM while a request is in flight: it completes, then levee exits 0.
	up.delay.Store(int64(500 * time.Millisecond))
	res := make(chan int)
	before := up.n.Load()
	go func() { st, _, _, _ := post("http://"+addr+"/v1/charges", "slow", "{}"); res <- st }()
	// SIGTERM once the request is in flight (at the upstream), not before
	// it has even reached levee.
	poll.Until(t, 10*time.Second, func() bool { return up.n.Load() > before }, "the slow request never reached the upstream")
	r.cmd.Process.Signal(syscall.SIGTERM)
	if st := <-res; st != 201 {
		t.Fatalf("in-flight request during SIGTERM: %d\n%s", st, r.out)
	}
	select {
	case <-r.done:
		if r.err != nil {
			t.Fatalf("levee exited with %v after SIGTERM\n%s", r.err, r.out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("levee did not exit after SIGTERM")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestThreeReplicasShareARedisRateLimit(t *testing.T) {
	t.Parallel()
	addrRedis := os.Getenv("LEVEE_REDIS_ADDR")
	if addrRedis == "" {
		addrRedis = "127.0.0.1:6379"
	}
	need(t, "Redis", addrRedis)
	up := newCharges(t)
	runID := randID() // a fresh key prefix per run
	var reps []*replica
	for i := 0; i < 3; i++ {
		addr, admin := freePort(t), freePort(t)
		path := filepath.Join(t.TempDir(), "levee.yaml")
		cfg := fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {level: warn, access_log: false}
store: {type: memory}
rate_limit:
  store: redis
  redis: {addr: %q, prefix: "levee:rltest:%s:"}
  timeout: 2s
  policies:
    - {name: everyone, limit: 100/hour burst 100, key: const, on_store_error: fail_closed}
routes:
  - name: api
    match: {path_prefix: /}
    upstream: %s
`, addr, admin, addrRedis, runID, up.url)
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		reps = append(reps, startReplica(t, path, addr, admin))
	}
	const n = 1000
	var ok, limited, other atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200) // 200 connections at a time
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			resp, err := http.Get("http://" + reps[i%3].addr + "/x")
			if err != nil {
				other.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case 201:
				ok.Add(1)
			case 429:
				limited.Add(1)
			default:
				other.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 100 || limited.Load() != 900 || other.Load() != 0 {
		t.Fatalf("3 replicas, limit 100, 1000 requests: %d admitted, %d limited, %d other; want exactly 100 / 900 / 0", ok.Load(), limited.Load(), other.Load())
	}
	if up.n.Load() != 100 {
		t.Fatalf("upstream saw %d requests, want 100", up.n.Load())
	}
}

// TestSIGHUPDuringStartup: a SIGHUP that arrives while levee is still
// starting (here: its PostgreSQL store unreachable behind a frozen proxy)
// does not end the process, as Go's default action would, and reloads once
// levee serves. The same handler covers a SIGHUP sent the moment /readyz
// first answers (TestSignals once lost that race under load).
func TestSIGHUPDuringStartup(t *testing.T) {
	t.Parallel()
	store := postgresStore(t)
	p := tcpproxy.Start(t, "127.0.0.1:5432")
	p.Freeze()
	url := postgresURL()
	store = strings.Replace(store, url, strings.Replace(url, "127.0.0.1:5432", p.Addr(), 1), 1)
	up := newCharges(t)
	addr, admin := freePort(t), freePort(t)
	r := startProcess(t, writeConfig(t, addr, admin, store, up.url, "      required: false"), addr, admin)
	// Still starting: the store's connection waits on the frozen proxy.
	time.Sleep(500 * time.Millisecond)
	if resp, err := http.Get("http://" + admin + "/readyz"); err == nil {
		resp.Body.Close()
		t.Fatalf("levee answered /readyz (%d) with its store unreachable", resp.StatusCode)
	}
	if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-r.done:
		t.Fatalf("levee ended on a SIGHUP during start-up: %v\n%s", r.err, r.out)
	default:
	}
	p.Unfreeze()
	poll.Until(t, 20*time.Second, func() bool {
		select {
		case <-r.done:
			t.Fatalf("levee ended after start-up: %v\n%s", r.err, r.out)
		default:
		}
		m, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(m.Body)
		m.Body.Close()
		return strings.Contains(string(b), `levee_config_reloads_total{result="success"} 1`)
	}, "the SIGHUP sent during start-up was not applied as a reload once serving:\n%s", r.out)
}
