package resilience

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// attemptCtx is one attempt's context when Send does not enforce the
// deadline itself: the caller's context (parent) with the attempt's
// deadline. It replaces context.WithTimeout, which costs four
// allocations (the context, its timer, the timer's function and the
// cancel function) plus the response body wrapper that releases it: an
// attemptCtx is one allocation with the body wrapper inside — none for
// a Transport call's first attempt, which lives in the call's state —
// and its timer comes from a pool. It implements AfterFunc, so that the
// context net/http's Transport derives from it on every RoundTrip
// registers a callback instead of starting a goroutine (context's
// propagateCancel).
//
// Err reports context.DeadlineExceeded after the deadline and the
// parent's error after the parent ends, as a WithTimeout context does.
// One difference: context.Cause(actx) returns the cause recorded by the
// nearest standard cancelable context among its parents (context finds
// it through Value), which is nil while only the attempt's deadline has
// passed; contexts derived from it (net/http's) get DeadlineExceeded.
type attemptCtx struct {
	parent     context.Context
	deadline   time.Time
	timer      *attemptTimer // nil once released
	stopParent func() bool   // nil: the parent is never canceled

	mu     sync.Mutex
	done   chan struct{} // made on first Done, or closedChan
	err    error
	nextID uint64
	funcs  []afterEntry
	buf    [2]afterEntry // funcs' first backing array

	body attemptBody // the response body wrapper that releases the context
}

type afterEntry struct {
	id uint64
	f  func()
}

// closedChan is the Done of an attemptCtx canceled before anyone asked.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// attemptTimer is a pooled time.AfterFunc timer that cancels the
// attemptCtx it is armed for.
type attemptTimer struct {
	t *time.Timer
	c atomic.Pointer[attemptCtx]
}

// attemptTimers holds stopped attemptTimers (no New: getTimer makes
// one, which keeps the pool out of an initialization cycle).
var attemptTimers sync.Pool

func getTimer() *attemptTimer {
	if at, ok := attemptTimers.Get().(*attemptTimer); ok {
		return at
	}
	at := &attemptTimer{}
	at.t = time.AfterFunc(time.Hour, at.fire)
	at.t.Stop()
	return at
}

func (at *attemptTimer) fire() {
	if c := at.c.Load(); c != nil {
		c.cancel(context.DeadlineExceeded)
	}
}

// start makes c the context of an attempt under parent that ends after
// d, at deadline (the wall time reported by Deadline).
func (c *attemptCtx) start(parent context.Context, deadline time.Time, d time.Duration) {
	c.parent, c.deadline = parent, deadline
	c.funcs = c.buf[:0]
	if pd := parent.Done(); pd != nil {
		select {
		case <-pd:
			c.cancel(parent.Err())
			return
		default:
		}
		stop := context.AfterFunc(parent, c.parentDone)
		c.mu.Lock()
		if c.err != nil { // the parent ended meanwhile
			c.mu.Unlock()
			return
		}
		c.stopParent = stop
		c.mu.Unlock()
	}
	if d <= 0 {
		c.cancel(context.DeadlineExceeded)
		return
	}
	at := getTimer()
	at.c.Store(c)
	c.mu.Lock()
	if c.err != nil { // the parent ended meanwhile
		c.mu.Unlock()
		at.c.Store(nil)
		attemptTimers.Put(at)
		return
	}
	c.timer = at
	at.t.Reset(d) // under mu: cancel never sees the timer unarmed
	c.mu.Unlock()
}

func (c *attemptCtx) parentDone() { c.cancel(c.parent.Err()) }

// cancel ends c with err (the first call wins), releases its timer and
// its hold on the parent, and runs the AfterFunc functions.
func (c *attemptCtx) cancel(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	if c.done == nil {
		c.done = closedChan
	} else {
		close(c.done)
	}
	funcs := c.funcs
	c.funcs = nil
	at := c.timer
	c.timer = nil
	stop := c.stopParent
	c.mu.Unlock()
	if at != nil && at.t.Stop() {
		// Stopped before it fired: its function will not run, so the
		// timer can serve another attempt.
		at.c.Store(nil)
		attemptTimers.Put(at)
	}
	if stop != nil {
		stop()
	}
	for _, e := range funcs {
		go e.f()
	}
}

// release ends the attempt (context.Canceled unless it ended already).
func (c *attemptCtx) release() { c.cancel(context.Canceled) }

// Deadline implements context.Context.
func (c *attemptCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Done implements context.Context.
func (c *attemptCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
	}
	return c.done
}

// Err implements context.Context.
func (c *attemptCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Value implements context.Context: the parent's values.
func (c *attemptCtx) Value(key any) any { return c.parent.Value(key) }

// String names the context in debugging output, as context's own do.
func (c *attemptCtx) String() string { return "resilience.attemptCtx" }

// AfterFunc arranges for f to run in its own goroutine once c is done
// (at once if it is), as context.AfterFunc; stop unregisters f and
// reports whether it did so before f was started. Contexts derived from
// c with the context package use it instead of a goroutine each.
func (c *attemptCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.nextID++
	id := c.nextID
	c.funcs = append(c.funcs, afterEntry{id: id, f: f})
	c.mu.Unlock()
	return func() bool { return c.unregister(id) }
}

func (c *attemptCtx) unregister(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, e := range c.funcs {
		if e.id == id {
			c.funcs = append(c.funcs[:i], c.funcs[i+1:]...)
			return true
		}
	}
	return false
}

// wrap returns body with Close also releasing c (the response is done
// with its context). A nil body releases c at once and stays nil.
func (c *attemptCtx) wrap(body io.ReadCloser) io.ReadCloser {
	if body == nil {
		c.release()
		return nil
	}
	if rw, ok := body.(io.ReadWriteCloser); ok { // a 101 Switching Protocols body
		return &cancelRWBody{cancelBody{body, c.release}, rw}
	}
	c.body = attemptBody{rc: body, c: c}
	return &c.body
}

// attemptBody is a response body whose Close releases its attempt's
// context.
type attemptBody struct {
	rc io.ReadCloser
	c  *attemptCtx
}

func (b *attemptBody) Read(p []byte) (int, error) { return b.rc.Read(p) }

func (b *attemptBody) Close() error {
	err := b.rc.Close()
	b.c.release()
	return err
}
