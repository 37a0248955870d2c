// Package chaos injects HTTP-aware faults: latency with jitter, error
// statuses with Retry-After, 429 storms, hangs, connection resets before,
// during and after the response, truncated and slow bodies, and duplicate
// delivery (the same request forwarded twice). Faults apply per method
// and path, by probability or by a request header, on a schedule; every
// random draw comes from a seed, so a run is reproducible; every injected
// fault is logged and counted.
//
// Injector decides. Transport applies the faults to an
// http.RoundTripper (for Go tests of a client); Proxy applies them as a
// reverse proxy in front of any upstream, where resets are real TCP
// resets (levee chaos). Proxy.Control is an HTTP API that reads and
// replaces the faults at runtime.
package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrInjected is wrapped by every error a fault produces (*FaultError).
var ErrInjected = errors.New("chaos: injected fault")

// FaultError is the error of an injected hang, reset or cut body.
type FaultError struct {
	// Fault is the fault's name.
	Fault string
	// Kind is "hang", "reset-before", "reset-during", "reset-after" or
	// "truncate".
	Kind string
}

// Error names the fault and its kind.
func (e *FaultError) Error() string { return "chaos: injected " + e.Kind + " (fault " + e.Fault + ")" }

// Unwrap makes every FaultError match ErrInjected.
func (e *FaultError) Unwrap() error { return ErrInjected }

// Options configures an Injector. The zero value is usable.
type Options struct {
	// Logger receives one INFO record per injected fault; default
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock for schedules; default time.Now.
	Now func() time.Time
	// MaxBody bounds the request body buffered for duplicate delivery;
	// default 10 MiB. A larger body is delivered once, unduplicated.
	MaxBody int64
}

// Injector decides, for each request, which fault applies. It is safe
// for concurrent use; SetConfig replaces the plan atomically.
type Injector struct {
	opts   Options
	plan   atomic.Pointer[plan]
	seq    atomic.Uint64
	mu     sync.Mutex
	counts map[string]int64
}

type plan struct {
	cfg   Config
	start time.Time
}

// NewInjector returns an Injector for cfg (nil: no faults); the schedule
// starts now. The error wraps ErrConfig for an invalid cfg.
func NewInjector(cfg *Config, opts Options) (*Injector, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBody == 0 {
		opts.MaxBody = 10 << 20
	}
	in := &Injector{opts: opts, counts: map[string]int64{}}
	if cfg == nil {
		cfg = &Config{}
	}
	if err := in.SetConfig(cfg); err != nil {
		return nil, err
	}
	return in, nil
}

// SetConfig validates cfg and makes it the plan; its schedule restarts
// now. On error the plan in force is kept.
func (in *Injector) SetConfig(cfg *Config) error {
	c := *cfg
	c.Faults = append([]Fault(nil), cfg.Faults...)
	c.Defaults()
	if err := c.validate(); err != nil {
		return err
	}
	in.plan.Store(&plan{cfg: c, start: in.opts.Now()})
	return nil
}

// Config returns a copy of the plan in force.
func (in *Injector) Config() Config {
	c := in.plan.Load().cfg
	c.Faults = append([]Fault(nil), c.Faults...)
	return c
}

// Counts returns how many times each fault was injected, and "requests"
// for the number of requests seen.
func (in *Injector) Counts() map[string]int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make(map[string]int64, len(in.counts)+1)
	for k, v := range in.counts {
		out[k] = v
	}
	out["requests"] = int64(in.seq.Load())
	return out
}

// Decision is what the Injector chose for one request.
type Decision struct {
	// Seq numbers the request (1 for the first the Injector saw).
	Seq uint64
	// Fault is the fault that fired; nil for none.
	Fault *Fault
	// Delay is Latency plus the drawn jitter.
	Delay time.Duration
}

// Decide draws the fault for r, counts and logs it, and removes a
// matching trigger header from r. The n-th call under a given seed and
// plan makes the same draws.
func (in *Injector) Decide(r *http.Request) Decision {
	p := in.plan.Load()
	seq := in.seq.Add(1)
	d := Decision{Seq: seq}
	elapsed := in.opts.Now().Sub(p.start)
	for i := range p.cfg.Faults {
		f := &p.cfg.Faults[i]
		if !f.Match.matches(r) || elapsed < f.From.D() || (f.Until != 0 && elapsed >= f.Until.D()) {
			continue
		}
		if f.Header != "" && !headerTriggers(r.Header, f.Header) {
			continue
		}
		if f.Probability != nil && draw(p.cfg.Seed, seq, uint64(i), 0) >= *f.Probability {
			continue
		}
		if f.Header != "" {
			name, _, _ := strings.Cut(f.Header, ":")
			r.Header.Del(strings.TrimSpace(name))
		}
		d.Fault = f
		d.Delay = f.Latency.D()
		if f.Jitter > 0 {
			d.Delay += time.Duration(draw(p.cfg.Seed, seq, uint64(i), 1) * float64(f.Jitter))
		}
		in.mu.Lock()
		in.counts[f.Name]++
		in.mu.Unlock()
		in.opts.Logger.Info("chaos fault", "fault", f.Name, "effect", f.effect(), "seq", seq,
			"method", r.Method, "path", r.URL.Path, "delay_ms", d.Delay.Milliseconds())
		return d
	}
	return d
}

// effect summarises what f does, for logs.
func (f *Fault) effect() string {
	var parts []string
	if f.Latency > 0 || f.Jitter > 0 {
		parts = append(parts, "latency")
	}
	switch {
	case f.Status != 0:
		parts = append(parts, "status "+strconv.Itoa(f.Status))
	case f.Hang != 0:
		parts = append(parts, "hang")
	}
	if f.Reset != "" {
		parts = append(parts, "reset-"+f.Reset)
	}
	if f.Truncate != 0 {
		parts = append(parts, "truncate")
	}
	if f.SlowBody != 0 {
		parts = append(parts, "slow-body")
	}
	if f.Duplicate != 0 {
		parts = append(parts, "duplicate")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "+")
}

func headerTriggers(h http.Header, spec string) bool {
	name, val, hasVal := strings.Cut(spec, ":")
	vs := h.Values(strings.TrimSpace(name))
	if !hasVal {
		return len(vs) > 0
	}
	for _, v := range vs {
		if strings.TrimSpace(v) == strings.TrimSpace(val) {
			return true
		}
	}
	return false
}

// draw returns a uniform number in [0, 1) from (seed, seq, fault,
// purpose), by splitmix64: no shared generator, so concurrent requests
// cannot disturb each other's draws.
func draw(seed int64, seq, fault, purpose uint64) float64 {
	x := uint64(seed) ^ seq*0x9E3779B97F4A7C15 ^ fault*0xBF58476D1CE4E5B9 ^ purpose*0x94D049BB133111EB
	for range 2 {
		x += 0x9E3779B97F4A7C15
		z := x
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		x = z ^ (z >> 31)
	}
	return float64(x>>11) / (1 << 53)
}

// Transport is an http.RoundTripper that applies an Injector's faults to
// the requests it sends through Base. Resets and hangs surface as errors
// wrapping ErrInjected; a reset during the response and a truncated body
// surface as a body read error.
type Transport struct {
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Injector decides the faults (required).
	Injector *Injector
}

// RoundTrip applies the fault drawn for req. It returns ctx's error if
// req's context ends during an injected delay or hang.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	req = req.Clone(req.Context())
	d := t.Injector.Decide(req)
	f := d.Fault
	if f == nil {
		return base.RoundTrip(req)
	}
	ctx := req.Context()
	if err := wait(ctx, d.Delay); err != nil {
		closeBody(req)
		return nil, err
	}
	switch {
	case f.Status != 0:
		closeBody(req)
		return t.Injector.statusResponse(f, req), nil
	case f.Hang != 0:
		closeBody(req)
		if err := wait(ctx, f.Hang.D()); err != nil {
			return nil, err
		}
		return nil, &FaultError{Fault: f.Name, Kind: "hang"}
	case f.Reset == "before":
		closeBody(req)
		return nil, &FaultError{Fault: f.Name, Kind: "reset-before"}
	}
	resp, err := t.deliver(base, req, f)
	if err != nil {
		return nil, err
	}
	switch {
	case f.Reset == "after":
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, &FaultError{Fault: f.Name, Kind: "reset-after"}
	case f.Reset == "during":
		n := resp.ContentLength / 2
		if resp.ContentLength < 0 {
			n = 1
		}
		resp.Body = &cutBody{rc: resp.Body, left: n, err: &FaultError{Fault: f.Name, Kind: "reset-during"}}
	case f.Truncate != 0:
		resp.Body = &cutBody{rc: resp.Body, left: int64(f.Truncate), err: &FaultError{Fault: f.Name, Kind: "truncate"}}
	}
	if f.SlowBody != 0 {
		resp.Body = &slowBody{rc: resp.Body, done: ctx.Done(), rate: int64(f.SlowBody)}
	}
	return resp, nil
}

// deliver sends req, plus f.Duplicate copies, and returns the first
// answer; the copies' answers are drained and dropped.
func (t *Transport) deliver(base http.RoundTripper, req *http.Request, f *Fault) (*http.Response, error) {
	if f.Duplicate == 0 {
		return base.RoundTrip(req)
	}
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(req.Body, t.Injector.opts.MaxBody+1))
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("chaos: read request body: %w", err)
		}
		if int64(len(b)) > t.Injector.opts.MaxBody {
			req.Body = io.NopCloser(io.MultiReader(bytes.NewReader(b), req.Body))
			return base.RoundTrip(req)
		}
		body = b
	}
	copyOf := func() *http.Request {
		c := req.Clone(req.Context())
		if body != nil {
			c.Body = io.NopCloser(bytes.NewReader(body))
			c.ContentLength = int64(len(body))
		}
		return c
	}
	drop := func(r *http.Request) {
		resp, err := base.RoundTrip(r)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	if f.DuplicateConcurrent {
		var wg sync.WaitGroup
		for range f.Duplicate {
			c := copyOf()
			wg.Add(1)
			go func() { defer wg.Done(); drop(c) }()
		}
		resp, err := base.RoundTrip(copyOf())
		wg.Wait()
		return resp, err
	}
	resp, err := base.RoundTrip(copyOf())
	if err != nil {
		return nil, err
	}
	// Read the first answer whole before the copies go out, so they are
	// true redeliveries of a request that completed.
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	for range f.Duplicate {
		drop(copyOf())
	}
	if rerr != nil {
		return nil, fmt.Errorf("chaos: read response: %w", rerr)
	}
	return resp, nil
}

func (in *Injector) statusResponse(f *Fault, req *http.Request) *http.Response {
	body := f.Body
	if body == "" {
		body = fmt.Sprintf("chaos: injected %d (fault %s)\n", f.Status, f.Name)
	}
	h := http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Chaos-Fault": {f.Name}}
	if f.RetryAfter != 0 {
		if f.RetryAfterDate {
			h.Set("Retry-After", in.opts.Now().Add(f.RetryAfter.D()).UTC().Format(http.TimeFormat))
		} else {
			h.Set("Retry-After", strconv.FormatInt(int64((f.RetryAfter.D()+time.Second-1)/time.Second), 10))
		}
	}
	return &http.Response{
		Status: fmt.Sprintf("%d %s", f.Status, http.StatusText(f.Status)), StatusCode: f.Status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h,
		Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: req,
	}
}

func closeBody(r *http.Request) {
	if r.Body != nil {
		r.Body.Close()
	}
}

func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cutBody yields left bytes of rc, then err.
type cutBody struct {
	rc   io.ReadCloser
	left int64
	err  error
}

func (b *cutBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		return n, io.EOF // shorter than the cut: nothing to cut
	}
	return n, err
}

func (b *cutBody) Close() error { return b.rc.Close() }

// slowBody yields rc at rate bytes per second, in tenth-of-a-second
// slices.
type slowBody struct {
	rc   io.ReadCloser
	done <-chan struct{} // the request's context's Done
	rate int64
}

func (b *slowBody) Read(p []byte) (int, error) {
	chunk := max(b.rate/10, 1)
	if int64(len(p)) > chunk {
		p = p[:chunk]
	}
	t := time.NewTimer(time.Duration(int64(len(p)) * int64(time.Second) / b.rate))
	defer t.Stop()
	select {
	case <-b.done:
		return 0, fmt.Errorf("chaos: slow body: %w", context.Canceled)
	case <-t.C:
	}
	return b.rc.Read(p)
}

func (b *slowBody) Close() error { return b.rc.Close() }
