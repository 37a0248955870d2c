package resilience

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// DefaultMaxBufferedBody is Transport.MaxBufferedBody's default: 1 MiB.
const DefaultMaxBufferedBody = 1 << 20

// Transport is an http.RoundTripper that sends each request through an
// Executor: a thin adapter that makes the request replayable and carries
// the idempotency key. A request body with GetBody is replayed through
// it; one without is buffered if it fits in MaxBufferedBody, else sent
// once (not retried). The key is the request's own KeyHeader field if
// present, else (AutoKey) the generated one, set on a copy of the
// request: the caller's request is never modified. Redirects are not
// followed here (http.Client does that above the transport), so a
// redirect of an unsafe method is never re-sent.
type Transport struct {
	// Base sends each attempt. Default http.DefaultTransport.
	Base http.RoundTripper
	// Executor runs the policies. Required.
	Executor *Executor
	// MaxBufferedBody bounds the body buffered to make a request without
	// GetBody replayable. Default DefaultMaxBufferedBody; negative: never
	// buffer.
	MaxBufferedBody int64
}

var errNoExecutor = errors.New("resilience: Transport.Executor is nil")

// RoundTrip implements http.RoundTripper: it runs req through the
// executor and returns the final response or an error (see Executor.Do).
// It always closes req.Body.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.Executor == nil {
		closeBody(req)
		return nil, errNoExecutor
	}
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	tc := &transportCall{base: base, keyHeader: t.Executor.keyHeader}
	c := &tc.c
	c.Method, c.Request, c.Send, c.tc = req.Method, req, transportSend, tc
	if t.Executor.needsTarget {
		c.Target = req.URL.String()
	}
	if v := req.Header[tc.keyHeader]; len(v) > 0 { // canonical (New): Header.Get without canonicalizing
		c.Key = v[0]
	}
	tc.ownKey = c.Key
	switch {
	case req.Body == nil || req.Body == http.NoBody:
		c.Replayable = true
	case req.GetBody != nil:
		c.Replayable, c.GetBody = true, req.GetBody
	default:
		limit := t.MaxBufferedBody
		if limit == 0 {
			limit = DefaultMaxBufferedBody
		}
		if limit > 0 {
			buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
			if err != nil {
				closeBody(req)
				return nil, fmt.Errorf("resilience: reading the request body: %w", err)
			}
			if int64(len(buf)) <= limit {
				_ = req.Body.Close()
				tc.buf, tc.buffered, c.Replayable = buf, true, true
				c.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
			} else {
				tc.prefix = buf
			}
		}
	}
	resp, err := t.Executor.Do(req.Context(), c)
	if !tc.sent && !tc.buffered {
		closeBody(req)
	}
	return resp, err
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

type transportCall struct {
	c         Call
	base      http.RoundTripper
	keyHeader string
	ownKey    string // the key the request carries itself
	buf       []byte // the buffered body
	buffered  bool
	prefix    []byte // read from an unreplayable body before giving up buffering
	header    http.Header
	sent      bool
	ctxUsed   bool       // actx serves the first attempt (AttemptTimeout)
	actx      attemptCtx // in the same allocation as the call
}

// transportSend is the Send of a Transport call (a plain function, not
// a method value, which would cost an allocation per call).
func transportSend(ctx context.Context, c *Call) (*http.Response, error) {
	tc := c.tc
	r, err := tc.request(ctx, c)
	if err != nil {
		return nil, err
	}
	return tc.base.RoundTrip(r)
}

// request returns the request of attempt c.Attempt() for orig: orig
// itself when nothing needs to change, else a shallow copy with the
// attempt's context, body and key.
func (tc *transportCall) request(ctx context.Context, c *Call) (*http.Request, error) {
	orig := c.Request
	n := c.Attempt()
	setKey := c.Key != "" && c.Key != tc.ownKey
	r := orig
	if ctx != orig.Context() || n > 0 || tc.buffered || tc.prefix != nil || setKey {
		r = orig.WithContext(ctx)
	}
	switch {
	case tc.buffered:
		r.Body, r.GetBody = io.NopCloser(bytes.NewReader(tc.buf)), c.GetBody
	case tc.prefix != nil:
		r.Body = &prefixBody{Reader: io.MultiReader(bytes.NewReader(tc.prefix), orig.Body), c: orig.Body}
		r.GetBody = nil
	case n > 0 && orig.GetBody != nil && orig.Body != nil && orig.Body != http.NoBody:
		b, err := orig.GetBody()
		if err != nil {
			return nil, fmt.Errorf("resilience: GetBody: %w", err)
		}
		r.Body = b
	}
	if setKey {
		if tc.header == nil {
			tc.header = orig.Header.Clone()
			if tc.header == nil {
				tc.header = make(http.Header)
			}
			tc.header.Set(tc.keyHeader, c.Key)
		}
		r.Header = tc.header
	}
	tc.sent = true
	return r, nil
}

// RoundTripTo returns an AttemptFunc that sends a Transport call's
// request (Call.Request, its body from Call.GetBody, Call.Key in
// keyHeader, DefaultKeyHeader when "") to base's scheme and host
// instead, through rt (http.DefaultTransport when nil): the Send of a
// SecondarySettings for Transport users. It fails for a call without a
// Request, or with a body it cannot replay.
func RoundTripTo(rt http.RoundTripper, base *url.URL, keyHeader string) AttemptFunc {
	if rt == nil {
		rt = http.DefaultTransport
	}
	if keyHeader == "" {
		keyHeader = DefaultKeyHeader
	}
	return func(ctx context.Context, c *Call) (*http.Response, error) {
		orig := c.Request
		if orig == nil {
			return nil, errors.New("resilience: RoundTripTo needs a Call from Transport")
		}
		r := orig.WithContext(ctx)
		u := *orig.URL
		u.Scheme, u.Host = base.Scheme, base.Host
		r.URL, r.Host = &u, ""
		switch {
		case c.GetBody != nil:
			b, err := c.GetBody()
			if err != nil {
				return nil, fmt.Errorf("resilience: GetBody: %w", err)
			}
			r.Body, r.GetBody = b, c.GetBody
		case orig.Body != nil && orig.Body != http.NoBody:
			return nil, errors.New("resilience: RoundTripTo cannot replay the request body")
		}
		if c.Key != "" && orig.Header.Get(keyHeader) != c.Key {
			r.Header = orig.Header.Clone()
			if r.Header == nil {
				r.Header = make(http.Header)
			}
			r.Header.Set(keyHeader, c.Key)
		}
		return rt.RoundTrip(r)
	}
}

// CheckRedirect is an http.Client.CheckRedirect for clients using
// Transport: it follows redirects of GET, HEAD, OPTIONS and TRACE (up to
// 10, as the default does) and returns the redirect itself for every
// other method (http.ErrUseLastResponse), so that a 307 or 308 answered
// to a POST never re-sends it to another URL. The transport itself never
// follows redirects.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("resilience: stopped after 10 redirects")
	}
	switch via[0].Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return nil
	}
	return http.ErrUseLastResponse
}
