package resilience

import (
	"bytes"
	"container/list"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// StaleHeader marks a response served from the stale-if-error cache; its
// value is "true". The standard Age field carries its age in seconds.
const StaleHeader = "Levee-Stale"

// StaleSettings configure serving the last good response when the
// upstream fails (RFC 5861 stale-if-error). The zero value is the
// default.
type StaleSettings struct {
	// MaxStale is how long past its freshness lifetime (Cache-Control
	// max-age, else 0) a stored response may be served on error, unless
	// the response itself set stale-if-error=N, which wins. Default 5m.
	MaxStale time.Duration
	// MaxEntries bounds the cache (least recently stored evicted first).
	// Default 1000.
	MaxEntries int
	// MaxBodyBytes bounds a stored body; a larger response is passed
	// through, not stored. Default 1 MiB.
	MaxBodyBytes int64
}

// Validate reports the first field out of range, naming it.
func (s StaleSettings) Validate() error {
	switch {
	case s.MaxStale < 0:
		return fmt.Errorf("resilience: Stale.MaxStale %v is negative", s.MaxStale)
	case s.MaxEntries < 0:
		return fmt.Errorf("resilience: Stale.MaxEntries %d is negative", s.MaxEntries)
	case s.MaxBodyBytes < 0:
		return fmt.Errorf("resilience: Stale.MaxBodyBytes %d is negative", s.MaxBodyBytes)
	}
	return nil
}

// Stale is an in-memory stale-if-error cache for safe methods (GET,
// HEAD) keyed by method and Call.Target. It stores 200 responses
// (buffering their body, up to MaxBodyBytes) unless they say
// Cache-Control: no-store, and when a later call fails — an error,
// including a local rejection such as an open breaker, or a 500, 502,
// 503 or 504 — serves the stored response, if not too stale, with Age
// and Levee-Stale: true. Safe for concurrent use.
type Stale struct {
	maxStale   time.Duration
	maxEntries int
	maxBody    int64

	mu  sync.Mutex
	m   map[string]*list.Element
	lru *list.List // of *staleEntry, most recent first
}

type staleEntry struct {
	key      string
	status   int
	header   http.Header
	body     []byte
	stored   time.Time
	maxStale time.Duration // freshness lifetime + stale-if-error
}

// NewStale returns an empty cache, or the error of s.Validate.
func NewStale(s StaleSettings) (*Stale, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if s.MaxStale == 0 {
		s.MaxStale = 5 * time.Minute
	}
	if s.MaxEntries == 0 {
		s.MaxEntries = 1000
	}
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = 1 << 20
	}
	return &Stale{maxStale: s.MaxStale, maxEntries: s.MaxEntries, maxBody: s.MaxBodyBytes, m: make(map[string]*list.Element), lru: list.New()}, nil
}

// cacheControl returns the seconds of directive name in Cache-Control,
// and whether no-store is set.
func cacheControl(h http.Header, name string) (secs int64, found, noStore bool) {
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			if d == "no-store" {
				noStore = true
			}
			if k, val, ok := strings.Cut(d, "="); ok && k == name {
				if n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64); err == nil && n >= 0 && n < 1<<31 {
					secs, found = n, true
				}
			}
		}
	}
	return secs, found, noStore
}

func (s *Stale) store(key string, resp *http.Response, now time.Time) {
	_, _, noStore := cacheControl(resp.Header, "")
	if noStore {
		return
	}
	buf, err := io.ReadAll(io.LimitReader(resp.Body, s.maxBody+1))
	if err != nil || int64(len(buf)) > s.maxBody {
		resp.Body = &prefixBody{Reader: io.MultiReader(bytes.NewReader(buf), resp.Body), c: resp.Body}
		if err != nil {
			resp.Body = &prefixBody{Reader: io.MultiReader(bytes.NewReader(buf), errReader{err}), c: resp.Body}
		}
		return
	}
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(buf))
	life, _, _ := cacheControl(resp.Header, "max-age")
	extra := s.maxStale
	if sie, ok, _ := cacheControl(resp.Header, "stale-if-error"); ok {
		extra = time.Duration(sie) * time.Second
	}
	e := &staleEntry{key: key, status: resp.StatusCode, header: resp.Header.Clone(), body: buf, stored: now,
		maxStale: time.Duration(life)*time.Second + extra}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.m[key]; ok {
		s.lru.Remove(el)
	}
	s.m[key] = s.lru.PushFront(e)
	for s.lru.Len() > s.maxEntries {
		old := s.lru.Remove(s.lru.Back()).(*staleEntry)
		delete(s.m, old.key)
	}
}

func (s *Stale) lookup(key string, now time.Time) (*staleEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.m[key]
	if !ok {
		return nil, false
	}
	e := el.Value.(*staleEntry)
	if now.Sub(e.stored) > e.maxStale {
		s.lru.Remove(el)
		delete(s.m, key)
		return nil, false
	}
	return e, true
}

type prefixBody struct {
	io.Reader
	c io.Closer
}

func (b *prefixBody) Close() error { return b.c.Close() }

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// upstreamFailed reports the failures stale-if-error covers (RFC 5861
// §4: 500, 502, 503, 504, and errors).
func upstreamFailed(resp *http.Response, err error) bool {
	if err != nil || resp == nil {
		return true
	}
	switch resp.StatusCode {
	case 500, 502, 503, 504:
		return true
	}
	return false
}

// Wrap makes the cache a Policy: place it first (outermost), so it sees
// the call's final outcome, rejections included.
func (s *Stale) Wrap(env Env, next Handler) Handler {
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		m := c.method()
		if c.Target == "" || (m != http.MethodGet && m != http.MethodHead) {
			return next(ctx, c)
		}
		key := m + " " + c.Target
		resp, err := next(ctx, c)
		now := env.Clock.Now()
		if !upstreamFailed(resp, err) {
			if resp.StatusCode == http.StatusOK {
				s.store(key, resp, now)
			}
			return resp, err
		}
		if ctx.Err() != nil {
			return resp, err
		}
		e, ok := s.lookup(key, now)
		if !ok {
			return resp, err
		}
		drain(resp)
		age := now.Sub(e.stored)
		h := e.header.Clone()
		h.Set("Age", strconv.FormatInt(int64(age/time.Second), 10))
		h.Set(StaleHeader, "true")
		emit(ctx, env, Event{Kind: EventStale, Reason: outcomeOf(resp, err).String(), Delay: age})
		return &http.Response{
			Status: strconv.Itoa(e.status) + " " + http.StatusText(e.status), StatusCode: e.status,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: h, Body: io.NopCloser(bytes.NewReader(e.body)), ContentLength: int64(len(e.body)),
			Request: c.Request,
		}, nil
	}
}

// SecondarySettings configure falling back to a secondary upstream.
type SecondarySettings struct {
	// Executor runs the fallback call with its own policies (its own
	// breaker, budget...). Required.
	Executor *Executor
	// Send performs an attempt against the secondary (for Transport
	// calls, RoundTripTo builds one). Required.
	Send AttemptFunc
	// When says whether the primary's final outcome calls for the
	// secondary. Default: an error (local rejections included) or a 500,
	// 502, 503 or 504. Unsafe methods without a key fall back only when
	// the primary certainly did not get the request (a local rejection
	// or a connect error), whatever When says.
	When func(Outcome) bool
}

// Validate reports a missing required field.
func (s SecondarySettings) Validate() error {
	switch {
	case s.Executor == nil:
		return fmt.Errorf("resilience: Secondary.Executor is nil")
	case s.Send == nil:
		return fmt.Errorf("resilience: Secondary.Send is nil")
	}
	return nil
}

// Secondary returns the policy that re-runs a failed call on a secondary
// upstream: a copy of the Call (same Key, same Target, same replayable
// body) through s.Executor with s.Send. Place it before the retry policy
// (it sees the primary's final outcome) and after Stale. It emits
// EventSecondary; the secondary's result is the call's result. A call
// that is not Replayable, or whose context ended, does not fall back.
func Secondary(s SecondarySettings) Policy {
	when := s.When
	if when == nil {
		when = func(o Outcome) bool {
			return o.Err != nil || o.StatusCode == 500 || o.StatusCode == 502 || o.StatusCode == 503 || o.StatusCode == 504
		}
	}
	return PolicyFunc(func(env Env, next Handler) Handler {
		return func(ctx context.Context, c *Call) (*http.Response, error) {
			resp, err := next(ctx, c)
			o := outcomeOf(resp, err)
			if ctx.Err() != nil || !c.Replayable || !when(o) {
				return resp, err
			}
			unsent := o.Err != nil && (isRejection(o.Err) || isConnectError(o.Err))
			if !unsent && c.Key == "" && !isIdempotentDefault(c.method()) {
				return resp, err
			}
			drain(resp)
			emit(ctx, env, Event{Kind: EventSecondary, Reason: o.String()})
			c2 := Call{Method: c.Method, Target: c.Target, Key: c.Key, Replayable: c.Replayable, GetBody: c.GetBody,
				EnforcesDeadline: c.EnforcesDeadline, Send: s.Send, Request: c.Request}
			return s.Executor.Do(ctx, &c2)
		}
	})
}

func isIdempotentDefault(m string) bool {
	for _, x := range DefaultIdempotentMethods {
		if x == m {
			return true
		}
	}
	return false
}
