package resilience

import (
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

func waitDone(t *testing.T, ctx context.Context, within time.Duration) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(within):
		t.Fatalf("not done within %v", within)
	}
}

// The deadline ends the context with DeadlineExceeded; Deadline reports
// it; a context derived by the context package (as net/http derives
// one per RoundTrip) ends with it too, through AfterFunc.
func TestAttemptCtxDeadline(t *testing.T) {
	c := new(attemptCtx)
	dl := time.Now().Add(30 * time.Millisecond)
	c.start(context.Background(), dl, 30*time.Millisecond)
	if got, ok := c.Deadline(); !ok || !got.Equal(dl) {
		t.Fatalf("Deadline = %v %v, want %v", got, ok, dl)
	}
	child, cancel := context.WithCancel(c)
	defer cancel()
	if c.Err() != nil {
		t.Fatalf("Err before the deadline: %v", c.Err())
	}
	waitDone(t, c, 2*time.Second)
	if !errors.Is(c.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded", c.Err())
	}
	waitDone(t, child, 2*time.Second)
	if !errors.Is(child.Err(), context.DeadlineExceeded) || !errors.Is(context.Cause(child), context.DeadlineExceeded) {
		t.Fatalf("child Err = %v, Cause = %v", child.Err(), context.Cause(child))
	}
}

// The caller's context wins: canceling the parent ends the attempt's
// context with the parent's error, and one already canceled ends it at
// once; values come from the parent.
func TestAttemptCtxParent(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	c := new(attemptCtx)
	c.start(parent, time.Now().Add(time.Hour), time.Hour)
	if c.Value(key{}) != "v" {
		t.Fatalf("Value = %v", c.Value(key{}))
	}
	cancel()
	waitDone(t, c, 2*time.Second)
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want Canceled", c.Err())
	}
	c2 := new(attemptCtx)
	c2.start(parent, time.Now().Add(time.Hour), time.Hour)
	if !errors.Is(c2.Err(), context.Canceled) {
		t.Fatalf("started under a canceled parent: Err = %v", c2.Err())
	}
}

// Contexts derived from an attemptCtx start no goroutine (AfterFunc),
// their stop unregisters them, and release runs the ones still
// registered.
func TestAttemptCtxAfterFunc(t *testing.T) {
	c := new(attemptCtx)
	c.start(context.Background(), time.Now().Add(time.Hour), time.Hour)
	before := runtime.NumGoroutine()
	var children []context.Context
	var cancels []context.CancelFunc
	for i := 0; i < 50; i++ {
		ctx, cancel := context.WithCancel(c)
		children, cancels = append(children, ctx), append(cancels, cancel)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines after deriving 50 contexts, %d before", n, before)
	}
	for _, cancel := range cancels[:25] {
		cancel() // stop: unregistered
	}
	c.mu.Lock()
	registered := len(c.funcs)
	c.mu.Unlock()
	if registered != 25 {
		t.Fatalf("%d functions registered after 25 stops, want 25", registered)
	}
	ran := make(chan struct{})
	stop := c.AfterFunc(func() { close(ran) })
	c.release()
	for _, ctx := range children[25:] {
		waitDone(t, ctx, 2*time.Second)
	}
	<-ran
	if stop() {
		t.Fatal("stop after the function ran reported true")
	}
	done := make(chan struct{})
	c.AfterFunc(func() { close(done) }) // already done: runs at once
	<-done
}

// Pooled timers never fire for a context they no longer serve: a
// released context's timer serves the next one, which ends at its own
// deadline, not earlier.
func TestAttemptCtxTimerReuse(t *testing.T) {
	for i := 0; i < 100; i++ {
		c := new(attemptCtx)
		c.start(context.Background(), time.Now().Add(time.Millisecond), time.Millisecond)
		if i%2 == 0 {
			c.release()
		} else {
			waitDone(t, c, 2*time.Second)
		}
	}
	long := new(attemptCtx)
	long.start(context.Background(), time.Now().Add(time.Hour), time.Hour)
	time.Sleep(20 * time.Millisecond)
	if err := long.Err(); err != nil {
		t.Fatalf("a context with an hour to go ended: %v", err)
	}
	long.release()
	if !errors.Is(long.Err(), context.Canceled) {
		t.Fatalf("released: Err = %v", long.Err())
	}
}

type closeCounter struct {
	io.Reader
	closed int
}

func (c *closeCounter) Close() error { c.closed++; return nil }

// The wrapped body releases the context on Close; a nil body releases
// it at once.
func TestAttemptCtxBody(t *testing.T) {
	c := new(attemptCtx)
	c.start(context.Background(), time.Now().Add(time.Hour), time.Hour)
	rc := &closeCounter{Reader: strings.NewReader("x")}
	b := c.wrap(rc)
	if c.Err() != nil {
		t.Fatal("released before Close")
	}
	if got, _ := io.ReadAll(b); string(got) != "x" {
		t.Fatalf("body %q", got)
	}
	_ = b.Close()
	if rc.closed != 1 || !errors.Is(c.Err(), context.Canceled) {
		t.Fatalf("after Close: closed %d, Err %v", rc.closed, c.Err())
	}
	c2 := new(attemptCtx)
	c2.start(context.Background(), time.Now().Add(time.Hour), time.Hour)
	if c2.wrap(nil) != nil || c2.Err() == nil {
		t.Fatal("a nil body did not release the context")
	}
}
