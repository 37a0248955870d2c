// Package gateway turns a levee.yaml into an http.Handler: a reverse proxy
// that puts levee's guarantees (rate limits, idempotency, error envelopes)
// in front of services written in any language. It only composes: each
// capability owns its config section and builds its middleware (the
// section files: store.go, serverconfig.go, ratelimit.go, idempotency.go,
// errors.go); this package holds the route table, the order of a route's
// policy chain (buildRoute), the proxy, admin, reload and shutdown. The
// HTTP/1.1 wire work is internal/h1's. Server runs it with an admin
// listener; cmd/levee is a thin main around it.
package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/h1"
	"github.com/leveehq/levee/internal/problem"
	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/resilience"
)

// Gateway is the proxy handler. Its routes are swapped atomically by
// Apply; each request runs entirely on the routes it started with.
type Gateway struct {
	store     idempotency.Store
	limits    ratelimit.Store    // shared by every route and every reload
	fallback  *ratelimit.Local   // fail_open limits while limits is down
	breaker   *ratelimit.Breaker // when limits counts as down; shared like limits
	metrics   *Metrics
	log       *slog.Logger
	access    *slog.Logger
	accessW   io.Writer // when set, lines are encoded by writeAccessLine
	transport http.RoundTripper
	buffers   bufferPool
	upstreams upstreamSet // the executors of named upstreams (upstreams.go)
	queues    *Queues     // fixed for the gateway's life (queues cannot change on reload)

	state atomic.Pointer[routeTable]
}

// Options are the Gateway's collaborators. Nil fields get defaults.
type Options struct {
	// Store holds idempotency records. Required when a route enables
	// idempotency.
	Store idempotency.Store
	// Metrics default to a fresh registry.
	Metrics *Metrics
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// AccessLog receives one record per request. Default: Logger.
	AccessLog *slog.Logger
	// AccessLogWriter, when set, receives the access log instead of
	// AccessLog: one JSON line per Write, with the fields and formats
	// slog's JSONHandler would write, encoded by levee (about 8 times
	// cheaper than going through slog).
	AccessLogWriter io.Writer
	// Transport defaults to levee's HTTP/1.1 transport for http://
	// upstreams (it runs in the caller's goroutine and never resends a
	// request with a body), falling back to a tuned *http.Transport (NewTransport) for
	// https, Upgrade, Expect: 100-continue and large or streamed uploads,
	// made unable to replay a request. A custom Transport must itself
	// never send a non-idempotent request twice.
	Transport http.RoundTripper
	// RateLimits decides rate-limit policies. Default: an in-process
	// ratelimit.Local (limits per replica). It is kept across Apply, so a
	// reload keeps every policy's state.
	RateLimits ratelimit.Store
	// Queues are the open queues that queues: paths and webhooks: routes
	// feed (OpenQueues). Required when the config has either.
	Queues *Queues
}

// New builds a Gateway for cfg.
func New(cfg *Config, opts Options) (*Gateway, error) {
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics("dev")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Transport == nil {
		opts.Transport = h1.NewTransport(NewTransport(), 1024)
	}
	if opts.AccessLog == nil {
		opts.AccessLog = opts.Logger
	}
	if opts.RateLimits == nil {
		opts.RateLimits = ratelimit.NewLocal(ratelimit.LocalOptions{})
	}
	g := &Gateway{metrics: opts.Metrics, log: opts.Logger, access: opts.AccessLog, accessW: opts.AccessLogWriter, transport: opts.Transport,
		limits: opts.RateLimits, fallback: ratelimit.NewLocal(ratelimit.LocalOptions{}),
		breaker: ratelimit.NewBreaker(ratelimit.BreakerOptions{OpenFor: cfg.RateLimit.StoreBackoff.D()})}
	if opts.Store != nil {
		g.store = instrumentedStore{Store: opts.Store, m: opts.Metrics}
	}
	g.queues = opts.Queues
	if g.queues == nil {
		g.queues = &Queues{byName: map[string]*gwQueue{}, m: newAsyncMetrics(nil), closeBk: func() error { return nil }}
	}
	up := g.upstreamFor
	g.queues.upstream.Store(&up) // queues targeting a named upstream deliver through its executor
	if err := g.Apply(cfg); err != nil {
		_ = g.CloseUpstreamStore()
		return nil, err
	}
	return g, nil
}

// NewTransport returns the upstream transport: keep-alive pools sized for
// a proxy (Go's default keeps 2 idle connections per host, which under
// load closes and re-dials constantly — the main reason a stock
// httputil.ReverseProxy lags nginx), bounded dials and TLS handshakes.
func NewTransport() *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil, // a gateway never goes through HTTP_PROXY implicitly
		DialContext:           d.DialContext,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// Apply validates nothing (cfg must come from Parse) and swaps in cfg's
// routes. Requests in flight finish on the routes they started with.
func (g *Gateway) Apply(cfg *Config) error {
	t := &routeTable{cfg: cfg, exact: map[string][]*route{}, trusted: cfg.trusted, render: cfg.Errors.renderer()}
	execs, err := g.executors(cfg)
	if err != nil {
		return err
	}
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		rt, err := g.buildRoute(cfg, rc, i, execs)
		if err != nil {
			return err
		}
		if rc.Match.Path != "" {
			t.exact[rc.Match.Path] = append(t.exact[rc.Match.Path], rt)
		} else {
			t.prefixes = append(t.prefixes, rt)
		}
	}
	if err := g.applyAsync(cfg, t); err != nil {
		return err
	}
	sort.SliceStable(t.prefixes, func(i, j int) bool { return len(t.prefixes[i].prefix) > len(t.prefixes[j].prefix) })
	g.commitExecutors(execs)
	g.state.Store(t)
	return nil
}

// CloseIdleConnections closes the idle upstream connections (after a
// reload that may have dropped upstreams, and at shutdown).
func (g *Gateway) CloseIdleConnections() {
	if ci, ok := g.transport.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// engine returns the idempotency engine of the route named name, or nil.
func (t *routeTable) engine(name string) *idempotency.Engine {
	for _, list := range t.exact {
		for _, rt := range list {
			if rt.name == name {
				return rt.engine
			}
		}
	}
	for _, rt := range t.prefixes {
		if rt.name == name {
			return rt.engine
		}
	}
	return nil
}

// Config returns the running config.
func (g *Gateway) Config() *Config { return g.state.Load().cfg }

type routeTable struct {
	cfg      *Config
	exact    map[string][]*route
	prefixes []*route // longest first
	trusted  []netip.Prefix
	render   *errorRenderer // errors: the global error format
}

type route struct {
	name    string
	prefix  string
	methods []string
	host    string
	maxBody int64
	handler http.Handler
	render  *errorRenderer      // the route's own errors block, if any
	engine  *idempotency.Engine // nil without idempotency: for the admin key tools
}

func (rt *route) accepts(r *http.Request, host string) bool {
	if rt.host != "" && !strings.EqualFold(rt.host, host) {
		return false
	}
	if len(rt.methods) == 0 {
		return true
	}
	for _, m := range rt.methods {
		if m == r.Method {
			return true
		}
	}
	return false
}

func (t *routeTable) match(r *http.Request, p string) *route {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for _, rt := range t.exact[p] {
		if rt.accepts(r, host) {
			return rt
		}
	}
	for _, rt := range t.prefixes {
		if underPrefix(p, rt.prefix) && rt.accepts(r, host) {
			return rt
		}
	}
	return nil
}

// underPrefix reports whether p is prefix or below it on a segment
// boundary.
func underPrefix(p, prefix string) bool {
	if !strings.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || strings.HasSuffix(prefix, "/") || p[len(prefix)] == '/'
}

// cleanPath removes dot segments and duplicate slashes, keeping a
// trailing slash, so that /public/../admin routes as /admin.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// reqInfo travels in the request context so inner layers can report to
// the access log and metrics.
type reqInfo struct {
	route       string
	sw          *statusWriter // renders the route's problems
	idem        idempotency.Outcome
	limited     string // policies that denied the request
	upstreamDur time.Duration
	upstreamErr string
	// outcomeUnknown: the whole request reached the upstream and then its
	// answer was lost (timeout, connection lost, head or body cut); see
	// h1.OutcomeUnknown. False when it was not sent or was answered.
	outcomeUnknown bool
	// sent watches, on the ReverseProxy path, whether net/http's
	// Transport wrote the whole request.
	sent *sentTracker
}

// sentTracker is an httptrace.ClientTrace noting that the whole request
// was written, plus the response body wrapper noting a cut body: one
// allocation for both, per request on the ReverseProxy path. It is not
// pooled: the Transport's writing goroutine may report after the handler
// returned.
type sentTracker struct {
	trace    httptrace.ClientTrace
	wrote    atomic.Bool
	answered atomic.Bool // an attempt got a response (the queue fallback's "sent")
	cut      unknownOnCut
}

// newSentTracker returns a tracker whose trace is ready for
// httptrace.WithClientTrace.
func newSentTracker() *sentTracker {
	st := &sentTracker{}
	st.trace.WroteRequest = st.wroteRequest
	return st
}

// wroteRequest notes a request written whole; sticky, so that a retried
// attempt that fails before writing does not hide an earlier one that
// was sent.
func (st *sentTracker) wroteRequest(info httptrace.WroteRequestInfo) {
	if info.Err == nil {
		st.wrote.Store(true)
	}
}

type infoKey struct{}

func infoFrom(ctx context.Context) *reqInfo {
	ri, _ := ctx.Value(infoKey{}).(*reqInfo)
	return ri
}

var infoPool = sync.Pool{New: func() any { return new(reqInfo) }}

// ServeHTTP routes and serves one request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	t := g.state.Load()
	g.metrics.inFlight.Inc()
	defer g.metrics.inFlight.Dec()

	dropFramingLookalikes(r.Header)
	id := r.Header.Get("X-Request-Id")
	if !validRequestID(id) {
		id = newRequestID()
		r.Header.Set("X-Request-Id", id)
	}
	w.Header().Set("X-Request-Id", id)

	ri := infoPool.Get().(*reqInfo)
	*ri = reqInfo{}
	defer infoPool.Put(ri)
	sw := &statusWriter{ResponseWriter: w, requestID: id, render: t.render}
	ri.sw = sw

	p := cleanPath(r.URL.Path)
	if p != r.URL.Path {
		r.URL.Path, r.URL.RawPath = p, ""
	}
	rt := t.match(r, p)
	if rt != nil {
		ri.route, sw.route = rt.name, rt.name
		if rt.render != nil {
			sw.render = rt.render // the route's errors block wins over the global one
		}
	}
	switch {
	case rt == nil:
		ri.route = "_unmatched"
		problem.Write(sw, problem.Problem{Type: problem.RouteNotFound, Status: http.StatusNotFound,
			Title: "No route matches this request", Detail: fmt.Sprintf("no route for %s %s", r.Method, p)})
	case r.ContentLength > rt.maxBody:
		problem.Write(sw, problem.Problem{Type: problem.RequestBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
			Title: "Request body too large", Detail: fmt.Sprintf("the limit is %d bytes", rt.maxBody)})
	default:
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength < 0 {
			// A body of unknown length (chunked) is cut at the limit; one
			// with a Content-Length was checked above, and the server
			// never reads past its length.
			r.Body = http.MaxBytesReader(sw, r.Body, rt.maxBody)
		}
		r = r.WithContext(context.WithValue(r.Context(), infoKey{}, ri))
		func() {
			defer func() {
				if p := recover(); p != nil {
					// http.ErrAbortHandler (client gone, upstream body
					// failed): log and count the request, then let
					// net/http abort the connection.
					sw.aborted = sw.status == 0
					g.finish(r, sw, ri, id, start, t.cfg)
					panic(p)
				}
			}()
			rt.handler.ServeHTTP(sw, r)
		}()
	}
	g.finish(r, sw, ri, id, start, t.cfg)
}

func (g *Gateway) finish(r *http.Request, sw *statusWriter, ri *reqInfo, id string, start time.Time, cfg *Config) {
	dur := time.Since(start)
	status := sw.status
	if status == 0 {
		status = http.StatusOK
		if sw.aborted {
			status = 499 // client closed the request before a response
		}
	}
	idem := string(ri.idem)
	if idem == "" {
		idem = "none"
	}
	method := r.Method
	if !isStandardMethod(method) {
		method = "OTHER"
	}
	g.metrics.requests.WithLabelValues(ri.route, method, strconv.Itoa(status), idem).Inc()
	g.metrics.duration.WithLabelValues(ri.route).Observe(dur.Seconds())
	if ri.upstreamDur > 0 {
		g.metrics.upstream.WithLabelValues(ri.route).Observe(ri.upstreamDur.Seconds())
	}
	if cfg.Log.AccessLog != nil && *cfg.Log.AccessLog {
		rec := accessRecord{time: start.Add(dur), requestID: id, route: ri.route, method: r.Method, path: r.URL.Path,
			status: status, duration: dur, upstreamDur: ri.upstreamDur, bytes: sw.bytes, idempotency: idem,
			remote: remoteIP(r), upstreamErr: ri.upstreamErr, limitedBy: ri.limited}
		if g.accessW != nil {
			writeAccessLine(g.accessW, &rec)
		} else {
			g.logAccess(r.Context(), &rec)
		}
	}
}

// logAccess writes rec through the AccessLog logger.
func (g *Gateway) logAccess(ctx context.Context, rec *accessRecord) {
	attrs := []slog.Attr{
		slog.String("request_id", rec.requestID),
		slog.String("route", rec.route),
		slog.String("method", rec.method),
		slog.String("path", rec.path),
		slog.Int("status", rec.status),
		slog.Float64("duration_ms", float64(rec.duration.Microseconds())/1000),
		slog.Float64("upstream_ms", float64(rec.upstreamDur.Microseconds())/1000),
		slog.Int64("bytes", rec.bytes),
		slog.String("idempotency", rec.idempotency),
		slog.String("remote", rec.remote),
	}
	if rec.upstreamErr != "" {
		attrs = append(attrs, slog.String("upstream_error", rec.upstreamErr))
	}
	if rec.limitedBy != "" {
		attrs = append(attrs, slog.String("rate_limited_by", rec.limitedBy))
	}
	g.access.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
}

// dropFramingLookalikes removes request headers that some upstream stacks
// (CGI and WSGI environ, older gunicorn) read as a framing or routing
// header once '_' becomes '-': Content_Length, Transfer_Encoding and
// Host-alikes would let a client smuggle a second length past levee.
// Other names with underscores pass (nginx drops them all by default,
// which breaks APIs that use them).
func dropFramingLookalikes(h http.Header) {
	for k := range h {
		if strings.IndexByte(k, '_') < 0 {
			continue
		}
		n := strings.ReplaceAll(k, "_", "-")
		if strings.EqualFold(n, "Content-Length") || strings.EqualFold(n, "Transfer-Encoding") || strings.EqualFold(n, "Host") {
			delete(h, k)
		}
	}
}

func isStandardMethod(m string) bool {
	for _, v := range validMethods {
		if v == m {
			return true
		}
	}
	return false
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// newRequestID returns 32 hex digits from math/rand/v2's ChaCha8
// generator (seeded from the OS): unique and unguessable in practice,
// without a getrandom call per request (about 2% of a proxied request's
// CPU with crypto/rand). A request id is a correlation handle, not a
// secret.
func newRequestID() string {
	var raw [16]byte
	binary.BigEndian.PutUint64(raw[:8], mrand.Uint64())
	binary.BigEndian.PutUint64(raw[8:], mrand.Uint64())
	var b [32]byte
	hex.Encode(b[:], raw[:])
	return string(b[:])
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// buildRoute assembles a route's handler chain. The order is the
// gateway's: rate limits outermost (a denied request costs nothing else),
// then idempotency, then the proxy. Each capability's section builds its
// own middleware.
func (g *Gateway) buildRoute(cfg *Config, rc *RouteConfig, idx int, execs map[string]*upstreamExec) (*route, error) {
	rt := &route{
		name:    rc.Name,
		prefix:  rc.Match.PathPrefix,
		methods: rc.Match.Methods,
		host:    rc.Match.Host,
		maxBody: int64(cfg.Server.MaxBodyBytes),
		render:  rc.Errors.renderer(),
	}
	idem, eng, err := rc.Idempotency.middleware(g, rc.Name)
	rt.engine = eng
	if err != nil {
		return nil, fmt.Errorf("gateway: routes[%d] (%s): %w", idx, rc.Name, err)
	}
	limits, err := g.rateLimitMiddleware(cfg, rc)
	if err != nil {
		return nil, fmt.Errorf("gateway: routes[%d] (%s): %w", idx, rc.Name, err)
	}
	var h http.Handler = g.newProxy(rc, cfg.trusted, execs)
	for _, mw := range []func(http.Handler) http.Handler{idem, limits} { // innermost first
		if mw != nil {
			h = mw(h)
		}
	}
	rt.handler = h
	return rt, nil
}

// newProxy builds the reverse proxy for one route.
func (g *Gateway) newProxy(rc *RouteConfig, trusted []netip.Prefix, execs map[string]*upstreamExec) http.Handler {
	target := rc.upstream
	timeout := rc.Timeout.D()
	name := rc.Name
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			keep := isTrusted(pr.In, trusted)
			if keep {
				if v := pr.In.Header["X-Forwarded-For"]; v != nil {
					pr.Out.Header["X-Forwarded-For"] = v
				}
			}
			pr.SetXForwarded()
			if !keep { // headers frameworks read as "the client IP", forged by the client
				for _, h := range spoofableIPHeaders {
					pr.Out.Header.Del(h)
				}
			}
			if keep { // a trusted proxy's view of host and scheme wins
				for _, h := range []string{"X-Forwarded-Host", "X-Forwarded-Proto"} {
					if v := pr.In.Header.Get(h); v != "" {
						pr.Out.Header.Set(h, v)
					}
				}
			}
		},
		Transport:  timedTransport{g.transport},
		BufferPool: &g.buffers,
		ErrorLog:   slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			g.proxyError(w, r, err, name, target.Host)
		},
	}
	rp := &routeProxy{g: g, name: name, target: target, timeout: timeout, trusted: trusted, rp: p}
	if h1, ok := g.transport.(*h1.Transport); ok && target.Scheme == "http" && target.User == nil {
		rp.h1 = h1
		rp.addr = target.Host
		if target.Port() == "" {
			rp.addr = net.JoinHostPort(target.Hostname(), "80")
		}
	}
	if ue := execs[rc.upstreamRef]; ue != nil && rc.named != nil {
		g.useUpstream(rp, rc, ue)
	}
	return rp
}

var errUpstreamTimeout = errors.New("route timeout exceeded")

// spoofableIPHeaders are removed from requests of untrusted senders: many
// frameworks take them as the client's address.
var spoofableIPHeaders = []string{"X-Real-Ip", "True-Client-Ip", "Cf-Connecting-Ip", "X-Client-Ip", "X-Cluster-Client-Ip", "Fastly-Client-Ip"}

func isTrusted(r *http.Request, trusted []netip.Prefix) bool {
	if len(trusted) == 0 {
		return false
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// proxyError answers an upstream failure with problem+json naming the
// route, the upstream and the cause.
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error, route, upstream string) {
	ri := infoFrom(r.Context())
	if ri != nil && h1.OutcomeUnknown(err) {
		ri.outcomeUnknown = true
	}
	if g.upstreamPolicyError(w, ri, err, route, upstream) {
		return
	}
	var mbe *http.MaxBytesError
	var cbe *clientBodyError
	switch {
	case errors.As(err, &mbe):
		writeProblem(w, r, problem.Problem{Type: problem.RequestBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
			Title: "Request body too large", Detail: fmt.Sprintf("the limit is %d bytes", mbe.Limit)})
	case errors.As(err, &cbe):
		// The client's body failed (too slow, hung up): not the upstream's
		// fault, never counted as an upstream error. Either way the
		// upstream got nothing, so the client must not see a success.
		switch {
		case isTimeout(cbe.err):
			g.clientFailed(r, route, "body_timeout", cbe)
			w.Header().Set("Connection", "close")
			problem.Write(w, problem.Problem{Type: problem.RequestTimeout, Status: http.StatusRequestTimeout,
				Title: "Request body not received in time", Detail: "the request body stalled before server.read_timeout; nothing was sent upstream"})
		case clientGone(cbe.err) || r.Context().Err() != nil:
			g.clientFailed(r, route, "gone", cbe)
			abortClient(w)
		default:
			writeProblem(w, r, problem.Problem{Type: problem.RequestCanceled, Status: http.StatusBadRequest,
				Title: "Request body could not be read", Detail: cbe.Error()})
		}
	case errors.Is(context.Cause(r.Context()), errUpstreamTimeout) || isTimeout(err) || errors.Is(err, resilience.ErrAttemptTimeout) || errors.Is(err, errUpstreamTimeout):
		g.upstreamFailed(w, ri, err, "timeout", problem.Problem{Type: problem.UpstreamTimeout, Status: http.StatusGatewayTimeout,
			Title: "Upstream timed out", Detail: fmt.Sprintf("route %s: upstream %s did not answer in time", route, upstream)}, route, upstream)
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		g.clientFailed(r, route, "gone", err)
		abortClient(w) // the client went away; there is nobody to answer
	default:
		g.upstreamFailed(w, ri, err, "unavailable", problem.Problem{Type: problem.UpstreamUnavailable, Status: http.StatusBadGateway,
			Title: "Upstream unavailable", Detail: fmt.Sprintf("route %s: upstream %s: %s", route, upstream, upstreamCause(err))}, route, upstream)
	}
}

// upstreamFailed counts, notes for the access log and answers an upstream
// failure of the given kind.
func (g *Gateway) upstreamFailed(w http.ResponseWriter, ri *reqInfo, err error, kind string, p problem.Problem, route, upstream string) {
	g.metrics.upstreamErrors.WithLabelValues(route, kind).Inc()
	if ri != nil {
		ri.upstreamErr = err.Error()
	}
	p.Extra = map[string]any{"route": route, "upstream": upstream}
	problem.WriteWith(w, p, ri.renderer())
}

// edgeProblems are the problem types of the HTTP layer's refusals, by
// status.
var edgeProblems = map[int]struct{ typ, title string }{
	http.StatusBadRequest:                  {problem.RequestInvalid, "Malformed request"},
	http.StatusRequestTimeout:              {problem.RequestTimeout, "Request not received in time"},
	http.StatusExpectationFailed:           {problem.ExpectationFailed, "Unsupported expectation"},
	http.StatusRequestHeaderFieldsTooLarge: {problem.RequestHeaderTooLarge, "Request head too large"},
	http.StatusNotImplemented:              {problem.TransferCodingUnsupported, "Unsupported transfer coding"},
	http.StatusHTTPVersionNotSupported:     {problem.HTTPVersionUnsupported, "Unsupported HTTP version"},
}

// rejectEdge is the h1.RejectFunc of the proxy listener's servers: a
// request refused by the HTTP layer, before routing, gets problem+json
// with a fresh X-Request-Id, and is counted and logged.
func (g *Gateway) rejectEdge(w http.ResponseWriter, r *http.Request, e *h1.EdgeError) {
	p, ok := edgeProblems[e.Status]
	if !ok {
		p = edgeProblems[http.StatusBadRequest]
	}
	id := newRequestID()
	w.Header().Set("X-Request-Id", id)
	g.metrics.clientErrors.WithLabelValues("_edge", p.typ).Inc()
	g.log.LogAttrs(r.Context(), slog.LevelWarn, "request refused by the HTTP layer", slog.String("request_id", id),
		slog.Int("status", e.Status), slog.String("detail", e.Detail), slog.String("remote", remoteIP(r)))
	// No route applies at the edge: the global errors format does.
	sw := &statusWriter{ResponseWriter: w, requestID: id, route: "_edge", render: g.state.Load().render}
	problem.Write(sw, problem.Problem{Type: p.typ, Status: e.Status, Title: p.title, Detail: e.Detail})
}

// clientFailed counts and logs a request that failed on the client's
// side (kind body_timeout or gone).
func (g *Gateway) clientFailed(r *http.Request, route, kind string, err error) {
	g.metrics.clientErrors.WithLabelValues(route, kind).Inc()
	g.log.LogAttrs(r.Context(), slog.LevelWarn, "client request failed before reaching the upstream",
		slog.String("request_id", r.Header.Get("X-Request-Id")), slog.String("route", route),
		slog.String("kind", kind), slog.String("error", err.Error()))
}

// abortClient ends a request whose client is gone without any answer: it
// marks the request aborted (logged and counted as 499) and panics with
// http.ErrAbortHandler, so that neither server sends the implicit
// "200 OK" of a handler that wrote nothing.
func abortClient(w http.ResponseWriter) {
	markAborted(w)
	panic(http.ErrAbortHandler)
}

// markAborted records, on the gateway's statusWriter under w, that the
// client left before any response (logged and counted as 499).
func markAborted(w http.ResponseWriter) {
	for {
		switch v := w.(type) {
		case *statusWriter:
			v.aborted = true
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// upstreamCause phrases a transport error for a client: the operation
// and the OS error, without Go's internal wrapping.
func upstreamCause(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) {
		if oe.Err != nil {
			return fmt.Sprintf("%s: %v", oe.Op, oe.Err)
		}
	}
	return err.Error()
}

// timedTransport records the upstream exchange time in the request info.
type timedTransport struct{ rt http.RoundTripper }

func (t timedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var body *bodyErrors
	switch {
	case r.ContentLength > 0 && r.ContentLength <= smallBody && r.Body != nil && r.Body != http.NoBody:
		// ReverseProxy hides every body behind a wrapper, so the transport
		// would write the headers and the body in two writes; a small body
		// read into memory goes out with the headers in one.
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			r.Body.Close()
			return nil, &clientBodyError{err}
		}
		r.Body.Close()
		r2 := *r
		r2.Body = io.NopCloser(bytes.NewReader(buf))
		r = &r2
	case r.Body != nil && r.Body != http.NoBody:
		// A streamed body: remember why reading it failed, so that a client
		// that sends too much, too slowly or hangs up is not reported as an
		// upstream failure.
		body = &bodyErrors{rc: r.Body}
		r2 := *r
		r2.Body = body
		r = &r2
	}
	start := time.Now()
	resp, err := t.rt.RoundTrip(r)
	if err != nil && body != nil {
		if berr := body.failure(); berr != nil {
			err = &clientBodyError{berr}
		}
	}
	ri := infoFrom(r.Context())
	if ri == nil {
		return resp, err
	}
	ri.upstreamDur = time.Since(start)
	// Whether the whole request was written: levee's transport marks its
	// own errors, net/http's Transport tells through the trace that
	// routeProxy set (sent).
	switch st := ri.sent; {
	case st == nil:
	case err != nil && st.wrote.Load() && !writeFailed(err):
		err = h1.Unknown(err)
	case err == nil && resp.Body != nil && resp.Body != http.NoBody && resp.StatusCode != http.StatusSwitchingProtocols:
		// (A 101's body is the upgraded connection, which ReverseProxy
		// needs as it is.)
		st.cut = unknownOnCut{rc: resp.Body, ri: ri}
		resp.Body = &st.cut
	}
	return resp, err
}

// writeFailed reports whether err is a failure to write to the
// connection. net/http's Transport reports WroteRequest once the request
// is in its buffer, before the flush that may still fail.
func writeFailed(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "write"
}

// unknownOnCut notes on the request info that a response body failed
// before its end (ReverseProxy then aborts the client): the request was
// sent, its outcome is unknown.
type unknownOnCut struct {
	rc io.ReadCloser
	ri *reqInfo
}

func (b *unknownOnCut) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.ri.outcomeUnknown = true
	}
	return n, err
}

func (b *unknownOnCut) Close() error { return b.rc.Close() }

// clientBodyError is a failure to read the client's request body: the
// client's fault or departure, not the upstream's.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// bodyErrors records the first error reading a request body. The
// transport may read the body on another goroutine, hence the lock.
type bodyErrors struct {
	rc  io.ReadCloser
	mu  sync.Mutex
	err error
}

func (b *bodyErrors) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *bodyErrors) Close() error { return b.rc.Close() }

func (b *bodyErrors) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// smallBody is the largest request body sent upstream in the same write
// as the headers.
const smallBody = h1.MaxBody

// bufferPool recycles the 8 KiB copy buffers of the reverse proxy (nginx's
// proxy buffers are 4–8 KiB; at a thousand connections 32 KiB each cost
// tens of MiB).
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 8<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// statusWriter notes the status and size of a response.
type statusWriter struct {
	http.ResponseWriter
	status  int
	bytes   int64
	aborted bool

	render    *errorRenderer // the route's error format; nil: problem+json
	requestID string
	route     string
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Flush forwards to the underlying writer (streaming responses).
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
