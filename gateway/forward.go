package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/leveehq/levee/idempotency"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/leveehq/levee/internal/h1"
)

// routeProxy forwards a route's requests to its upstream.
//
// Most requests take the direct path: the upstream request is written
// straight from the incoming one into the connection's buffer (no
// request or header clone), sent by levee's HTTP/1.1 transport in the
// handler's goroutine, and the response is copied back without
// httputil.ReverseProxy. The direct path is taken when the upstream is
// http:// on levee's transport and the request has no body or a body of
// known length up to 64 KiB, no Upgrade, no "Expect: 100-continue" and no
// "Connection: upgrade" token (h1Eligible; a client's "Connection: close"
// is about its own connection and changes nothing). Everything else (https upstreams,
// WebSockets, streamed or large uploads, a custom Options.Transport) goes
// through httputil.ReverseProxy. Both paths put the same request on the
// wire: hop-by-hop headers removed (the fixed list and those the
// Connection header names), the Host of the upstream, X-Forwarded-For,
// -Host and -Proto set (kept from trusted proxies only), client-IP headers
// of untrusted senders removed, TE kept only as "trailers".
//
// Informational upstream responses (103 Early Hints) are dropped on the
// direct path, as nginx drops them; the ReverseProxy path forwards them.
//
// A client that disconnects does not abort the upstream exchange: it
// runs until the upstream answers or the route timeout (HAProxy's default;
// for an upstream that takes payments, finishing the request is what a
// retry with the same Idempotency-Key then replays).
type routeProxy struct {
	g       *Gateway
	name    string
	target  *url.URL
	addr    string // host:port of target, for the direct path
	timeout time.Duration
	trusted []netip.Prefix
	h1      *h1.Transport // nil: every request goes through rp
	rp      *httputil.ReverseProxy
	up      *proxyUpstream // the named upstream's policies; nil: none (upstream_proxy.go)
}

// hopHeaders are removed from requests and responses (RFC 9110 section
// 7.6.1, and the ones httputil.ReverseProxy removes).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func isHopHeader(k string) bool {
	for _, h := range hopHeaders {
		if h == k {
			return true
		}
	}
	return false
}

// reportUnknownOutcome tells the idempotency middleware when the whole
// request reached the upstream and its answer was lost (timeout,
// connection lost, head or body cut): it then holds the key instead of
// releasing it — also when the copy panics to abort the client. Deferred
// by the proxy, so it runs before the handler returns, as the middleware
// requires.
func reportUnknownOutcome(ctx context.Context, ri *reqInfo) {
	if !ri.outcomeUnknown {
		return
	}
	cause := "upstream outcome unknown"
	if ri.upstreamErr != "" {
		cause += ": " + ri.upstreamErr
	}
	idempotency.ReportUnknownOutcome(ctx, errors.New(cause))
}

func (p *routeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.up != nil && p.up.strip != "" {
		r = p.up.stripPrefix(r)
	}
	if ri := infoFrom(r.Context()); ri != nil {
		defer reportUnknownOutcome(r.Context(), ri)
	}
	if p.h1 == nil || !directEligible(r) {
		// Detached from the client like the direct path; bounded by the
		// route timeout.
		ctx, cancel := context.WithTimeoutCause(context.WithoutCancel(r.Context()), p.timeout, errUpstreamTimeout)
		defer cancel()
		if ri := infoFrom(ctx); ri != nil {
			// Tells timedTransport whether net/http's Transport wrote the
			// whole request (an unknown outcome if it then fails).
			ri.sent = newSentTracker()
			ctx = httptrace.WithClientTrace(ctx, &ri.sent.trace)
		}
		p.rp.ServeHTTP(w, r.WithContext(ctx))
		return
	}
	p.direct(w, r)
}

// directEligible reports whether r, an incoming request, can take the
// direct path: what h1Eligible accepts, a ContentLength of 0 meaning no
// body (a server request's convention). A client's "Connection: close"
// does not matter here: it is hop-by-hop, about the client's connection.
func directEligible(r *http.Request) bool {
	bodyLen := int64(0)
	if r.Body != nil && r.Body != http.NoBody {
		bodyLen = r.ContentLength
	}
	return h1.Eligible(r.Method, r.Header, bodyLen)
}

// headPool holds the buffers upstream request heads are written into.
var headPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func (p *routeProxy) direct(w http.ResponseWriter, r *http.Request) {
	ri := infoFrom(r.Context())
	deadline := time.Now().Add(p.timeout)
	bp := headPool.Get().(*[]byte)
	defer headPool.Put(bp)
	buf := (*bp)[:0]
	var err error
	if buf, err = p.appendHead(buf, r); err != nil {
		h1.CloseBody(r)
		p.g.proxyError(w, r, err, p.name, p.target.Host)
		return
	}
	headEnd := len(buf)
	// The small body is read into the same buffer, so that head and body
	// leave in one write.
	if r.Body != nil && r.Body != http.NoBody {
		if r.ContentLength > 0 {
			n := int(r.ContentLength)
			if cap(buf)-len(buf) < n {
				nb := make([]byte, len(buf), len(buf)+n)
				copy(nb, buf)
				buf = nb
			}
			body := buf[len(buf) : len(buf)+n]
			_, err = io.ReadFull(r.Body, body)
			buf = buf[:len(buf)+n]
		}
		r.Body.Close()
		if err != nil {
			p.g.proxyError(w, r, &clientBodyError{err}, p.name, p.target.Host)
			return
		}
	}
	if cap(buf) <= 64<<10 {
		*bp = buf[:0]
	}
	start := time.Now()
	var resp *http.Response
	if p.up != nil {
		resp, err = p.up.send(p, r, ri, buf, headEnd, deadline)
	} else {
		resp, err = p.h1.Send(context.Background(), p.addr, deadline, h1.Replayable(r), r.Method, nil, func(bw *bufio.Writer) error {
			_, err := bw.Write(buf)
			return err
		})
	}
	if ri != nil {
		ri.upstreamDur = time.Since(start)
	}
	if err != nil {
		p.g.proxyError(w, r, err, p.name, p.target.Host)
		return
	}
	p.copyResponse(w, r, resp)
	if ri != nil {
		ri.upstreamDur = time.Since(start)
	}
}

// appendHead appends the upstream request's head (request line and
// headers, through the blank line) to b.
func (p *routeProxy) appendHead(b []byte, r *http.Request) ([]byte, error) {
	if !h1.Token(r.Method) {
		return b, fmt.Errorf("net/http: invalid method %q", r.Method)
	}
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = p.appendTarget(b, r.URL)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, p.target.Host...)
	b = append(b, "\r\n"...)
	h := r.Header
	conn := h["Connection"]
	trusted := isTrusted(r, p.trusted)
	for k, vs := range h {
		if skipRequestHeader(k, conn, trusted) {
			continue
		}
		if k == "Te" {
			if h1.HasToken(vs, "trailers") {
				b = append(b, "Te: trailers\r\n"...)
			}
			continue
		}
		if !h1.Token(k) {
			return b, fmt.Errorf("net/http: invalid header field name %q", k)
		}
		for _, v := range vs {
			if !h1.ValidFieldValue(v) {
				return b, fmt.Errorf("net/http: invalid header field value for %q", k)
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if p.up == nil || !p.up.egress { // a third party is not told our addresses
		var err error
		if b, err = appendForwarded(b, r, trusted); err != nil {
			return b, err
		}
	}
	if r.ContentLength > 0 && r.Body != nil && r.Body != http.NoBody {
		b = append(b, "Content-Length: "...)
		b = appendInt(b, r.ContentLength)
		b = append(b, "\r\n"...)
	} else if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		// What net/http sends for a bodiless POST, PUT or PATCH.
		b = append(b, "Content-Length: 0\r\n"...)
	}
	return append(b, "\r\n"...), nil
}

// appendForwarded appends X-Forwarded-For, -Host and -Proto, as
// httputil.ProxyRequest.SetXForwarded, keeping a trusted proxy's values.
func appendForwarded(b []byte, r *http.Request, trusted bool) ([]byte, error) {
	h := r.Header
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		b = append(b, "X-Forwarded-For: "...)
		if trusted {
			for _, v := range h["X-Forwarded-For"] {
				if !h1.ValidFieldValue(v) {
					return b, errors.New("net/http: invalid header field value for \"X-Forwarded-For\"")
				}
				b = append(b, v...)
				b = append(b, ", "...)
			}
		}
		b = append(b, ip...)
		b = append(b, "\r\n"...)
	}
	fwdHost, fwdProto := r.Host, "http"
	if r.TLS != nil {
		fwdProto = "https"
	}
	if trusted {
		if v := h.Get("X-Forwarded-Host"); v != "" {
			fwdHost = v
		}
		if v := h.Get("X-Forwarded-Proto"); v != "" {
			fwdProto = v
		}
	}
	if !h1.ValidFieldValue(fwdHost) || !h1.ValidFieldValue(fwdProto) {
		return b, errors.New("net/http: invalid X-Forwarded-Host or X-Forwarded-Proto value")
	}
	b = append(b, "X-Forwarded-Host: "...)
	b = append(b, fwdHost...)
	b = append(b, "\r\nX-Forwarded-Proto: "...)
	b = append(b, fwdProto...)
	return append(b, "\r\n"...), nil
}

func appendInt(b []byte, n int64) []byte {
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// skipRequestHeader reports whether the incoming header k is not copied
// to the upstream request as it is.
func skipRequestHeader(k string, conn []string, trusted bool) bool {
	switch k {
	case "Host", "Content-Length", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true // written by appendHead
	case "Forwarded":
		return true // removed, as httputil.ReverseProxy does with a Rewrite
	case "Te":
		return false // kept as "trailers" only
	}
	if isHopHeader(k) || h1.HasToken(conn, k) {
		return true
	}
	if !trusted {
		for _, s := range spoofableIPHeaders {
			if s == k {
				return true
			}
		}
	}
	return false
}

// appendTarget appends the request-target: the route upstream's path
// joined with the request's, and both queries, as httputil.ProxyRequest.SetURL.
func (p *routeProxy) appendTarget(b []byte, u *url.URL) []byte {
	t := p.target
	query := cleanQueryParams(u.RawQuery)
	if t.Path == "" && t.RawQuery == "" {
		b = append(b, u.EscapedPath()...)
		if query != "" || u.ForceQuery {
			b = append(b, '?')
			b = append(b, query...)
		}
		return b
	}
	out := *u
	out.RawQuery = query
	out.Path, out.RawPath = joinURLPath(t, u)
	if t.RawQuery == "" || query == "" {
		out.RawQuery = t.RawQuery + query
	} else {
		out.RawQuery = t.RawQuery + "&" + query
	}
	out.Scheme, out.Host, out.Opaque = "", "", ""
	return append(b, out.RequestURI()...)
}

// cleanQueryParams is httputil.ReverseProxy's: a query with a semicolon, a
// bad percent-escape or more than 10,000 parameters is re-encoded from
// what url.ParseQuery keeps, so that the upstream cannot read parameters
// levee (or a WAF before it) did not (Go 1.17's parameter-smuggling fix).
// (ReverseProxy also re-encodes every query under a non-default
// GODEBUG=urlmaxqueryparams; levee does not look at GODEBUG.)
func cleanQueryParams(s string) string {
	reencode := func(s string) string {
		v, _ := url.ParseQuery(s)
		return v.Encode()
	}
	if s == "" {
		return s
	}
	if strings.Count(s, "&")+1 > 10000 {
		return reencode(s)
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return reencode(s)
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return reencode(s)
			}
			i += 3
		default:
			i++
		}
	}
	return s
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// joinURLPath is httputil's: the target's path, then the request's, with
// one slash between them.
func joinURLPath(a, b *url.URL) (path, rawpath string) {
	if a.RawPath == "" && b.RawPath == "" {
		return singleJoiningSlash(a.Path, b.Path), ""
	}
	apath, bpath := a.EscapedPath(), b.EscapedPath()
	aslash, bslash := strings.HasSuffix(apath, "/"), strings.HasPrefix(bpath, "/")
	switch {
	case aslash && bslash:
		return a.Path + b.Path[1:], apath + bpath[1:]
	case !aslash && !bslash:
		return a.Path + "/" + b.Path, apath + "/" + bpath
	}
	return a.Path + b.Path, apath + bpath
}

func singleJoiningSlash(a, b string) string {
	aslash, bslash := strings.HasSuffix(a, "/"), strings.HasPrefix(b, "/")
	switch {
	case aslash && bslash:
		return a + b[1:]
	case !aslash && !bslash:
		return a + "/" + b
	}
	return a + b
}

// copyPool holds the buffers response bodies are copied through.
var copyPool = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}

// copyResponse sends resp to the client: hop-by-hop headers removed,
// trailers forwarded, streamed (unknown-length) bodies flushed as they
// arrive. A failure after the status was sent aborts the client
// connection (http.ErrAbortHandler), as httputil.ReverseProxy does, so the
// client cannot take a cut body for a whole one.
func (p *routeProxy) copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response) {
	defer resp.Body.Close()
	rh := resp.Header
	for _, v := range rh["Connection"] {
		for t := range h1.Tokens(v) {
			delete(rh, http.CanonicalHeaderKey(t))
		}
	}
	for _, k := range hopHeaders {
		delete(rh, k)
	}
	dst := w.Header()
	for k, vs := range rh {
		if old := dst[k]; len(old) > 0 { // set by levee (X-Request-Id, RateLimit): both, as ReverseProxy
			dst[k] = append(old[:len(old):len(old)], vs...)
			continue
		}
		dst[k] = vs
	}
	if _, ok := rh["Content-Type"]; !ok {
		dst["Content-Type"] = nil // no sniffing: a proxy passes the upstream's headers as they are
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead || resp.Body == http.NoBody {
		return
	}
	cp := copyPool.Get().(*[]byte)
	defer copyPool.Put(cp)
	flush := resp.ContentLength < 0
	fl, _ := w.(http.Flusher)
	buf := *cp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				panic(http.ErrAbortHandler) // the client is gone
			}
			if flush && fl != nil {
				fl.Flush()
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			if ri := infoFrom(r.Context()); ri != nil {
				ri.outcomeUnknown = true // answered in part: the request was sent
				ri.upstreamErr = "response body cut: " + rerr.Error()
			}
			p.g.log.Warn("upstream response body failed; aborting the client connection",
				"route", p.name, "upstream", p.target.Host, "error", rerr)
			panic(http.ErrAbortHandler)
		}
	}
	for k, vs := range resp.Trailer {
		dst[http.TrailerPrefix+k] = vs
	}
}

// clientGone reports whether err says the client's connection ended.
func clientGone(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
