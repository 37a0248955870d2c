package h1

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EdgeError is a request the HTTP layer refuses before any handler sees
// it: a head net/http would refuse (malformed, too large, an unsupported
// transfer coding or version, a bad Host, an Expect other than
// 100-continue) or one whose framing is ambiguous (Content-Length with
// Transfer-Encoding, Transfer-Encoding in HTTP/1.0). The connection is
// closed after the answer.
type EdgeError struct {
	Status int    // 400, 417, 431, 501 or 505
	Detail string // what was wrong, for a human
}

// RejectFunc writes the answer to a refused request. The engine has set
// "Connection: close" on w and calls it in place of the handler; r is a
// stand-in request (no route applies). The engine imposes no shape: the
// gateway renders problem+json, a route template may render another.
type RejectFunc func(w http.ResponseWriter, r *http.Request, e *EdgeError)

// guardConn stands between net/http's server and a client connection
// (every connection under server.engine net/http; the ones the front
// server hands off under levee). It reads each request head whole before
// net/http sees a byte of it, and checks it the way net/http's server
// will (http.ReadRequest and the server's own checks), plus the framing
// rules net/http is lenient about (RFC 9112 section 6.1: a request with
// both Content-Length and Transfer-Encoding is refused and the connection
// closed). A refused head never reaches net/http: it gets a stand-in
// request the guarded handler answers through RejectFunc, then end of
// stream, so nothing after it is ever served. Net/http's own plain-text
// error answers are thereby replaced by the gateway's.
//
// Bodies pass through uncounted except Content-Length ones (counted, to
// find the next head). A chunked request, an Upgrade or a CONNECT ends
// the checking: the guarded handler closes the connection after a
// chunked request, and an upgraded one is no longer HTTP.
type guardConn struct {
	net.Conn
	pre   []byte // bytes the front server read before handing off
	limit int    // the largest head net/http accepts

	// Read state: only net/http's reads touch it, one at a time.
	in        []byte // read from the connection, not yet looked at
	head      []byte // the head being gathered
	lineStart int    // where its last, unfinished line starts
	out       []byte // checked bytes for net/http
	bodyLeft  int64
	lastPOST  bool
	pass      bool // no more checking: bytes pass as they come
	end       bool // refused: end of stream after out

	mu     sync.Mutex // for what other goroutines than the reader's touch
	reject *EdgeError // the refused head, for the guarded handler
	target string     // the stand-in request's target
	// headDeadline bounds the first head (the front server's
	// read_header_timeout, which the hand-off must not restart); zero
	// once the head is in or when unset.
	headDeadline time.Time
}

// guardKey holds the *guardConn in the context of the requests net/http
// serves from it.
type guardKey struct{}

func newGuardConn(c net.Conn, pre []byte, maxHeaderBytes int, headDeadline time.Time) *guardConn {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	return &guardConn{Conn: c, pre: pre, limit: maxHeaderBytes + 4096, headDeadline: headDeadline}
}

// readRaw reads the handed-off bytes first, then the connection's.
func (g *guardConn) readRaw(p []byte) (int, error) {
	if len(g.pre) > 0 {
		n := copy(p, g.pre)
		g.pre = g.pre[n:]
		return n, nil
	}
	return g.Conn.Read(p)
}

// Read implements net.Conn for net/http's server.
func (g *guardConn) Read(p []byte) (int, error) {
	for {
		switch {
		case len(g.out) > 0:
			n := copy(p, g.out)
			g.out = g.out[n:]
			return n, nil
		case g.end:
			return 0, io.EOF
		case g.pass && len(g.in) > 0:
			n := copy(p, g.in)
			g.in = g.in[n:]
			return n, nil
		case g.pass:
			return g.readRaw(p)
		case g.bodyLeft > 0 && len(g.in) > 0:
			n := copy(p[:min(int64(len(p)), g.bodyLeft)], g.in)
			g.in = g.in[n:]
			g.bodyLeft -= int64(n)
			return n, nil
		case g.bodyLeft > 0:
			n, err := g.readRaw(p[:min(int64(len(p)), g.bodyLeft)])
			g.bodyLeft -= int64(n)
			return n, err
		}
		if g.gatherHead() {
			continue
		}
		n, err := g.readRaw(p)
		g.in = append(g.in, p[:n]...)
		if err != nil && !g.gatherHead() {
			// Returned once: an aborted background read of net/http's
			// (a deadline in the past) is not the end of the connection.
			return 0, err
		}
	}
}

// gatherHead moves bytes from in to head, a line at a time, until the
// head is complete, then checks it; it reports whether there is progress
// (out or end set).
func (g *guardConn) gatherHead() bool {
	for len(g.in) > 0 {
		i := bytes.IndexByte(g.in, '\n')
		if i < 0 {
			g.head = append(g.head, g.in...)
			g.in = g.in[:0]
			break
		}
		g.head = append(g.head, g.in[:i+1]...)
		g.in = g.in[i+1:]
		lineStart := g.lineStart
		g.lineStart = len(g.head)
		if skip, ok := g.headEnds(lineStart); ok {
			g.lineStart = 0
			g.checkHead(skip)
			return true
		}
	}
	if len(g.head) > g.limit {
		g.refuse(&EdgeError{Status: http.StatusRequestHeaderFieldsTooLarge, Detail: "the request head exceeds server.max_header_bytes"})
		return true
	}
	return false
}

// headEnds reports whether the line of head starting at lineStart (and
// ending in LF) ends the head, and the prefix net/http skips first (up to
// four CR or LF after a POST). A line ends the head when it is empty or a
// lone CR, as net/http's reader sees it; an empty request line too (it
// refuses that head).
func (g *guardConn) headEnds(lineStart int) (skip int, ok bool) {
	h := g.head
	if g.lastPOST {
		for skip < 4 && skip < len(h) && (h[skip] == '\r' || h[skip] == '\n') {
			skip++
		}
	}
	if len(h) <= skip {
		return skip, false // all of it is skipped
	}
	line := h[max(lineStart, skip) : len(h)-1]
	return skip, len(line) == 0 || len(line) == 1 && line[0] == '\r'
}

// checkHead decides about a complete head (after skip leading bytes).
func (g *guardConn) checkHead(skip int) {
	head := g.head
	g.head = nil
	if len(head) > g.limit {
		g.refuse(&EdgeError{Status: http.StatusRequestHeaderFieldsTooLarge, Detail: "the request head exceeds server.max_header_bytes"})
		return
	}
	f, e := inspectHead(head[skip:])
	if e != nil {
		g.refuse(e)
		return
	}
	g.out = head
	g.mu.Lock()
	g.headDeadline = time.Time{}
	g.mu.Unlock()
	g.lastPOST = f.post
	g.bodyLeft = f.bodyLen
	g.pass = f.unframed
}

// refuse replaces the rest of the stream by a stand-in request the
// guarded handler answers with e.
func (g *guardConn) refuse(e *EdgeError) {
	var id [8]byte
	for i := range id {
		id[i] = byte(mrand.Uint32())
	}
	target := "/.levee-refused/" + hex.EncodeToString(id[:])
	g.mu.Lock()
	g.reject, g.target = e, target
	g.headDeadline = time.Time{}
	g.mu.Unlock()
	g.out = []byte("GET " + target + " HTTP/1.1\r\nHost: levee\r\nConnection: close\r\n\r\n")
	g.end = true
}

// refused returns the refusal r stands in for, or nil.
func (g *guardConn) refused(r *http.Request) *EdgeError {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.reject != nil && r.RequestURI == g.target {
		return g.reject
	}
	return nil
}

// SetReadDeadline keeps the first head within the front server's
// read_header_timeout: net/http sets its own from the hand-off on.
func (g *guardConn) SetReadDeadline(t time.Time) error {
	g.mu.Lock()
	hd := g.headDeadline
	g.mu.Unlock()
	if !hd.IsZero() && (t.IsZero() || t.After(hd)) {
		t = hd
	}
	return g.Conn.SetReadDeadline(t)
}

// SetDeadline is SetReadDeadline and the write deadline.
func (g *guardConn) SetDeadline(t time.Time) error {
	if err := g.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return g.SetReadDeadline(t)
}

// CloseWrite lets net/http half-close the connection after an error
// response, as it does on its own connections.
func (g *guardConn) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return syscall.ENOTSUP
}

// headFraming is what a checked head says about what follows it.
type headFraming struct {
	bodyLen  int64 // Content-Length body
	post     bool
	unframed bool // chunked, an upgrade, CONNECT: stop checking
}

// inspectHead checks a request head as net/http's server will, and for
// the framing ambiguities it lets through.
func inspectHead(head []byte) (headFraming, *EdgeError) {
	var f headFraming
	hf := framingFields(head)
	if hf.cl && hf.te {
		return f, &EdgeError{Status: http.StatusBadRequest, Detail: "Content-Length together with Transfer-Encoding (RFC 9112 section 6.1)"}
	}
	req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(head), len(head)+16))
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "transfer encoding") {
			return f, &EdgeError{Status: http.StatusNotImplemented, Detail: "unsupported transfer encoding"}
		}
		return f, &EdgeError{Status: http.StatusBadRequest, Detail: msg}
	}
	if e := serverChecks(req, &hf); e != nil {
		return f, e
	}
	if hf.te && req.ProtoMinor == 0 {
		return f, &EdgeError{Status: http.StatusBadRequest, Detail: "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)"}
	}
	f.post = req.Method == http.MethodPost
	switch {
	case hf.te, req.Method == http.MethodConnect, len(req.Header["Upgrade"]) > 0, req.ContentLength < 0:
		f.unframed = true
	default:
		f.bodyLen = req.ContentLength
	}
	return f, nil
}

// serverChecks are those net/http's server makes after http.ReadRequest
// (conn.readRequest and the Expect handling of conn.serve).
func serverChecks(req *http.Request, hf *headFields) *EdgeError {
	bad := func(s string) *EdgeError { return &EdgeError{Status: http.StatusBadRequest, Detail: s} }
	isH2Upgrade := req.Method == "PRI" && req.RequestURI == "*" && req.Proto == "HTTP/2.0"
	if req.ProtoMajor != 1 && !isH2Upgrade {
		return &EdgeError{Status: http.StatusHTTPVersionNotSupported, Detail: "unsupported protocol version"}
	}
	if req.ProtoAtLeast(1, 1) && hf.hosts == 0 && !isH2Upgrade && req.Method != http.MethodConnect {
		return bad("missing required Host header")
	}
	if hf.hosts == 1 && !validHostHeader(hf.host) {
		return bad("malformed Host header")
	}
	for k, vv := range req.Header {
		if !Token(k) {
			return bad("invalid header name")
		}
		for _, v := range vv {
			if !ValidFieldValue(v) {
				return bad("invalid header value")
			}
		}
	}
	if ex := req.Header.Get("Expect"); ex != "" && !HasToken(req.Header["Expect"], "100-continue") {
		return &EdgeError{Status: http.StatusExpectationFailed, Detail: "unsupported Expect"}
	}
	return nil
}

// headFields is what framingFields finds in a head's field lines.
type headFields struct {
	cl, te bool   // a Content-Length, a Transfer-Encoding line
	hosts  int    // Host lines
	host   string // the first one's value (http.ReadRequest drops it)
}

// framingFields scans the head's field lines for the ones the guard
// decides on (names case-insensitive; continuation lines are not field
// lines).
func framingFields(head []byte) headFields {
	var f headFields
	i := bytes.IndexByte(head, '\n')
	for rest := head[i+1:]; len(rest) > 0; {
		line := rest
		if j := bytes.IndexByte(rest, '\n'); j >= 0 {
			line, rest = rest[:j], rest[j+1:]
		} else {
			rest = nil
		}
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		switch name := string(line[:colon]); {
		case strings.EqualFold(name, "Content-Length"):
			f.cl = true
		case strings.EqualFold(name, "Transfer-Encoding"):
			f.te = true
		case strings.EqualFold(name, "Host"):
			if f.hosts++; f.hosts == 1 {
				f.host = strings.Trim(string(line[colon+1:]), " \t\r")
			}
		}
	}
	return f
}

// validHostHeader is httpguts.ValidHostHeader: net/http's lenient check.
func validHostHeader(h string) bool {
	for i := 0; i < len(h); i++ {
		c := h[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if strings.IndexByte("!$%&()*+,-.:;=[]'_~", c) < 0 {
			return false
		}
	}
	return true
}

// guardedHandler answers the stand-in requests of refused heads and
// closes the connection after a chunked request (its guard stopped
// checking); everything else goes to next.
type guardedHandler struct {
	next   http.Handler
	reject RejectFunc
}

func (h guardedHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g, ok := r.Context().Value(guardKey{}).(*guardConn); ok {
		if e := g.refused(r); e != nil {
			w.Header().Set("Connection", "close")
			h.reject(w, r, e)
			return
		}
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
	}
	h.next.ServeHTTP(w, r)
}

// GuardServer makes srv serve through guards: its handler answers
// refused heads with reject, and its connections' guards are found from
// their requests. srv must then serve guarded connections (guardListener
// or the front server's hand-off).
func GuardServer(srv *http.Server, reject RejectFunc) {
	srv.Handler = guardedHandler{next: srv.Handler, reject: reject}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if g, ok := c.(*guardConn); ok {
			return context.WithValue(ctx, guardKey{}, g)
		}
		return ctx
	}
}

// GuardListener returns ln with every accepted connection wrapped in a
// guard (see GuardServer), heads bounded by maxHeaderBytes (net/http's
// default when <= 0) plus net/http's 4 KiB of slack. Accept errors are
// ln's.
func GuardListener(ln net.Listener, maxHeaderBytes int) net.Listener {
	return guardListener{Listener: ln, maxHeaderBytes: maxHeaderBytes}
}

// guardListener wraps every accepted connection in a guard.
type guardListener struct {
	net.Listener
	maxHeaderBytes int
}

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newGuardConn(c, nil, l.maxHeaderBytes, time.Time{}), nil
}
