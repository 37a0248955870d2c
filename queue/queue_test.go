package queue_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/leveehq/levee/internal/fakeclock"
	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newQueue(t *testing.T, cfg queue.Config) *queue.Queue {
	t.Helper()
	b, err := sqlitequeue.Open(filepath.Join(t.TempDir(), "q.db"), sqlitequeue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	q, err := queue.New(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestBackoffCeiling(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		attempt   int
		base, max time.Duration
		want      time.Duration
	}{
		{0, time.Second, time.Minute, time.Second},
		{1, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{3, time.Second, time.Minute, 4 * time.Second},
		{6, time.Second, time.Minute, 32 * time.Second},
		{7, time.Second, time.Minute, time.Minute},
		{1000, time.Second, time.Minute, time.Minute}, // no overflow
		{63, time.Duration(1 << 62), time.Duration(1<<63 - 1), time.Duration(1<<63 - 1)},
	} {
		if got := queue.BackoffCeiling(tc.attempt, tc.base, tc.max); got != tc.want {
			t.Errorf("BackoffCeiling(%d, %v, %v) = %v, want %v", tc.attempt, tc.base, tc.max, got, tc.want)
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	t.Parallel()
	q := newQueue(t, queue.Config{})
	h := queue.HandlerFunc(func(context.Context, *queue.Delivery) error { return nil })
	for _, tc := range []struct {
		cfg  queue.WorkerConfig
		want string
	}{
		{queue.WorkerConfig{}, "Handler"},
		{queue.WorkerConfig{Handler: h, Concurrency: 2, MaxPerTarget: 3}, "MaxPerTarget"},
		{queue.WorkerConfig{Handler: h, AttemptTimeout: time.Minute, Lease: time.Second}, "Lease"},
		{queue.WorkerConfig{Handler: h, BackoffBase: -1}, "BackoffBase"},
		{queue.WorkerConfig{Handler: h, MaxAttempts: -1}, "MaxAttempts"},
	} {
		if _, err := q.NewWorker(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewWorker(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	if _, err := queue.New(nil, queue.Config{}); err == nil {
		t.Error("New(nil) did not fail")
	}
	for _, cfg := range []queue.Config{{DedupeWindow: -1}, {ReplayRate: -1}, {Name: strings.Repeat("x", 256)}} {
		if _, err := queue.New(q.Backend(), cfg); err == nil {
			t.Errorf("New(%+v) did not fail", cfg)
		}
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	if !errors.Is(&queue.HTTPError{Status: 410}, queue.ErrTargetGone) || errors.Is(&queue.HTTPError{Status: 404}, queue.ErrTargetGone) {
		t.Error("HTTPError: only 410 is ErrTargetGone")
	}
	base := errors.New("bad input")
	p := queue.Permanent(base)
	if !errors.Is(p, queue.ErrPermanent) || !errors.Is(p, base) {
		t.Error("Permanent: not ErrPermanent and the cause")
	}
	var ra *queue.RetryAfterError
	if err := queue.RetryAfter(time.Second, base); !errors.As(err, &ra) || ra.Delay != time.Second || !errors.Is(err, base) {
		t.Error("RetryAfter does not carry its delay and cause")
	}
}

// TestBackoffUsesInjectedJitter: the wait after attempt n is drawn from
// [0, BackoffBase·2^(n−1)] by the injected Jitter, and a panicking handler
// is a failed attempt like any other.
func TestBackoffUsesInjectedJitter(t *testing.T) {
	t.Parallel()
	clock := fakeclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	q := newQueue(t, queue.Config{Now: clock.Now})
	var mu sync.Mutex
	var ceilings []time.Duration
	dead := make(chan struct{})
	w, err := q.NewWorker(queue.WorkerConfig{
		MaxAttempts: 4, BackoffBase: time.Second, BackoffMax: 3 * time.Second, PollInterval: time.Millisecond,
		Jitter: func(c time.Duration) time.Duration {
			mu.Lock()
			defer mu.Unlock()
			ceilings = append(ceilings, c)
			clock.Advance(c) // the drawn wait passes at once
			return c
		},
		Handler: queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
			if d.Attempt == 4 {
				defer close(dead)
			}
			panic("boom")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Start(context.Background())
	defer w.Stop()
	res, err := q.Enqueue(context.Background(), &queue.Message{})
	if err != nil {
		t.Fatal(err)
	}
	<-dead
	var d *queue.DeadMessage
	poll.Until(t, time.Minute, func() bool {
		d, err = q.Get(context.Background(), res[0].ID)
		return err == nil
	}, "not in the DLQ: %v", err)
	mu.Lock()
	defer mu.Unlock()
	if want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}; !equal(ceilings, want) {
		t.Fatalf("backoff ceilings %v, want %v", ceilings, want)
	}
	if len(d.History) != 4 || !strings.Contains(d.History[0].Error, "panicked: boom") {
		t.Fatalf("history: %+v", d.History)
	}
}

func equal(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// dedupe is an in-memory Deduper with the contract's semantics: a claim
// per key, processed only on a nil Finish.
type dedupe struct {
	mu    sync.Mutex
	state map[string]string // "busy" | "done"
	fail  error
}

func (d *dedupe) Begin(ctx context.Context, key string) (queue.Finish, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		return nil, d.fail
	}
	switch d.state[key] {
	case "done":
		return nil, queue.ErrProcessed
	case "busy":
		return nil, queue.ErrInProgress
	case "unknown":
		return nil, queue.ErrOutcomeUnknown
	}
	d.state[key] = "busy"
	return func(ctx context.Context, herr error) error {
		d.mu.Lock()
		defer d.mu.Unlock()
		if herr != nil {
			delete(d.state, key)
		} else {
			d.state[key] = "done"
		}
		return nil
	}, nil
}

func TestIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dd := &dedupe{state: map[string]string{}}
	runs := 0
	failNext := false
	h := queue.Idempotent(dd, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
		runs++
		if failNext {
			failNext = false
			return errors.New("downstream failed")
		}
		return nil
	}))
	d := &queue.Delivery{Message: queue.Message{ID: "m1", Queue: "q"}, Attempt: 1}

	failNext = true
	if err := h.Handle(ctx, d); err == nil {
		t.Fatal("a handler failure was swallowed")
	}
	if err := h.Handle(ctx, d); err != nil || runs != 2 {
		t.Fatalf("after a failure the redelivery must run the handler: runs %d, err %v", runs, err)
	}
	if err := h.Handle(ctx, d); err != nil || runs != 2 {
		t.Fatalf("a processed message ran again: runs %d, err %v", runs, err)
	}
	// The same id on another queue is another message.
	if err := h.Handle(ctx, &queue.Delivery{Message: queue.Message{ID: "m1", Queue: "other"}}); err != nil || runs != 3 {
		t.Fatalf("other queue: runs %d, err %v", runs, err)
	}
	// Held by another consumer: deferred (not an attempt here), not run.
	dd.state["q/m2"] = "busy"
	var de *queue.DeferError
	if err := h.Handle(ctx, &queue.Delivery{Message: queue.Message{ID: "m2", Queue: "q"}}); !errors.As(err, &de) || de.Delay != queue.InProgressDelay || !errors.Is(err, queue.ErrInProgress) || runs != 3 {
		t.Fatalf("in progress elsewhere: %v, runs %d", err, runs)
	}
	// An unknown earlier outcome: never run again, straight to the DLQ.
	dd.state["q/m4"] = "unknown"
	if err := h.Handle(ctx, &queue.Delivery{Message: queue.Message{ID: "m4", Queue: "q"}}); !errors.Is(err, queue.ErrPermanent) || runs != 3 {
		t.Fatalf("unknown outcome: %v, runs %d", err, runs)
	}
	// The store failing: the delivery fails, the handler does not run.
	dd.fail = errors.New("store down")
	if err := h.Handle(ctx, &queue.Delivery{Message: queue.Message{ID: "m3", Queue: "q"}}); !errors.Is(err, dd.fail) || runs != 3 {
		t.Fatalf("store down: %v, runs %d", err, runs)
	}
}

// TestIdempotentTwiceInOneBatch: the same message id enqueued twice in one
// call and again after delivery reaches an idempotent handler once.
func TestIdempotentTwiceInOneBatch(t *testing.T) {
	t.Parallel()
	q := newQueue(t, queue.Config{})
	dd := &dedupe{state: map[string]string{}}
	var mu sync.Mutex
	runs := map[string]int{}
	got := make(chan string, 10)
	w, err := q.NewWorker(queue.WorkerConfig{PollInterval: time.Millisecond, Handler: queue.Idempotent(dd, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) error {
		mu.Lock()
		runs[d.ID]++
		mu.Unlock()
		got <- d.ID
		return nil
	}))})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Start(context.Background())
	defer w.Stop()
	res, err := q.Enqueue(context.Background(), &queue.Message{ID: "evt"}, &queue.Message{ID: "evt"})
	if err != nil || res[0].Duplicate || !res[1].Duplicate {
		t.Fatalf("Enqueue: %+v, %v", res, err)
	}
	<-got
	// Delivered again after it was acknowledged (a producer's late retry).
	if _, err := q.Enqueue(context.Background(), &queue.Message{ID: "evt", Headers: http.Header{"X": {"2"}}}, &queue.Message{ID: "other"}); err != nil {
		t.Fatal(err)
	}
	if id := <-got; id != "other" {
		t.Fatalf("delivered %q, want only other", id)
	}
	w.Stop()
	mu.Lock()
	defer mu.Unlock()
	if runs["evt"] != 1 || runs["other"] != 1 {
		t.Fatalf("runs %v, want each once", runs)
	}
}

// TestNewIDSortsByTime: ids are 32 hex digits, unique, and one made in a
// later millisecond sorts after (the backends' id index appends).
func TestNewIDSortsByTime(t *testing.T) {
	seen := map[string]bool{}
	prev := queue.NewID()
	for range 1000 {
		id := queue.NewID()
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("NewID() = %q, want 32 lowercase hex digits", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
		prev = id
	}
	time.Sleep(2 * time.Millisecond)
	if later := queue.NewID(); later <= prev {
		t.Fatalf("an id made 2ms later (%s) does not sort after %s", later, prev)
	}
	ms, err := strconv.ParseInt(prev[:12], 16, 64)
	if err != nil || time.Since(time.UnixMilli(ms)) > time.Minute || time.Since(time.UnixMilli(ms)) < 0 {
		t.Fatalf("the id's first 12 digits %q are not the current Unix time in ms: %d, %v", prev[:12], ms, err)
	}
}
