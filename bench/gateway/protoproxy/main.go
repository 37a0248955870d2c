// Command protoproxy is a measurement prototype, not a product: the
// smallest proxy that keeps net/http's server but replaces
// httputil.ReverseProxy + http.Transport with an HTTP/1.1 upstream client
// that runs in the handler's goroutine. It exists to measure how much of
// levee's per-request cost is the stock proxy machinery (see
// bench/gateway/README.md, "Where the time goes"):
//
//   - one write per upstream request (headers and a small body together;
//     http.Transport flushes the headers first because ReverseProxy hides
//     every body behind a wrapper it cannot see through),
//   - no writeLoop/readLoop goroutines, channels or selects per request
//     (http.Transport hands every request to two goroutines per connection),
//   - no Peek after each response (the transport's readLoop re-arms a read
//     that returns EAGAIN), no request/header clones.
//
// It does what levee's plain route does on the wire: hop-by-hop headers
// removed, X-Forwarded-For/-Host/-Proto set, X-Request-Id kept or made,
// a JSON access log line per request (-access-log), a route timeout.
// It handles only plain-HTTP upstreams and no Upgrade; idle upstream
// connections closed by the upstream are retried once when the request
// body is in memory.
//
//	protoproxy -listen 127.0.0.1:18086 -upstream 127.0.0.1:18081 [-access-log FILE]
package main

import (
	"bufio"
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type upConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

type pool struct {
	addr    string
	maxIdle int
	mu      sync.Mutex
	idle    []*upConn
}

func (p *pool) get() (*upConn, bool, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		uc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return uc, true, nil
	}
	p.mu.Unlock()
	c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
	if err != nil {
		return nil, false, err
	}
	return &upConn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}, false, nil
}

func (p *pool) put(uc *upConn) {
	p.mu.Lock()
	if len(p.idle) < p.maxIdle {
		p.idle = append(p.idle, uc)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	uc.c.Close()
}

var hopByHop = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

var (
	bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}
	copyPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}
	idSeq    atomic.Uint64
	idPrefix = strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
)

type accessLog struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func (l *accessLog) write(id, method, path string, status int, dur time.Duration, n int64, remote string) {
	l.mu.Lock()
	b := l.buf[:0]
	b = append(b, `{"time":"`...)
	b = time.Now().UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"request","request_id":`...)
	b = strconv.AppendQuote(b, id)
	b = append(b, `,"route":"bench","method":`...)
	b = strconv.AppendQuote(b, method)
	b = append(b, `,"path":`...)
	b = strconv.AppendQuote(b, path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(dur.Microseconds())/1000, 'f', -1, 64)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `,"remote":`...)
	b = strconv.AppendQuote(b, remote)
	b = append(b, "}\n"...)
	l.buf = b
	_, _ = l.w.Write(b)
	l.mu.Unlock()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18086", "address to listen on")
	upstream := flag.String("upstream", "127.0.0.1:18081", "upstream host:port (plain HTTP/1.1)")
	accessLogPath := flag.String("access-log", "", "JSON access log file (- for stderr; empty: off)")
	timeout := flag.Duration("timeout", 30*time.Second, "route timeout (upstream exchange)")
	logBuffer := flag.Int("access-log-buffer", 0, "bytes of access log buffered before a write (0: one write per line); flushed at least every second, like nginx's access_log buffer=")
	flag.Parse()

	p := &pool{addr: *upstream, maxIdle: 1024}
	var alog *accessLog
	switch *accessLogPath {
	case "":
	case "-":
		alog = &accessLog{w: os.Stderr}
	default:
		f, err := os.OpenFile(*accessLogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		alog = &accessLog{w: f}
	}
	if alog != nil && *logBuffer > 0 {
		bw := bufio.NewWriterSize(alog.w, *logBuffer)
		alog.w = bw
		go func() {
			for range time.Tick(time.Second) {
				alog.mu.Lock()
				_ = bw.Flush()
				alog.mu.Unlock()
			}
		}()
	}

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if id == "" {
			id = idPrefix + strconv.FormatUint(idSeq.Add(1), 36)
		}
		w.Header()["X-Request-Id"] = []string{id}
		status, n := proxy(p, w, r, id, *timeout)
		if alog != nil {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			alog.write(id, r.Method, r.URL.Path, status, time.Since(start), n, host)
		}
	})
	srv := &http.Server{Addr: *listen, Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Printf("protoproxy on %s -> %s", *listen, *upstream)
	log.Fatal(srv.ListenAndServe())
}

func proxy(p *pool, w http.ResponseWriter, r *http.Request, id string, timeout time.Duration) (int, int64) {
	var body []byte
	if r.ContentLength > 0 && r.ContentLength <= 16<<10 {
		bp := bodyPool.Get().(*[]byte)
		defer bodyPool.Put(bp)
		body = (*bp)[:r.ContentLength]
		if _, err := io.ReadFull(r.Body, body); err != nil {
			http.Error(w, "bad request body", http.StatusBadRequest)
			return http.StatusBadRequest, 0
		}
	} else if r.ContentLength != 0 {
		http.Error(w, "prototype: only bodies up to 16 KiB of known length", http.StatusNotImplemented)
		return http.StatusNotImplemented, 0
	}
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		uc, reused, err := p.get()
		if err != nil {
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
			return http.StatusBadGateway, 0
		}
		_ = uc.c.SetDeadline(deadline)
		writeRequest(uc.bw, r, id, body)
		if err := uc.bw.Flush(); err != nil {
			uc.c.Close()
			if reused && attempt == 0 {
				continue
			}
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
			return http.StatusBadGateway, 0
		}
		resp, err := http.ReadResponse(uc.br, r)
		if err != nil {
			uc.c.Close()
			if reused && attempt == 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
				continue // the upstream closed an idle connection: the request was not processed
			}
			http.Error(w, "upstream unavailable", http.StatusBadGateway)
			return http.StatusBadGateway, 0
		}
		hd := w.Header()
		for k, v := range resp.Header {
			if !hopByHop[k] {
				hd[k] = v
			}
		}
		w.WriteHeader(resp.StatusCode)
		cp := copyPool.Get().(*[]byte)
		n, cerr := io.CopyBuffer(w, resp.Body, *cp)
		copyPool.Put(cp)
		resp.Body.Close()
		_ = uc.c.SetDeadline(time.Time{})
		if cerr != nil || resp.Close || uc.br.Buffered() > 0 {
			uc.c.Close()
		} else {
			p.put(uc)
		}
		return resp.StatusCode, n
	}
}

func writeRequest(bw *bufio.Writer, r *http.Request, id string, body []byte) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	for k, vs := range r.Header {
		if hopByHop[k] || k == "Content-Length" || k == "X-Forwarded-For" || k == "X-Forwarded-Host" || k == "X-Forwarded-Proto" || k == "X-Request-Id" {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	bw.WriteString("X-Forwarded-For: ")
	bw.WriteString(host)
	bw.WriteString("\r\nX-Forwarded-Host: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ")
	bw.WriteString(id)
	if len(body) > 0 {
		bw.WriteString("\r\nContent-Length: ")
		bw.WriteString(strconv.Itoa(len(body)))
	}
	bw.WriteString("\r\n\r\n")
	bw.Write(body)
}
