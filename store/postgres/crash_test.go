package postgres_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/postgres"
)

// crashChildEnv, when set to a schema name, makes the test binary run
// crashChild instead of the tests.
const crashChildEnv = "LEVEE_POSTGRES_CRASH_CHILD"

func TestMain(m *testing.M) {
	if schema := os.Getenv(crashChildEnv); schema != "" {
		crashChild(schema) // never returns: the parent kills it
	}
	os.Exit(m.Run())
}

// crashChild runs new requests from 20 goroutines on the store in schema
// until it is killed, printing "done <key>" once Do has returned the
// result (the moment a gateway would answer 2xx).
func crashChild(schema string) {
	pool, err := pgxpool.New(context.Background(), databaseURL())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := postgres.New(pool, postgres.Options{Schema: schema})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	e := idempotency.New(s, idempotency.Options{})
	var (
		mu  sync.Mutex
		out = bufio.NewWriter(os.Stdout)
		n   atomic.Int64
	)
	for range 20 {
		go func() {
			for {
				key := fmt.Sprint("k", n.Add(1))
				_, err := e.Do(context.Background(), key, idempotency.FingerprintOf([]byte(key)),
					func(context.Context) ([]byte, error) { return []byte("result-" + key), nil })
				if err != nil {
					continue
				}
				mu.Lock()
				fmt.Fprintln(out, "done", key)
				_ = out.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestKill9UnderLoad kills (SIGKILL) a gateway-like process in the middle
// of a stream of concurrent new requests (group commit batching them):
// every request whose result it had returned is replayed afterwards with
// that result, and none runs again.
func TestKill9UnderLoad(t *testing.T) {
	t.Parallel()
	schema, s := migrated(t, pgx.QueryExecModeCacheStatement, 4)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+schema)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var done []string
	sc := bufio.NewScanner(stdout)
	deadline := time.Now().Add(20 * time.Second) // a bound on the test, not a speed assertion
	for len(done) < 300 && time.Now().Before(deadline) && sc.Scan() {
		if k, ok := strings.CutPrefix(sc.Text(), "done "); ok {
			done = append(done, k)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for sc.Scan() {
		if k, ok := strings.CutPrefix(sc.Text(), "done "); ok {
			done = append(done, k)
		}
	}
	_ = cmd.Wait()
	if len(done) < 50 {
		t.Fatalf("the child completed only %d requests before the kill", len(done))
	}
	e := idempotency.New(s, idempotency.Options{})
	for _, key := range done {
		res, err := e.Do(context.Background(), key, idempotency.FingerprintOf([]byte(key)), func(context.Context) ([]byte, error) {
			t.Errorf("%s ran again after the crash", key)
			return nil, nil
		})
		if err != nil || !res.Replayed || string(res.Value) != "result-"+key {
			t.Fatalf("%s after the crash = %+v, %v; want its result replayed", key, res, err)
		}
	}
	t.Logf("%d requests answered before the kill, all replayed after it", len(done))
}
