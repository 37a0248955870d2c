package sqlite_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/sqlite"
)

// crashChildEnv, when set to a database path, makes the test binary run
// crashChild instead of the tests.
const crashChildEnv = "LEVEE_SQLITE_CRASH_CHILD"

// crashChild runs new requests from 20 goroutines on the database at path
// until it is killed, printing "done <key>" once Do has returned the
// result (the moment a gateway would answer 2xx).
func crashChild(path string) {
	s, err := sqlite.Open(path, sqlite.Options{})
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

// TestKill9UnderLoad kills (SIGKILL) a process in the middle of a stream of
// concurrent new requests on a file, then opens the file again: every
// request whose result the killed process had returned is replayed with
// that result, and none runs again.
func TestKill9UnderLoad(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
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
	for sc.Scan() { // lines written before the kill
		if k, ok := strings.CutPrefix(sc.Text(), "done "); ok {
			done = append(done, k)
		}
	}
	_ = cmd.Wait()
	if len(done) < 50 {
		t.Fatalf("the child completed only %d requests before the kill", len(done))
	}
	s := open(t, path, sqlite.Options{})
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
