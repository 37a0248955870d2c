package resilience

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"
)

// AttemptFunc performs one attempt of c: it sends the request (with c.Key
// in the idempotency header when c.Key is set, and the body replayed from
// its start) and returns the response or the error. It must honour ctx,
// and c.Deadline() as well when c.EnforcesDeadline is set. The response
// body belongs to the caller of Executor.Do.
type AttemptFunc func(ctx context.Context, c *Call) (*http.Response, error)

// Call describes one logical call: one or more attempts of the same
// request. The caller fills the exported fields; the executor keeps the
// rest. A Call is never shared by concurrent Do calls; after Do returns
// it may be reset (*c = Call{...}) and used for another call, never
// reused as is (AutoKey's Key would go with it).
type Call struct {
	// Method is the request's method; "" means GET.
	Method string
	// Target identifies the resource for the stale-if-error cache (the
	// request URL, say). "" keeps the call out of that cache.
	Target string
	// Key is the idempotency key the request carries, "" if none. With
	// RetrySettings.AutoKey the executor sets one for unsafe methods; the
	// same key then goes on every attempt.
	Key string
	// Replayable reports that Send can send the request body again, byte
	// for byte (no body, GetBody, or a buffered body). A call that is not
	// replayable is attempted once.
	Replayable bool
	// GetBody, if set, returns a new copy of the request body, byte for
	// byte (Transport sets it for replayable bodies). Sends that re-send
	// the request elsewhere (RoundTripTo, a secondary, a policy that
	// accepts the call for later delivery) read the body through it.
	GetBody func() (io.ReadCloser, error)
	// EnforcesDeadline reports that Send applies Deadline() itself (for
	// example with conn.SetDeadline, as levee's HTTP/1.1 client does);
	// then no per-attempt context is derived, which saves its
	// allocations. When false, each attempt's ctx carries the deadline.
	EnforcesDeadline bool
	// Send performs one attempt. Required.
	Send AttemptFunc
	// Request is the original request when the call came through
	// Transport; nil otherwise. Policies may read it (a secondary
	// upstream re-sends it), never modify it.
	Request *http.Request

	tc              *transportCall // set by Transport: its Send's state
	attempt         int
	deadline        time.Time // overall; zero: none
	ctxDeadline     bool      // deadline is the caller's context's
	attemptDeadline time.Time // this attempt's; zero: none
	start           time.Time
}

// Attempt returns the attempt under way: 0 for the first, n for the
// n-th resend (OpenTelemetry's http.request.resend_count).
func (c *Call) Attempt() int { return c.attempt }

// Deadline returns the deadline of the attempt under way: the earlier of
// the per-attempt timeout and the call's overall deadline (and the
// caller's context's deadline), on the executor's Clock. Zero means
// none.
func (c *Call) Deadline() time.Time {
	if c.attemptDeadline.IsZero() {
		return c.deadline
	}
	return c.attemptDeadline
}

// method returns the method with "" as GET.
func (c *Call) method() string {
	if c.Method == "" {
		return http.MethodGet
	}
	return c.Method
}

// Handler runs a call, or the part of it inside a policy.
type Handler func(ctx context.Context, c *Call) (*http.Response, error)

// Env is what an Executor gives every policy it wraps.
type Env struct {
	// Upstream names the upstream in errors, events and metrics.
	// Default "default".
	Upstream string
	// Clock is the time source. Default SystemClock().
	Clock Clock
	// Observer receives attempts and events. Nil observes nothing.
	Observer Observer
	// Timeout bounds the whole call, every attempt and wait included
	// (the caller's context may end it earlier). Zero or negative: no
	// bound beyond the caller's context.
	Timeout time.Duration
}

// Policy is one link of a chain: it wraps the handler that runs the rest
// of the chain. Policies before the retry policy in a chain run once per
// call; those after it run once per attempt.
type Policy interface {
	// Wrap returns a handler that applies the policy around next. It is
	// called once, when the executor is built.
	Wrap(env Env, next Handler) Handler
}

// PolicyFunc adapts a function to Policy.
type PolicyFunc func(env Env, next Handler) Handler

// Wrap calls f.
func (f PolicyFunc) Wrap(env Env, next Handler) Handler { return f(env, next) }

// Executor runs calls through a policy chain. It is safe for concurrent
// use; its policies hold the per-upstream state (breaker, budget,
// bulkhead).
type Executor struct {
	env         Env
	h           Handler
	keyHeader   string
	parts       Parts
	needsTarget bool
}

// NewExecutor returns an executor running policies in the given order,
// outermost first: policies[0] sees the whole call, the last one sees
// each attempt just before Send. New builds the documented standard
// order from Settings; NewExecutor is for custom chains.
func NewExecutor(env Env, policies ...Policy) *Executor {
	if env.Upstream == "" {
		env.Upstream = "default"
	}
	if env.Clock == nil {
		env.Clock = SystemClock()
	}
	var h Handler = func(ctx context.Context, c *Call) (*http.Response, error) { return c.Send(ctx, c) }
	if env.Observer != nil {
		h = observe(env, h)
	}
	for i := len(policies) - 1; i >= 0; i-- {
		h = policies[i].Wrap(env, h)
	}
	return &Executor{env: env, h: h, keyHeader: DefaultKeyHeader}
}

// Upstream returns the executor's upstream name.
func (e *Executor) Upstream() string { return e.env.Upstream }

// KeyHeader returns the idempotency header name the executor's attempts
// should carry Call.Key in.
func (e *Executor) KeyHeader() string { return e.keyHeader }

// errNoSend is returned by Do for a Call without Send.
var errNoSend = errors.New("resilience: Call.Send is nil")

// Do runs c through the chain and returns the final response (whose body
// the caller must close) or an error: the caller's context error
// (wrapped) when ctx ended first, one of the package's typed errors when
// a policy decided, else the last attempt's error. A response is never
// returned together with an error.
func (e *Executor) Do(ctx context.Context, c *Call) (*http.Response, error) {
	if c.Send == nil {
		return nil, errNoSend
	}
	c.attempt = 0
	c.start = e.env.Clock.Now()
	c.deadline, c.ctxDeadline = time.Time{}, false
	if e.env.Timeout > 0 {
		c.deadline = c.start.Add(e.env.Timeout)
	}
	if d, ok := ctx.Deadline(); ok {
		// In the clock's time: an injected clock need not read wall time.
		if d = c.start.Add(time.Until(d)); c.deadline.IsZero() || d.Before(c.deadline) {
			c.deadline, c.ctxDeadline = d, true
		}
	}
	c.attemptDeadline = time.Time{}
	return e.h(ctx, c)
}

// AttemptTimeout returns the policy that bounds each attempt by d (and by
// the call's overall deadline): unless Call.EnforcesDeadline, the
// attempt's context gets the deadline, kept until the response body is
// closed, so it bounds reading the body too. An attempt that fails after
// its own deadline passed while the caller's context was live returns
// *AttemptTimeoutError, which the retry policy may retry. d <= 0 applies
// only the overall deadline. Place it after the retry policy.
func AttemptTimeout(d time.Duration) Policy {
	return PolicyFunc(func(env Env, next Handler) Handler {
		_, sysClock := env.Clock.(systemClock)
		return func(ctx context.Context, c *Call) (*http.Response, error) {
			c.attemptDeadline = c.deadline
			now := c.start // the first attempt starts with the call: spare a clock read
			if c.attempt > 0 {
				now = env.Clock.Now()
			}
			if d > 0 {
				if ad := now.Add(d); c.deadline.IsZero() || ad.Before(c.deadline) {
					c.attemptDeadline = ad
				}
			}
			dl := c.attemptDeadline
			if dl.IsZero() {
				return next(ctx, c)
			}
			if c.EnforcesDeadline || (c.ctxDeadline && dl.Equal(c.deadline)) {
				// The Send applies dl itself, or the caller's context
				// already ends at dl: no context to derive.
				resp, err := next(ctx, c)
				return resp, attemptTimeoutErr(ctx, env, c, d, dl, err)
			}
			// A timeout, not a deadline: dl is in the clock's time, the
			// context runs on wall time (the same, on the system clock).
			dur, wall := dl.Sub(now), dl
			if !sysClock {
				wall = time.Now().Add(dur)
			}
			var actx *attemptCtx
			if tc := c.tc; tc != nil && !tc.ctxUsed {
				tc.ctxUsed, actx = true, &tc.actx // a Transport call's first attempt: no allocation
			} else {
				actx = new(attemptCtx)
			}
			actx.start(ctx, wall, dur)
			resp, err := next(actx, c)
			if err != nil || resp == nil {
				actx.release()
				return resp, attemptTimeoutErr(ctx, env, c, d, dl, err)
			}
			resp.Body = actx.wrap(resp.Body)
			return resp, nil
		}
	})
}

// attemptTimeoutErr turns err into *AttemptTimeoutError when it came
// after the attempt's own deadline (not the overall one) with the
// caller's ctx live.
func attemptTimeoutErr(ctx context.Context, env Env, c *Call, d time.Duration, dl time.Time, err error) error {
	if err == nil || ctx.Err() != nil || (!c.deadline.IsZero() && !dl.Before(c.deadline)) {
		return err
	}
	if env.Clock.Now().Before(dl) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &AttemptTimeoutError{Timeout: d, Err: err}
}

// cancelBody is a response body whose Close also calls cancel (a 101
// Switching Protocols body, through cancelRWBody; attemptCtx.wrap).
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

type cancelRWBody struct {
	cancelBody
	rw io.ReadWriteCloser
}

func (b *cancelRWBody) Write(p []byte) (int, error) { return b.rw.Write(p) }

// drain reads at most 4 KiB of resp's body, so the connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	if resp == nil || resp.Body == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	_ = resp.Body.Close()
}
