package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Transport is an HTTP/1.1 upstream client that sends plain-HTTP
// requests on pooled keep-alive connections in the caller's goroutine: the
// request is written with one flush (headers and a small in-memory body in
// one write) and the response is read by the same goroutine, with no
// per-connection reader/writer goroutines and no channels (http.Transport
// hands every request to two goroutines per connection; see
// docs/benchmarks.md, "Why the stock proxy is at 0.17–0.4×").
//
// It handles the requests h1Handles accepts (http:// URLs, the shapes of
// Eligible) and delegates everything else to its fallback: other
// schemes (TLS, HTTP/2), CONNECT, Upgrade, "Expect: 100-continue", bodies
// over 64 KiB or of unknown length, req.Close or "Connection: close".
//
// Retry rule — the reason levee exists is that a duplicated POST must
// never reach the upstream twice, so:
//
//  1. Before an idle connection is reused it is checked without blocking
//     (a MSG_PEEK recv on the socket): end of stream, a reset or any
//     unexpected byte discards it, and another idle connection is tried or
//     a new one dialed. Nothing has been sent on a discarded connection.
//  2. A dial failure is returned as-is: nothing was sent.
//  3. Once writing of the request has started on a connection (reused or
//     fresh), any failure to write it or to read the response is returned
//     as an error (the proxy answers 502) and the request is NOT sent
//     again — the upstream may have received and processed it. levee's
//     idempotency layer, not the transport, decides about retries.
//  4. The single exception: a request whose method is GET, HEAD, OPTIONS
//     or TRACE and which has no body (Body nil or http.NoBody), whose
//     failure happened on a reused connection before any byte of a
//     response arrived, while its context is still live, is sent once
//     more on a freshly dialed connection (where net/http's Transport
//     would). Never more than once, never for any other method, never
//     with a body, never after a response that arrived malformed (a bad
//     status line, conflicting lengths, an unsolicited 101).
//
// An idle connection closed by the upstream after the check in 1 (a
// keep-alive timeout racing the request) therefore costs a 502 for a POST,
// never a duplicate.
//
// Every failure after the whole request was flushed to the connection —
// reading the response head or body, a timeout, a malformed answer — is
// marked Unknown (the upstream may have acted); dial and write
// failures are not (see OutcomeUnknown).
//
// The idle pool keeps at most maxIdlePerHost connections per host:port
// (most recently used first); a connection idle for more than 90 s is
// closed when it would be reused (no background goroutine). The number of
// connections in use is not bounded. The request context's deadline is
// applied with conn.SetDeadline and its cancellation closes the
// connection, until the response body is read to EOF or closed. Unlike
// http.Transport it does not add "Accept-Encoding: gzip" nor decompress,
// takes no proxy from the environment, and writes the whole request before
// reading the response (an upstream that answers early and stops reading a
// large streamed body makes the write fail or time out).
type Transport struct {
	fallback http.RoundTripper
	maxIdle  int
	dialer   net.Dialer
	// DialContext, when set before the first request, replaces the
	// default dialer (5 s timeout, 30 s keep-alive).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)

	mu   sync.Mutex
	idle map[string][]*h1Conn // by host:port, most recently used last
}

const (
	// h1DefaultMaxIdlePerHost is used when NewTransport gets maxIdlePerHost <= 0
	// (the figure of NewTransport).
	h1DefaultMaxIdlePerHost = 1024
	// h1IdleTimeout is how long a pooled connection may stay unused.
	h1IdleTimeout = 90 * time.Second
	// h1MaxHeaderBytes bounds the bytes read from the upstream while
	// parsing one response's status line and headers.
	h1MaxHeaderBytes = 1 << 20
	// h1Max1xx bounds the informational responses skipped before the final one
	// (http.Transport allows 5).
	h1Max1xx = 5
	// h1BufSize is the size of each connection's read buffer.
	h1BufSize = 4 << 10
	// h1WriteBufSize is the size of its write buffer: small, because the
	// direct proxy path hands over the whole request in one Write, which
	// bufio passes straight to the socket when it exceeds the buffer (a
	// thousand idle upstream connections then hold 3 MiB less).
	h1WriteBufSize = 1 << 10
	// h1MsgPeek is MSG_PEEK, 0x2 on every platform with BSD sockets; the
	// syscall package does not define it everywhere (Windows).
	h1MsgPeek = 0x2
)

var (
	errH1ClosedBody    = errors.New("http: read on closed response body")
	errH1Unexpected101 = errors.New("unexpected 101 Switching Protocols to a request without Upgrade")
	errH1TooMany1xx    = errors.New("too many 1xx informational responses")
	errH1HeaderTooLong = errors.New("response headers exceed 1 MiB")
)

// NewTransport returns an Transport that delegates the requests it
// does not handle to fallback (http.DefaultTransport when nil; the
// gateway passes a Transport tuned for a proxy) and keeps up to
// maxIdlePerHost idle connections per upstream (1024 when <= 0).
func NewTransport(fallback http.RoundTripper, maxIdlePerHost int) *Transport {
	if fallback == nil {
		fallback = http.DefaultTransport
	}
	if maxIdlePerHost <= 0 {
		maxIdlePerHost = h1DefaultMaxIdlePerHost
	}
	return &Transport{
		fallback: fallback,
		maxIdle:  maxIdlePerHost,
		dialer:   net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		idle:     make(map[string][]*h1Conn),
	}
}

// RoundTrip implements http.RoundTripper; see Transport for what it
// handles and when it sends a request again.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !h1Handles(req) {
		return t.fallback.RoundTrip(notReplayable(req))
	}
	if err := h1Validate(req); err != nil {
		CloseBody(req)
		return nil, err
	}
	ctx := req.Context()
	var deadline time.Time
	if dl, ok := ctx.Deadline(); ok {
		deadline = dl
	}
	resp, err := t.Send(ctx, h1Addr(req), deadline, Replayable(req), req.Method, req, func(bw *bufio.Writer) error {
		return req.Write(bw) // closes the body
	})
	if err != nil {
		CloseBody(req) // a no-op when req.Write already closed it
	}
	return resp, err
}

// send runs one exchange with the retry rules of Transport: write is
// called with the connection's buffered writer (flushed by send) and the
// final response to readReq is returned (only its Method is read; nil
// stands for a request of method on the connection's own http.Request,
// which the response then points to). A non-zero deadline bounds the
// whole exchange, reading the body included; ctx's cancellation closes
// the connection.
func (t *Transport) Send(ctx context.Context, addr string, deadline time.Time, replayable bool, method string, readReq *http.Request, write func(*bufio.Writer) error) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("upstream %s: %w", addr, err)
		}
		pc, reused, err := t.getConn(ctx, addr, deadline, attempt > 0)
		if err != nil {
			return nil, err // nothing was sent
		}
		req := readReq
		if req == nil {
			pc.readReq = http.Request{Method: method}
			req = &pc.readReq
		}
		resp, err := t.exchange(ctx, pc, deadline, req, write)
		if err == nil {
			return resp, nil
		}
		if attempt == 0 && reused && replayable && pc.lr.got == 0 && ctx.Err() == nil && (deadline.IsZero() || time.Now().Before(deadline)) {
			continue // rule 4: bodyless GET/HEAD/OPTIONS/TRACE, once, on a new connection
		}
		return nil, err
	}
}

// CloseIdleConnections closes the pooled connections, and the fallback's.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = make(map[string][]*h1Conn)
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.c.Close()
		}
	}
	if ci, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// exchange writes req on pc and reads the final response. On error pc is
// closed. On success pc belongs to the response body (or is back in the
// pool when the response has no body).
func (t *Transport) exchange(ctx context.Context, pc *h1Conn, deadline time.Time, req *http.Request, write func(*bufio.Writer) error) (*http.Response, error) {
	if !deadline.IsZero() {
		_ = pc.c.SetDeadline(deadline)
		pc.deadline = true
	}
	pc.lr.got = 0
	stop := h1NoStop
	pc.canceled.Store(nil)
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() {
			err := ctx.Err()
			pc.canceled.Store(&err)
			pc.close()
		})
	}
	sent := false // the whole request is written: failures are unknown outcomes
	fail := func(op string, err error) (*http.Response, error) {
		stop()
		pc.close()
		if cerr := ctx.Err(); cerr != nil {
			err = fmt.Errorf("upstream %s: %s: %w (%w)", pc.addr, op, cerr, err)
		} else {
			err = fmt.Errorf("upstream %s: %s: %w", pc.addr, op, err)
		}
		if sent {
			err = Unknown(err)
		}
		return nil, err
	}
	if err := write(pc.bw); err != nil {
		return fail("write", err)
	}
	if err := pc.bw.Flush(); err != nil {
		return fail("write", err)
	}
	sent = true
	trace := httptrace.ContextClientTrace(ctx)
	for n1xx := 0; ; {
		pc.lr.n = h1MaxHeaderBytes
		resp, err := readResponse(pc.br, req)
		pc.lr.n = -1
		if err != nil {
			return fail("read", err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return fail("read", errH1Unexpected101)
		}
		if resp.StatusCode < 200 { // 1xx: informational, the final response follows
			if n1xx++; n1xx > h1Max1xx {
				return fail("read", errH1TooMany1xx)
			}
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return fail("read", err)
				}
			}
			continue
		}
		keep := !resp.Close
		if resp.Body == http.NoBody { // HEAD, 204, 304, Content-Length: 0
			t.release(pc, stop, keep)
			return resp, nil
		}
		resp.Body = &h1Body{t: t, pc: pc, rc: resp.Body, stop: stop, keep: keep}
		return resp, nil
	}
}

// h1NoStop stands for context.AfterFunc's stop when the context is never
// done.
func h1NoStop() bool { return true }

// release ends pc's exchange: it goes back to the pool when both sides
// keep it alive, the context did not close it and nothing unread is
// buffered; otherwise it is closed.
func (t *Transport) release(pc *h1Conn, stop func() bool, keep bool) {
	if !stop() || !keep || pc.br.Buffered() > 0 {
		pc.close()
		return
	}
	if pc.deadline {
		_ = pc.c.SetDeadline(time.Time{})
		pc.deadline = false
	}
	now := time.Now()
	t.mu.Lock()
	list := t.idle[pc.addr]
	// The list is oldest first: drop connections idle too long from the
	// bottom, which steady traffic reusing the top would never reach.
	var stale []*h1Conn
	for len(list) > 0 && now.Sub(list[0].idleSince) > h1IdleTimeout {
		stale = append(stale, list[0])
		list[0] = nil
		list = list[1:]
	}
	if len(list) >= t.maxIdle {
		t.idle[pc.addr] = list
		t.mu.Unlock()
		pc.close()
		closeAll(stale)
		return
	}
	pc.idleSince = now
	t.idle[pc.addr] = append(list, pc)
	t.mu.Unlock()
	closeAll(stale)
}

func closeAll(conns []*h1Conn) {
	for _, c := range conns {
		c.close()
	}
}

// getConn returns a live idle connection to addr (reused true) or dials
// one. fresh skips the pool.
func (t *Transport) getConn(ctx context.Context, addr string, deadline time.Time, fresh bool) (pc *h1Conn, reused bool, err error) {
	for !fresh {
		pc := t.popIdle(addr)
		if pc == nil {
			break
		}
		if pc.alive() {
			return pc, true, nil
		}
		pc.close()
	}
	if t.DialContext != nil {
		c, err := t.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, false, err
		}
		return newH1Conn(c, addr), false, nil
	}
	d := &t.dialer
	if !deadline.IsZero() {
		d2 := t.dialer
		d2.Deadline = deadline
		d = &d2
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return newH1Conn(c, addr), false, nil
}

// popIdle takes the most recently used idle connection to addr, closing
// the ones idle for longer than h1IdleTimeout.
func (t *Transport) popIdle(addr string) *h1Conn {
	t.mu.Lock()
	list := t.idle[addr]
	n := len(list)
	if n == 0 {
		t.mu.Unlock()
		return nil
	}
	pc := list[n-1]
	list[n-1] = nil
	if time.Since(pc.idleSince) > h1IdleTimeout {
		// The rest of the list is older still.
		stale := append([]*h1Conn{pc}, list[:n-1]...)
		clear(list)
		t.idle[addr] = list[:0]
		t.mu.Unlock()
		for _, s := range stale {
			s.close()
		}
		return nil
	}
	t.idle[addr] = list[:n-1]
	t.mu.Unlock()
	return pc
}

// h1Conn is one upstream connection with its buffers.
type h1Conn struct {
	c         net.Conn
	addr      string
	lr        h1LimitReader
	br        *bufio.Reader
	bw        *bufio.Writer
	raw       syscall.RawConn // nil when c has no file descriptor
	peekFn    func(fd uintptr) bool
	peekN     int
	peekErr   error
	peekBuf   [1]byte
	idleSince time.Time
	deadline  bool         // a deadline is set on c
	readReq   http.Request // what the response of a direct-path exchange answers
	// canceled is the context's error once its cancellation closed c.
	canceled atomic.Pointer[error]
}

// newH1Conn wraps a dialed connection.
func newH1Conn(c net.Conn, addr string) *h1Conn {
	pc := &h1Conn{c: c, addr: addr}
	pc.lr = h1LimitReader{r: c, n: -1}
	pc.br = bufio.NewReaderSize(&pc.lr, h1BufSize)
	pc.bw = bufio.NewWriterSize(c, h1WriteBufSize)
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			pc.raw = raw
			pc.peekFn = pc.peekFD // bound once: no allocation per check
		}
	}
	return pc
}

// close closes the connection (safe to call more than once and
// concurrently).
func (pc *h1Conn) close() { _ = pc.c.Close() }

// peekFD is the RawConn.Read callback of alive: one non-blocking
// MSG_PEEK recv (Go's sockets are non-blocking), never waiting.
func (pc *h1Conn) peekFD(fd uintptr) bool {
	pc.peekN, pc.peekErr = h1Recv(syscall.Recvfrom, fd, pc.peekBuf[:], h1MsgPeek)
	return true
}

// h1Recv calls recvfrom whatever the platform's descriptor type
// (int on Unix, Handle on Windows, where it reports EWINDOWS).
func h1Recv[FD ~int | ~uintptr](recvfrom func(FD, []byte, int) (int, syscall.Sockaddr, error), fd uintptr, p []byte, flags int) (int, error) {
	n, _, err := recvfrom(FD(fd), p, flags)
	return n, err
}

// alive reports, without blocking, whether an idle connection can carry
// a request: the upstream has not closed or reset it and sent nothing
// unrequested.
func (pc *h1Conn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false
	}
	if pc.raw != nil {
		if err := pc.raw.Read(pc.peekFn); err != nil {
			return false
		}
		switch err := pc.peekErr; {
		case err == nil:
			return false // EOF (n == 0) or an unexpected byte (n == 1)
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK):
			return true
		case !errors.Is(err, errors.ErrUnsupported):
			return false // ECONNRESET and the like
		}
	}
	// No MSG_PEEK here (Windows, non-socket connections): best effort. A
	// deadline already in the past would fail the read before it reaches
	// the socket, so it is set just ahead; a FIN that has arrived is then
	// seen as EOF. A dead connection missed here costs an error, never a
	// duplicate (see the rules on Transport).
	_ = pc.c.SetReadDeadline(time.Now().Add(time.Microsecond))
	_, err := pc.br.Peek(1)
	_ = pc.c.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// h1LimitReader bounds the bytes read from the connection while a
// response's headers are parsed (n >= 0); n < 0 means no limit. got
// counts the bytes read since the exchange began (rule 4 of Transport).
type h1LimitReader struct {
	r   io.Reader
	n   int64
	got int64
}

// Read implements io.Reader.
func (l *h1LimitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		n, err := l.r.Read(p)
		l.got += int64(n)
		return n, err
	}
	if l.n == 0 {
		return 0, errH1HeaderTooLong
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	l.got += int64(n)
	return n, err
}

// h1Body is a response body read from a pooled connection: read to EOF
// with keep-alive on both sides, the connection goes back to the pool;
// closed early or failed, it is closed.
type h1Body struct {
	t    *Transport
	pc   *h1Conn
	rc   io.ReadCloser // http.ReadResponse's body (never closed: it would drain)
	stop func() bool   // stops the context's AfterFunc
	keep bool          // neither side asked to close

	mu   sync.Mutex
	done bool
	err  error // returned by Read once done
}

// Read implements io.Reader.
func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.done {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	switch {
	case errors.Is(err, io.EOF):
		b.finish(true, io.EOF)
	case err != nil:
		if cerr := b.pc.canceled.Load(); cerr != nil {
			err = fmt.Errorf("upstream %s: reading the body: %w (%w)", b.pc.addr, *cerr, err)
		}
		err = Unknown(err) // the response began: the request was sent
		b.finish(false, err)
	}
	return n, err
}

// Close implements io.Closer: before EOF it closes the connection rather
// than draining it. It may be called concurrently with Read to abort it.
func (b *h1Body) Close() error {
	b.finish(false, errH1ClosedBody)
	return nil
}

// finish ends the exchange once: the connection is released (eof) or
// closed.
func (b *h1Body) finish(eof bool, err error) {
	b.mu.Lock()
	if b.done {
		b.mu.Unlock()
		return
	}
	b.done, b.err = true, err
	b.mu.Unlock()
	if eof {
		b.t.release(b.pc, b.stop, b.keep)
		return
	}
	b.stop()
	b.pc.close()
}

// notReplayable makes sure net/http's Transport cannot send req twice. It
// resends, after some failures on a reused connection, any request it
// deems replayable: a bodiless one whose method is safe or which carries
// an Idempotency-Key header, or one with GetBody. levee is the
// deduplication in front of upstreams that may not be, so an unsafe
// bodiless request gets an empty non-NoBody body (sent as an empty chunked
// body) and no request keeps GetBody.
func notReplayable(req *http.Request) *http.Request {
	unsafeBodiless := (req.Body == nil || req.Body == http.NoBody) && !h1SafeMethod(req.Method)
	if req.GetBody == nil && !unsafeBodiless {
		return req
	}
	r2 := *req
	r2.GetBody = nil
	if unsafeBodiless {
		r2.Body = emptyBody{}
		r2.ContentLength = 0
	}
	return &r2
}

// emptyBody is an empty request body that net/http does not recognise as
// NoBody.
type emptyBody struct{}

func (emptyBody) Read([]byte) (int, error) { return 0, io.EOF }
func (emptyBody) Close() error             { return nil }

// MaxBody is the largest request body Transport sends. Larger or
// unknown-length (streamed) uploads go to the fallback, which reads an
// upstream's early answer (a 413, say) while it is still sending; h1
// writes the whole request before reading.
const MaxBody = 64 << 10

// h1Handles reports whether req is for Transport rather than its
// fallback: an http:// URL, no request to close the connection (req.Close
// or "Connection: close", which Transport's pooled connections do not
// honour), and what Eligible accepts, a body of unknown length being
// one with ContentLength 0 (a client request's convention).
func h1Handles(req *http.Request) bool {
	if req.URL == nil || req.URL.Scheme != "http" || req.Close || HasToken(req.Header["Connection"], "close") {
		return false
	}
	bodyLen := int64(0)
	if req.Body != nil && req.Body != http.NoBody {
		bodyLen = req.ContentLength
		if bodyLen == 0 {
			bodyLen = -1
		}
	}
	return Eligible(req.Method, req.Header, bodyLen)
}

// Eligible is the one rule for which requests levee's engine sends to
// an upstream itself — on the gateway's direct path and in
// Transport.RoundTrip — rather than net/http's Transport: not CONNECT,
// no Upgrade header nor "Connection: upgrade" (a WebSocket), no "Expect:
// 100-continue", and a body (bodyLen: 0 none, < 0 unknown length) of
// known length up to MaxBody (it is written whole before the response
// is read; net/http's Transport reads an early answer while it sends).
func Eligible(method string, h http.Header, bodyLen int64) bool {
	if method == http.MethodConnect || bodyLen < 0 || bodyLen > MaxBody {
		return false
	}
	return len(h["Upgrade"]) == 0 && !HasToken(h["Connection"], "upgrade") && !HasToken(h["Expect"], "100-continue")
}

// Replayable reports whether req may be sent again after a failure on a
// reused connection: a safe method and no body.
func Replayable(req *http.Request) bool {
	return h1SafeMethod(req.Method) && (req.Body == nil || req.Body == http.NoBody)
}

// h1SafeMethod reports whether method is GET, HEAD, OPTIONS or TRACE.
func h1SafeMethod(method string) bool {
	switch method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// h1Addr is the host:port to dial for req (port 80 by default).
func h1Addr(req *http.Request) string {
	if req.URL.Port() != "" {
		return req.URL.Host
	}
	return net.JoinHostPort(req.URL.Hostname(), "80")
}

// h1Validate rejects what http.Transport rejects before sending: no host,
// an invalid method, header names or values that could split the request.
func h1Validate(req *http.Request) error {
	if req.URL.Host == "" {
		return errors.New("http: no Host in request URL")
	}
	if req.Method != "" && !Token(req.Method) {
		return fmt.Errorf("net/http: invalid method %q", req.Method)
	}
	for k, vs := range req.Header {
		if !Token(k) {
			return fmt.Errorf("net/http: invalid header field name %q", k)
		}
		for _, v := range vs {
			if !ValidFieldValue(v) {
				return fmt.Errorf("net/http: invalid header field value for %q", k)
			}
		}
	}
	return nil
}

// CloseBody closes the request body, as a RoundTripper must even when
// it fails.
func CloseBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
