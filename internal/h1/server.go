package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Server is levee's HTTP/1.1 server for the proxy listener. Each
// connection is served by one goroutine that parses requests itself
// (parseFrontHead), calls the handler and writes the response, with no
// per-request goroutine, no background read and one write per response.
// Go's net/http server spends about as much CPU per request as levee's
// whole proxying (docs/benchmarks.md); this is what closes that gap.
//
// It serves a strict subset of HTTP/1.1 (see parseFrontHead): the first
// request on a connection that falls outside it — HTTP/1.0, a chunked or
// 100-continue upload, a WebSocket upgrade, a head over 4 KiB, anything
// malformed — hands the whole connection, with the bytes already read, to
// fallback (Go's net/http server with the same handler and limits), which
// serves it from then on or answers the error (400, 431, ...). So every
// request is served by one of the two, and the unusual ones by the
// battle-tested one.
//
// Behaviour on the fast path, matching net/http's: ReadHeaderTimeout
// bounds the head, ReadTimeout the body (from the request's start),
// WriteTimeout the response, IdleTimeout the wait between requests;
// keep-alive unless the client or the handler says "Connection: close";
// responses get Date, Content-Length when the handler finished within
// the buffer, otherwise chunked encoding (HTTP/1.1), and a sniffed
// Content-Type when the handler set none (a nil value suppresses either
// header); an unread request body of up to 256 KiB is discarded to keep
// the connection, a larger one closes it; a panicking handler closes the
// connection (http.ErrAbortHandler silently, others logged with the
// stack). Unlike net/http it does not cancel the request's context when
// the client disconnects (the gateway never aborts an upstream exchange
// for that).
type Server struct {
	handler  http.Handler
	fallback *http.Server
	handoff  *handoffListener
	log      *slog.Logger

	readHeaderTimeout time.Duration
	readTimeout       time.Duration
	writeTimeout      time.Duration
	idleTimeout       time.Duration

	closing atomic.Bool
	mu      sync.Mutex
	ln      net.Listener
	conns   map[*frontConn]struct{}
	served  atomic.Int64 // requests served on the fast path (tests)
	handed  atomic.Int64 // connections handed to fallback (tests)

	OnAccept func() // called for each accepted connection, when set
	date     dateCache
	done     chan struct{} // closed by Shutdown: the backoff and linger waits end
	doneOnce sync.Once
}

const (
	frontBufSize = 4 << 10
	// frontMaxDrain is the unread request body discarded to keep a
	// connection alive (net/http's figure).
	frontMaxDrain = 256 << 10
	// frontLinger is how long a connection closed with unread request
	// bytes stays half-closed (net/http's rstAvoidanceDelay).
	frontLinger = 500 * time.Millisecond
)

// NewServer serves with fallback's handler, timeouts and logger;
// fallback serves the connections handed to it, through guards (see
// guardConn) whose refusals reject answers.
func NewServer(fallback *http.Server, log *slog.Logger, reject RejectFunc) *Server {
	handler := fallback.Handler
	GuardServer(fallback, reject)
	idle := fallback.IdleTimeout
	if idle == 0 {
		idle = fallback.ReadTimeout
	}
	hdr := fallback.ReadHeaderTimeout
	if hdr == 0 {
		hdr = fallback.ReadTimeout
	}
	return &Server{
		handler:           handler,
		fallback:          fallback,
		log:               log,
		readHeaderTimeout: hdr,
		readTimeout:       fallback.ReadTimeout,
		writeTimeout:      fallback.WriteTimeout,
		idleTimeout:       idle,
		conns:             map[*frontConn]struct{}{},
		done:              make(chan struct{}),
	}
}

// Serve accepts connections on ln until Shutdown. It returns
// http.ErrServerClosed after Shutdown, or the accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.handoff = newHandoffListener(ln.Addr())
	if s.closing.Load() { // Shutdown came first
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	s.mu.Unlock()
	fbDone := make(chan struct{})
	defer func() {
		s.handoff.Close() // the fallback stops accepting with us
		<-fbDone
	}()
	go func() {
		defer close(fbDone)
		// Its listener is ours: closed at shutdown, which is no failure.
		if err := s.fallback.Serve(s.handoff); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("fallback server failed", "error", err)
		}
	}()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and the like: wait and retry, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "error", err, "delay", backoff)
			if !s.wait(backoff) {
				return http.ErrServerClosed
			}
			continue
		}
		backoff = 0
		if s.OnAccept != nil {
			s.OnAccept()
		}
		fc := &frontConn{s: s, c: c}
		ctx := context.WithValue(context.WithValue(context.Background(), http.ServerContextKey, s.fallback), http.LocalAddrContextKey, c.LocalAddr())
		fc.tmpl = *(&http.Request{RemoteAddr: c.RemoteAddr().String(), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}).WithContext(ctx)
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[fc] = struct{}{}
		s.mu.Unlock()
		go fc.serve()
	}
}

// Shutdown stops accepting, closes idle connections, lets active ones
// finish their request (answered with "Connection: close") and waits for
// them until ctx is done; the fallback server is shut down alongside.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.doneOnce.Do(func() { close(s.done) })
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	fbErr := make(chan error, 1)
	go func() { fbErr <- s.fallback.Shutdown(ctx) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		if s.closeIdle() {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
			continue
		}
		break
	}
	if ferr := <-fbErr; err == nil {
		err = ferr
	}
	return err
}

// wait waits d, or less when Shutdown comes first (then false).
func (s *Server) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return false
	}
}

// closeIdle closes the connections waiting for a request and reports
// whether none is left.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for fc := range s.conns {
		if fc.state.CompareAndSwap(connIdle, connClosed) {
			fc.c.Close()
		}
	}
	return len(s.conns) == 0
}

func (s *Server) forget(fc *frontConn) {
	s.mu.Lock()
	delete(s.conns, fc)
	s.mu.Unlock()
}

const (
	connIdle int32 = iota
	connActive
	connClosed
)

// frontConn is one client connection.
type frontConn struct {
	s *Server
	c net.Conn
	// tmpl carries what every request on the connection shares: the
	// remote address and a context holding http.ServerContextKey and
	// http.LocalAddrContextKey, as net/http's requests do (ReverseProxy
	// aborts a cut response body only under a server it can see). A
	// request is a copy of it: no allocation per request for the context.
	tmpl   http.Request
	br     *bufio.Reader
	bw     *bufio.Writer
	state  atomic.Int32
	werr   error // first write error: the connection is done
	linger bool  // closing with request bytes unread
	// headDeadline bounds the current request's head; a hand-off keeps it.
	headDeadline time.Time
}

var (
	frontReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, frontBufSize) }}
	frontWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, frontBufSize) }}
)

func (fc *frontConn) serve() {
	s := fc.s
	fc.br = frontReaders.Get().(*bufio.Reader)
	fc.br.Reset(fc.c)
	fc.bw = frontWriters.Get().(*bufio.Writer)
	fc.bw.Reset(fc)
	handed := false
	defer func() { fc.end(handed) }()
	lastPOST := false
	for first := true; ; first = false {
		if first {
			fc.headDeadline = deadline(time.Now(), s.readHeaderTimeout)
			_ = fc.c.SetReadDeadline(fc.headDeadline)
		} else {
			_ = fc.c.SetReadDeadline(deadline(time.Now(), s.idleTimeout))
		}
		if _, err := fc.br.Peek(1); err != nil {
			return
		}
		if lastPOST && !fc.skipCRLF() {
			return
		}
		if !fc.state.CompareAndSwap(connIdle, connActive) {
			return // closed by Shutdown
		}
		t0 := time.Now()
		if !first {
			fc.headDeadline = deadline(t0, s.readHeaderTimeout)
			_ = fc.c.SetReadDeadline(fc.headDeadline)
		}
		head, err := fc.readHead()
		if err != nil {
			return // timeout, EOF, reset: nobody to answer
		}
		var h frontHead
		ok := head != nil
		if ok {
			h, ok = parseFrontHead(string(head))
		}
		if !ok {
			// Not ours: hand the connection, and what was read, to
			// net/http (also after requests served here: it reads from
			// the start of this one).
			handed = fc.handOff()
			return
		}
		fc.br.Discard(len(head))
		lastPOST = h.method == http.MethodPost
		s.served.Add(1) // before: the client may read the answer before serveRequest returns
		keep := fc.serveRequest(&h, t0)
		if !keep || s.closing.Load() {
			return
		}
		if !fc.state.CompareAndSwap(connActive, connIdle) {
			return
		}
	}
}

// skipCRLF skips the CR and LF bytes (up to four) some clients send
// after a POST body, as net/http does; false when the connection ended.
func (fc *frontConn) skipCRLF() bool {
	for i := 0; i < 4; i++ {
		b, err := fc.br.Peek(1)
		if err != nil {
			return false
		}
		if b[0] != '\r' && b[0] != '\n' {
			break
		}
		fc.br.Discard(1)
	}
	return true
}

// end releases the connection's buffers and, unless it was handed to
// net/http, closes it — half-closed first, for the client to read the
// answer, when request bytes were left unread (as net/http does).
func (fc *frontConn) end(handed bool) {
	s := fc.s
	if fc.linger {
		if cw, ok := fc.c.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			s.wait(frontLinger)
		}
	}
	if !handed {
		fc.c.Close()
	}
	fc.br.Reset(nil)
	frontReaders.Put(fc.br)
	fc.bw.Reset(nil)
	frontWriters.Put(fc.bw)
	s.forget(fc)
}

// readHead returns the buffered bytes of the next request head, through
// the empty line, without consuming them. When the head does not fit in
// the buffer it returns nil; when it holds a bare LF (which net/http
// accepts and the front parser does not) it returns what is buffered, at
// once, for parseFrontHead to refuse. Either way the connection is then
// handed off.
func (fc *frontConn) readHead() ([]byte, error) {
	searched := 0
	for {
		n := fc.br.Buffered()
		buf, _ := fc.br.Peek(n)
		from := max(0, searched-3)
		end := n // the head so far: the body or a next request may follow it
		if i := bytes.Index(buf[from:], crlfcrlf); i >= 0 {
			end = from + i + 4
		}
		for i := searched; i < end; i++ {
			if buf[i] == '\n' && (i == 0 || buf[i-1] != '\r') {
				return buf[:end], nil
			}
		}
		if end < n || bytes.HasSuffix(buf, crlfcrlf) {
			return buf[:end], nil
		}
		searched = n
		if n >= frontBufSize {
			return nil, nil
		}
		if _, err := fc.br.Peek(n + 1); err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, nil
			}
			return nil, err
		}
	}
}

// deadline is now+d, or no deadline when d is 0.
func deadline(now time.Time, d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return now.Add(d)
}

var crlfcrlf = []byte("\r\n\r\n")

// handOff gives the connection to the fallback server; false when it is
// shutting down.
func (fc *frontConn) handOff() bool {
	n := fc.br.Buffered()
	pre, _ := fc.br.Peek(n)
	hc := newGuardConn(fc.c, bytes.Clone(pre), fc.s.fallback.MaxHeaderBytes, fc.headDeadline)
	_ = fc.c.SetDeadline(time.Time{})
	fc.s.handed.Add(1) // before: net/http may answer before give returns
	if !fc.s.handoff.give(hc) {
		fc.s.handed.Add(-1)
		return false
	}
	return true
}

// Write is the bufio.Writer's sink: it applies nothing but remembers the
// first error.
func (fc *frontConn) Write(p []byte) (int, error) {
	if fc.werr != nil {
		return 0, fc.werr
	}
	n, err := fc.c.Write(p)
	if err != nil {
		fc.werr = err
	}
	return n, err
}

// serveRequest runs the handler for one parsed request and writes the
// response; it reports whether the connection stays open.
func (fc *frontConn) serveRequest(h *frontHead, t0 time.Time) (keep bool) {
	s := fc.s
	req := new(http.Request)
	*req = fc.tmpl
	req.Method, req.URL, req.Header, req.Host, req.RequestURI = h.method, h.url, h.header, h.host, h.target
	req.ContentLength, req.Close, req.Body = h.contentLength, h.close, http.NoBody
	var body *frontBody
	if h.contentLength > 0 {
		body = &frontBody{fc: fc, left: h.contentLength}
		req.Body = body
		if s.readTimeout > 0 {
			_ = fc.c.SetReadDeadline(t0.Add(s.readTimeout))
		} else {
			_ = fc.c.SetReadDeadline(time.Time{})
		}
	}
	if s.writeTimeout > 0 {
		_ = fc.c.SetWriteDeadline(time.Now().Add(s.writeTimeout))
	}
	w := &frontResponse{fc: fc, req: req, header: make(http.Header, 8), contentLength: -1}
	if !fc.runHandler(w, req) {
		// Whatever the handler left behind must not touch the pooled
		// buffers once the connection is gone.
		if body != nil {
			body.mu.Lock()
			body.closed = true
			body.mu.Unlock()
		}
		w.done = true
		w.releasePend()
		return false
	}
	var left int64
	if body != nil {
		body.mu.Lock()
		left = body.left
		if body.err != nil || left > frontMaxDrain {
			w.closeAfter = true // said in the response if it is not sent yet
		}
		if body.err != nil {
			left = 0 // nothing more to read
		}
		body.closed = true
		body.mu.Unlock()
	}
	w.finish()
	keep = !h.close && !w.closeAfter && fc.werr == nil
	switch {
	case keep && left > 0:
		if _, err := fc.br.Discard(int(left)); err != nil {
			keep = false
		}
	case !keep && left > 0 && fc.werr == nil:
		fc.linger = true // let the client read the answer before the reset
	}
	if err := fc.bw.Flush(); err != nil {
		return false
	}
	return keep
}

// runHandler calls the handler, recovering a panic as net/http does:
// false means the connection must be closed without more output.
func (fc *frontConn) runHandler(w *frontResponse, req *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				fc.s.log.Error("panic serving a request", "remote", fc.tmpl.RemoteAddr, "panic", fmt.Sprint(p), "stack", string(buf))
			}
			_ = fc.bw.Flush() // what was already written
			ok = false
		}
	}()
	fc.s.handler.ServeHTTP(w, req)
	return true
}

// frontBody is a request body of known length read from the connection.
type frontBody struct {
	fc     *frontConn
	mu     sync.Mutex
	left   int64
	err    error
	closed bool
}

var errFrontBodyClosed = errors.New("http: invalid Read on closed Body")

func (b *frontBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errFrontBodyClosed
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.fc.br.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		return n, io.EOF
	case errors.Is(err, io.EOF):
		b.err = io.ErrUnexpectedEOF
		return n, b.err
	case err != nil:
		b.err = err
		return n, err
	}
	return n, nil
}

// Close implements io.Closer: later reads fail; the rest of the body is
// discarded (or the connection closed) after the handler returns.
func (b *frontBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// frontResponse is the http.ResponseWriter of the front server.
type frontResponse struct {
	fc            *frontConn
	req           *http.Request
	header        http.Header
	status        int
	committed     bool // status line and headers are in the buffer
	chunked       bool
	contentLength int64 // declared or computed; -1 unknown
	written       int64
	pend          []byte // body held back until the length is known
	closeAfter    bool
	done          bool
}

func (w *frontResponse) Header() http.Header { return w.header }

func (w *frontResponse) WriteHeader(code int) {
	if w.committed || w.status != 0 || w.done {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: sent at once, the final status follows.
		bw := w.fc.bw
		writeStatusLine(bw, code)
		writeHeaderFields(bw, w.header, informational)
		bw.WriteString("\r\n")
		_ = bw.Flush()
		return
	}
	w.status = code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.contentLength = v
		} else {
			w.header.Del("Content-Length")
		}
	}
}

// bodyAllowed reports whether the status permits a body.
func (w *frontResponse) bodyAllowed() bool {
	return w.status != http.StatusNoContent && w.status != http.StatusNotModified && w.status >= 200
}

func (w *frontResponse) Write(p []byte) (int, error) {
	if w.done {
		return 0, http.ErrHandlerTimeout
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.req.Method == http.MethodHead {
		return len(p), nil
	}
	if !w.committed {
		if w.contentLength >= 0 {
			w.commit(p)
		} else if len(w.pend)+len(p) <= frontBufSize {
			if w.pend == nil {
				w.pend = pendPool.Get().(*[frontBufSize]byte)[:0]
			}
			w.pend = append(w.pend, p...)
			return len(p), nil
		} else {
			w.commit(p) // chunked
		}
	}
	if err := w.writeBody(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

var pendPool = sync.Pool{New: func() any { return new([frontBufSize]byte) }}

func (w *frontResponse) releasePend() {
	if w.pend != nil {
		pendPool.Put((*[frontBufSize]byte)(w.pend[:frontBufSize]))
		w.pend = nil
	}
}

// writeBody writes p (after the held-back bytes) to the buffer.
func (w *frontResponse) writeBody(p []byte) error {
	bw := w.fc.bw
	if len(w.pend) > 0 {
		q := w.pend
		w.pend = w.pend[:0]
		if err := w.writeBody(q); err != nil {
			return err
		}
	}
	if len(p) == 0 {
		return w.fc.werr
	}
	if w.chunked {
		bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		bw.WriteString("\r\n")
		bw.Write(p)
		bw.WriteString("\r\n")
	} else {
		bw.Write(p)
	}
	return w.fc.werr
}

// commit writes the status line and the headers: Content-Length when the
// length is known, chunked encoding otherwise.
func (w *frontResponse) commit(first []byte) {
	if w.committed {
		return
	}
	w.committed = true
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.header
	head := w.req.Method == http.MethodHead
	if w.contentLength < 0 && w.bodyAllowed() {
		_, trailers := h["Trailer"]
		if head {
			// No body follows: a length only when the handler finished
			// (the bytes it wrote), never chunked framing.
			if w.done && w.written > 0 {
				w.contentLength = w.written
				h["Content-Length"] = []string{strconv.FormatInt(w.written, 10)}
			}
		} else if w.done && !trailers {
			w.contentLength = w.written
			if w.req.Method != http.MethodHead || w.written > 0 {
				h["Content-Length"] = []string{strconv.FormatInt(w.written, 10)}
			}
		} else {
			w.chunked = true
		}
	}
	if _, ok := h["Content-Type"]; !ok && w.bodyAllowed() {
		// Sniffed from the first bytes, as net/http does.
		if len(w.pend) > 0 {
			h["Content-Type"] = []string{http.DetectContentType(w.pend)}
		} else if len(first) > 0 {
			h["Content-Type"] = []string{http.DetectContentType(first)}
		}
	}
	if v, ok := h["Connection"]; ok && HasToken(v, "close") {
		w.closeAfter = true
	}
	if w.req.Close || w.fc.s.closing.Load() {
		w.closeAfter = true
	}
	bw := w.fc.bw
	writeStatusLine(bw, w.status)
	writeHeaderFields(bw, h, w)
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(w.fc.s.date.now())
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// writeStatusLine writes "HTTP/1.1 code reason".
func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	var b [3]byte
	bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.Write(strconv.AppendInt(b[:0], int64(code), 10))
	}
	bw.WriteString("\r\n")
}

// informational stands for a 1xx response in writeHeaderFields.
var informational = new(frontResponse)

// writeHeaderFields writes the fields of h as net/http would: invalid
// names skipped, CR and LF in values replaced by spaces, nil values and
// trailer keys left out. With w (a final response) the framing fields
// the server sets itself are left out too.
func writeHeaderFields(bw *bufio.Writer, h http.Header, w *frontResponse) {
	for k, vs := range h {
		if w == informational {
			if k == "Content-Length" || k == "Transfer-Encoding" {
				continue // as net/http: a 1xx has no body
			}
		} else if w != nil {
			switch k {
			case "Connection", "Transfer-Encoding", "Keep-Alive":
				continue
			case "Content-Length":
				if w.chunked || !w.bodyAllowed() && w.status != http.StatusNotModified {
					continue
				}
			}
		}
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix || !Token(k) {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			writeFieldValue(bw, v)
			bw.WriteString("\r\n")
		}
	}
}

func writeFieldValue(bw *bufio.Writer, v string) {
	for {
		i := 0
		for i < len(v) && v[i] != '\r' && v[i] != '\n' {
			i++
		}
		bw.WriteString(v[:i])
		if i == len(v) {
			return
		}
		bw.WriteByte(' ')
		v = v[i+1:]
	}
}

// finish completes the response after the handler returned.
func (w *frontResponse) finish() {
	defer w.releasePend()
	w.done = true
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if !w.committed {
		w.commit(nil)
	}
	if err := w.writeBody(nil); err != nil {
		return
	}
	switch {
	case w.chunked:
		bw := w.fc.bw
		bw.WriteString("0\r\n")
		for _, k := range w.trailerKeys() {
			for _, v := range w.header[k] {
				bw.WriteString(trimTrailerPrefix(k))
				bw.WriteString(": ")
				writeFieldValue(bw, v)
				bw.WriteString("\r\n")
			}
		}
		bw.WriteString("\r\n")
	case w.contentLength >= 0 && w.written != w.contentLength && w.bodyAllowed() && w.req.Method != http.MethodHead:
		w.closeAfter = true // a short body: the client must not wait for the rest
	}
}

// trailerKeys are the header keys whose values go in the trailer: those
// announced in "Trailer" and those with http.TrailerPrefix.
func (w *frontResponse) trailerKeys() []string {
	var keys []string
	for _, v := range w.header["Trailer"] {
		for t := range Tokens(v) {
			if k := http.CanonicalHeaderKey(t); Token(k) {
				keys = append(keys, k)
			}
		}
	}
	for k := range w.header {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix && Token(k[len(http.TrailerPrefix):]) {
			keys = append(keys, k)
		}
	}
	return keys
}

func trimTrailerPrefix(k string) string {
	if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
		return k[len(http.TrailerPrefix):]
	}
	return k
}

// Flush sends the headers and what was written so far (http.Flusher).
func (w *frontResponse) Flush() { _ = w.FlushError() }

// FlushError is Flush reporting the write error (http.ResponseController).
func (w *frontResponse) FlushError() error {
	if w.done {
		return nil
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.commit(nil)
	if err := w.writeBody(nil); err != nil {
		return err
	}
	return w.fc.bw.Flush()
}

// SetReadDeadline and SetWriteDeadline serve http.ResponseController.
func (w *frontResponse) SetReadDeadline(t time.Time) error  { return w.fc.c.SetReadDeadline(t) }
func (w *frontResponse) SetWriteDeadline(t time.Time) error { return w.fc.c.SetWriteDeadline(t) }

// dateCache holds the current time in the HTTP date format, formatted
// once a second (per server: no package state).
type dateCache struct{ p atomic.Pointer[cachedDate] }

type cachedDate struct {
	sec int64
	b   []byte
}

// now returns the current HTTP date.
func (c *dateCache) now() []byte {
	now := time.Now()
	sec := now.Unix()
	if d := c.p.Load(); d != nil && d.sec == sec {
		return d.b
	}
	d := &cachedDate{sec: sec, b: now.UTC().AppendFormat(make([]byte, 0, 29), http.TimeFormat)}
	c.p.Store(d)
	return d.b
}

// handoffListener is the net.Listener the fallback server accepts handed
// off connections from.
type handoffListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
	addr net.Addr
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{ch: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// give passes c to the fallback server; false when it has stopped.
func (l *handoffListener) give(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}
