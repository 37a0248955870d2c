package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"github.com/leveehq/levee/internal/h1"
	"github.com/leveehq/levee/internal/problem"
	"github.com/leveehq/levee/resilience"
)

// proxyUpstream runs a route's requests through its named upstream's
// resilience executor, on both proxy paths:
//
//   - the direct path fills a pooled resilience.Call whose Send writes
//     the head and body already in memory (adding an AutoKey key to the
//     head) through levee's HTTP/1.1 client, applying Call.Deadline()
//     (EnforcesDeadline);
//   - the ReverseProxy path wraps the transport in resilience.Transport.
//
// The request's idempotency key goes to the executor — which makes an
// unsafe method retryable after it was sent — only when passKey: the
// upstream deduplicates by it (retry.dedupes_keys), or the route's
// idempotency block releases keys on an unknown outcome (the operator's
// statement that the upstream dedupes). Otherwise the key is forwarded
// but hidden from the executor, and a POST is retried only when it
// certainly never left (a connect error).
//
// Unknown outcomes: when an attempt was sent whole and its answer lost,
// and the call then ends in an error (whatever the last attempt's
// error), the request's outcome is unknown (reqInfo.outcomeUnknown), so
// the idempotency layer holds the key.
type proxyUpstream struct {
	exec      *resilience.Executor
	name      string // the upstream's name, for problems
	keyHeader string // canonical
	passKey   bool
	egress    bool
	strip     string         // path prefix removed before forwarding (egress)
	queue     *queueFallback // fallback.queue, or nil (upstream_queue.go)
	calls     sync.Pool
}

// useUpstream wires the named upstream of rc into rp.
func (g *Gateway) useUpstream(rp *routeProxy, rc *RouteConfig, ue *upstreamExec) {
	u := rc.named
	up := &proxyUpstream{exec: ue.exec, name: u.Name, keyHeader: http.CanonicalHeaderKey(ue.exec.KeyHeader()),
		egress: rc.Egress}
	idem := rc.Idempotency
	up.passKey = u.Retry.DedupesKeys || (idem.enabled() && idem.OnUnknownOutcome == UnknownRelease)
	if rc.Egress && rc.Match.PathPrefix != "/" {
		up.strip = strings.TrimSuffix(rc.Match.PathPrefix, "/")
	}
	up.calls.New = func() any {
		dc := &directCall{up: up}
		dc.sendFn, dc.writeFn = dc.send, dc.write
		return dc
	}
	rp.up = up
	if ue.queue != nil {
		up.queue = &queueFallback{gq: ue.queue, upstream: u.Name, base: strings.TrimSuffix(ue.url.Path, "/"),
			keyHeader: up.keyHeader, dedupes: up.passKey}
		if obs := g.upstreams.obs; obs != nil {
			up.queue.obs = obs
		}
	}
	if ue.secondary {
		// The Secondary policy sends from the outbound *http.Request
		// (resilience.RoundTripTo), which only this path has.
		rp.h1 = nil
	}
	rt := &resilience.Transport{Base: attemptTransport{base: g.transport, keyHeader: up.keyHeader}, Executor: ue.exec}
	var outer http.RoundTripper = hideKey{rt: rt, keyHeader: up.keyHeader, pass: up.passKey}
	if up.queue != nil {
		outer = queueTransport{rt: outer, qf: up.queue}
	}
	rp.rp.Transport = timedTransport{outer}
	if rc.Egress {
		rp.trusted = nil // never trust a client's forwarded headers, never add ours
		target := rp.target
		rp.rp.Rewrite = func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			for _, h := range spoofableIPHeaders {
				pr.Out.Header.Del(h)
			}
		}
	}
}

// stripPrefix returns r with the egress route's prefix removed from its
// path (a shallow copy: the access log keeps the path as requested).
func (up *proxyUpstream) stripPrefix(r *http.Request) *http.Request {
	r2 := *r
	u := *r.URL
	u.Path = strings.TrimPrefix(u.Path, up.strip)
	if u.Path == "" || u.Path[0] != '/' {
		u.Path = "/" + u.Path
	}
	u.RawPath = ""
	r2.URL = &u
	return &r2
}

// directCall is one request's resilience.Call on the direct path, pooled
// with its bound Send and write functions (no allocation per request).
type directCall struct {
	c       resilience.Call
	up      *proxyUpstream
	p       *routeProxy
	buf     []byte // head and body
	headEnd int    // len of the head, its blank line included
	method  string
	h1Repl  bool
	ownKey  string
	routeDL time.Time // the route timeout's deadline
	unknown bool      // an attempt was sent whole and its answer lost
	sent    bool      // an attempt was sent whole (answered or not)
	sendFn  resilience.AttemptFunc
	writeFn func(*bufio.Writer) error
}

// send runs the request through the executor on the direct path: buf is
// the head (up to headEnd) and body; deadline is the route's.
func (up *proxyUpstream) send(p *routeProxy, r *http.Request, ri *reqInfo, buf []byte, headEnd int, deadline time.Time) (*http.Response, error) {
	dc := up.calls.Get().(*directCall)
	defer func() {
		dc.p, dc.buf = nil, nil
		up.calls.Put(dc)
	}()
	ownKey := r.Header.Get(up.keyHeader)
	key := ""
	if up.passKey {
		key = ownKey
	}
	dc.p, dc.buf, dc.headEnd, dc.method, dc.h1Repl, dc.ownKey, dc.routeDL, dc.unknown, dc.sent = p, buf, headEnd, r.Method, h1.Replayable(r), ownKey, deadline, false, false
	dc.c = resilience.Call{Method: r.Method, Key: key, Replayable: true, EnforcesDeadline: true, Send: dc.sendFn}
	if up.exec.NeedsTarget() {
		dc.c.Target = r.URL.RequestURI()
	}
	// Detached from the client, as the plain direct path. No context
	// deadline is needed (nor its allocations): the executor's own Timeout
	// bounds every attempt and wait, and config validation keeps it within
	// the route's timeout, which each attempt's deadline is capped by too.
	resp, err := up.exec.Do(context.Background(), &dc.c)
	if up.queue != nil && (err != nil || queueStatus(resp.StatusCode)) {
		if qr, ok := up.queue.accept(r.Context(), ri, r.Method, r.Header, r.URL.Path, cleanQueryParams(r.URL.RawQuery),
			buf[headEnd:], resp, err, dc.sent); ok {
			return qr, nil
		}
	}
	if err != nil && dc.unknown && ri != nil {
		ri.outcomeUnknown = true
	}
	return resp, err
}

// send is the Call's Send: one attempt through levee's HTTP/1.1 client.
func (dc *directCall) send(ctx context.Context, c *resilience.Call) (*http.Response, error) {
	dl := c.Deadline()
	if dl.IsZero() || dc.routeDL.Before(dl) {
		dl = dc.routeDL
	}
	resp, err := dc.p.h1.Send(ctx, dc.p.addr, dl, dc.h1Repl, dc.method, nil, dc.writeFn)
	if err != nil && h1.OutcomeUnknown(err) {
		dc.unknown = true
	}
	if err == nil || dc.unknown {
		dc.sent = true
	}
	return resp, err
}

// write writes the request, with the executor's key added to the head
// when the request did not carry it (AutoKey).
func (dc *directCall) write(bw *bufio.Writer) error {
	if k := dc.c.Key; k != "" && k != dc.ownKey && dc.ownKey == "" {
		end := dc.headEnd - 2 // before the blank line
		_, _ = bw.Write(dc.buf[:end])
		_, _ = bw.WriteString(dc.up.keyHeader)
		_, _ = bw.WriteString(": ")
		_, _ = bw.WriteString(k)
		_, _ = bw.WriteString("\r\n")
		_, err := bw.Write(dc.buf[end:])
		return err
	}
	_, err := bw.Write(dc.buf)
	return err
}

// hiddenKey carries, in a request's context, the idempotency header
// hidden from the executor (hideKey), for attemptTransport to restore.
type hiddenKey struct{}

// hideKey is the ReverseProxy path's outer transport: unless pass, it
// removes the idempotency header from the request the executor sees
// (so that it does not retry an unsafe method after sending it) and
// stashes it for attemptTransport, which puts it back on every attempt.
type hideKey struct {
	rt        http.RoundTripper
	keyHeader string
	pass      bool
}

func (h hideKey) RoundTrip(r *http.Request) (*http.Response, error) {
	if v := r.Header[h.keyHeader]; !h.pass && len(v) > 0 {
		r = r.WithContext(context.WithValue(r.Context(), hiddenKey{}, v))
		r.Header = r.Header.Clone()
		delete(r.Header, h.keyHeader)
	}
	return h.rt.RoundTrip(r)
}

// attemptTransport sends one attempt of the ReverseProxy path: it puts
// back a hidden idempotency header and notes an attempt whose outcome
// is unknown for timedTransport.
type attemptTransport struct {
	base      http.RoundTripper
	keyHeader string
}

func (a attemptTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if v, ok := r.Context().Value(hiddenKey{}).([]string); ok {
		r2 := *r
		r2.Header = r.Header.Clone()
		r2.Header[a.keyHeader] = v
		r = &r2
	}
	resp, err := a.base.RoundTrip(r)
	if ri := infoFrom(r.Context()); ri != nil && ri.sent != nil {
		switch {
		case err == nil:
			ri.sent.answered.Store(true) // levee's own client does not report WroteRequest
		case h1.OutcomeUnknown(err):
			ri.sent.wrote.Store(true)
		}
	}
	return resp, err
}

// upstreamPolicyError answers err when one of the upstream's policies
// ended the call (the problem types of docs/problems.md, "Errors of
// upstream policies"), and reports whether it did.
func (g *Gateway) upstreamPolicyError(w http.ResponseWriter, ri *reqInfo, err error, route, upstream string) bool {
	now := time.Now()
	var (
		oe  *resilience.OpenError
		be  *resilience.BulkheadError
		te  *resilience.ThrottledError
		pe  *resilience.PacedError
		bue *resilience.BudgetError
		rae *resilience.RetryAfterError
	)
	var p problem.Problem
	var kind string
	switch {
	case errors.As(err, &oe):
		kind, p = "circuit_open", problem.Problem{Type: problem.UpstreamCircuitOpen, Status: http.StatusServiceUnavailable,
			Title: "Upstream circuit breaker open", Detail: fmt.Sprintf("route %s: upstream %s failed repeatedly; not sent", route, oe.Upstream)}
	case errors.As(err, &be):
		kind, p = "bulkhead_full", problem.Problem{Type: problem.UpstreamBulkheadFull, Status: http.StatusServiceUnavailable,
			Title: "Too many requests in flight to the upstream", Detail: fmt.Sprintf("route %s: %d requests already in flight to %s; not sent", route, be.MaxInFlight, be.Upstream)}
	case errors.As(err, &te):
		kind, p = "throttled", problem.Problem{Type: problem.UpstreamThrottled, Status: http.StatusServiceUnavailable,
			Title: "Upstream throttled locally", Detail: fmt.Sprintf("route %s: upstream %s rejects most requests; not sent", route, te.Upstream)}
	case errors.As(err, &pe):
		kind, p = "paced", problem.Problem{Type: problem.UpstreamQuotaExhausted, Status: http.StatusTooManyRequests,
			Title: "Upstream quota exhausted", Detail: fmt.Sprintf("route %s: no slot toward %s within %v (%s); not sent", route, pe.Upstream, pe.MaxWait, pe.Reason)}
		p.Extra = map[string]any{"reason": pe.Reason}
	case errors.As(err, &bue):
		kind, p = "retry_budget", problem.Problem{Type: problem.UpstreamRetryBudget, Status: http.StatusServiceUnavailable,
			Title: "Upstream retry budget exhausted", Detail: fmt.Sprintf("route %s: upstream %s failed (%s) and its retry budget is spent", route, bue.Upstream, bue.Last)}
		p.Extra = map[string]any{"attempts": bue.Attempts, "last": bue.Last.String()}
	case errors.As(err, &rae):
		kind, p = "retry_after", problem.Problem{Type: problem.UpstreamRetryAfterTooLong, Status: http.StatusServiceUnavailable,
			Title: "Upstream asked to retry too late", Detail: fmt.Sprintf("route %s: upstream %s asked to retry after %v, above %v", route, rae.Upstream, rae.RetryAfter, rae.Max)}
		p.Extra = map[string]any{"attempts": rae.Attempts, "last": rae.Last.String()}
	default:
		return false
	}
	if d, ok := resilience.RetryAfter(err, now); ok {
		p.RetryAfter = max(d, time.Second)
	}
	extra := p.Extra
	g.metrics.upstreamErrors.WithLabelValues(route, kind).Inc()
	if ri != nil {
		ri.upstreamErr = err.Error()
	}
	p.Extra = map[string]any{"route": route, "upstream": upstream}
	for k, v := range extra {
		p.Extra[k] = v
	}
	problem.WriteWith(w, p, ri.renderer())
	return true
}
