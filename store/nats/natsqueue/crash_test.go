package natsqueue_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/nats/natsqueue"
)

// The child process of TestKill9: it opens the queue on the prefix,
// delivers every message by POSTing its id to the receiver, and enqueues
// the messages [from, to), printing "accepted <id>" once Enqueue returned
// for it. It exits by itself after childLife if nobody kills it.
const (
	childEnv  = "LEVEE_NATSQUEUE_CRASH_CHILD" // the prefix
	recvEnv   = "LEVEE_NATSQUEUE_CRASH_RECEIVER"
	rangeEnv  = "LEVEE_NATSQUEUE_CRASH_RANGE" // "from-to"
	childLife = 3 * time.Minute
)

func TestCrashChild(t *testing.T) {
	prefix := os.Getenv(childEnv)
	if prefix == "" {
		t.Skip("the child process of TestKill9")
	}
	b, err := natsqueue.New(context.Background(), connect(t), natsqueue.Options{Prefix: prefix, AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(b, queue.Config{Name: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	url := os.Getenv(recvEnv)
	client := &http.Client{}
	w, err := q.NewWorker(queue.WorkerConfig{
		Concurrency: 8, MaxPerTarget: 8, AttemptTimeout: time.Second, Lease: 2 * time.Second,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, MaxAttempts: 1000, PollInterval: 20 * time.Millisecond,
		Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(d.ID)))
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return &queue.HTTPError{Status: resp.StatusCode}
			}
			return nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Start(context.Background())
	var from, to int
	if _, err := fmt.Sscanf(os.Getenv(rangeEnv), "%d-%d", &from, &to); err != nil {
		t.Fatal(err)
	}
	for i := from; i < to; i += 10 {
		var batch []*queue.Message
		for j := i; j < min(i+10, to); j++ {
			batch = append(batch, &queue.Message{ID: "m-" + strconv.Itoa(j), Target: "t" + strconv.Itoa(j%3)})
		}
		if _, err := q.Enqueue(context.Background(), batch...); err != nil {
			t.Fatal(err)
		}
		for _, m := range batch {
			fmt.Println("accepted", m.ID)
		}
	}
	fmt.Println("enqueued all")
	time.Sleep(childLife) // delivered until killed (bounded)
	w.Stop()
}

// crashReceiver is the idempotent HTTP receiver: it counts every delivery.
type crashReceiver struct {
	mu         sync.Mutex
	deliveries map[string]int
}

func (r *crashReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	id, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.deliveries[string(id)]++
	r.mu.Unlock()
}

func (r *crashReceiver) missing(ids []string) (n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		if r.deliveries[id] == 0 {
			n++
		}
	}
	return n
}

// TestKill9 SIGKILLs the process enqueueing to and delivering from
// JetStream halfway, starts another on the same prefix, and checks that
// every message whose Enqueue returned is delivered (none lost), with
// duplicates bounded by what was in flight at the kill (8).
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	b := newBackend(t, natsqueue.Options{}) // creates the prefix, deletes it at the end
	prefix := b.Prefix()
	rcv := &crashReceiver{deliveries: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rcv}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	var accepted []string
	run := func(from, to int, killAfter int) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), childEnv+"="+prefix, recvEnv+"=http://"+ln.Addr().String()+"/", rangeEnv+fmt.Sprintf("=%d-%d", from, to))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		n := 0
		for sc.Scan() {
			line := sc.Text()
			if id, ok := strings.CutPrefix(line, "accepted "); ok {
				accepted = append(accepted, id)
				if n++; n == killAfter {
					break
				}
			}
			if line == "enqueued all" {
				break
			}
		}
		go func() { _, _ = io.Copy(io.Discard, out) }()
		return cmd
	}
	stop := func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill() // SIGKILL: no deferred code, no clean-up
		_ = cmd.Wait()
	}

	n := 3000
	if raceEnabled {
		n = 800
	}
	first := run(0, n, n/2) // killed while enqueueing and delivering
	stop(first)
	second := run(n, n+n/3, 0) // another process on the same prefix
	defer stop(second)
	poll.Until(t, 2*time.Minute, func() bool { return rcv.missing(accepted) == 0 }, "%d of %d accepted messages never delivered", rcv.missing(accepted), len(accepted))

	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	dups := 0
	for _, id := range accepted {
		dups += rcv.deliveries[id] - 1
	}
	if dups > 8 {
		t.Fatalf("%d duplicate deliveries, more than the 8 that can be in flight at a kill", dups)
	}
	t.Logf("%d accepted, all delivered; %d duplicate deliveries after the kill", len(accepted), dups)
}
