package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/h1"
)

// failingWrites is a connection whose writes fail: nothing is sent.
type failingWrites struct{ net.Conn }

func (failingWrites) Write([]byte) (int, error) {
	return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.EPIPE}
}

// serveOnRoute runs one POST through the route matching path, as
// Gateway.ServeHTTP does, and returns its request info. A streamed body
// (unknown length) takes the ReverseProxy path.
func serveOnRoute(t *testing.T, g *Gateway, path string, streamed bool) (*reqInfo, int) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "http://levee"+path, strings.NewReader(`{"a":1}`))
	if streamed {
		r.Body, r.ContentLength, r.GetBody = io.NopCloser(strings.NewReader(`{"a":1}`)), -1, nil
	}
	rt := g.state.Load().match(r, path)
	ri := &reqInfo{}
	r = r.WithContext(context.WithValue(r.Context(), infoKey{}, ri))
	w := httptest.NewRecorder()
	func() {
		defer func() {
			if p := recover(); p != nil && p != http.ErrAbortHandler {
				panic(p)
			}
		}()
		rt.handler.ServeHTTP(w, r)
	}()
	return ri, w.Code
}

// Upstream failures are told apart as "not sent" (dial refused, write
// failed) and "sent, outcome unknown" (the whole request written, then no
// complete answer), on the direct path and the ReverseProxy path, and the
// verdict is on the request's info for the idempotency layer. The status
// the client gets does not change. Issue 11, part 1.
func TestUpstreamOutcomeUnknownClassified(t *testing.T) {
	t.Parallel()
	readReq := func(c net.Conn) bool {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return false
		}
		_, err = io.Copy(io.Discard, req.Body)
		return err == nil
	}
	answer := func(s string) func(net.Conn) {
		return func(c net.Conn) {
			defer c.Close()
			if readReq(c) {
				io.WriteString(c, s)
			}
		}
	}
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	cases := []struct {
		name    string
		serve   func(net.Conn) // nil: the dead address
		unknown bool
		status  int // 0: the client connection is aborted
	}{
		{"answered", answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), false, 200},
		{"dial refused", nil, false, 502},
		{"write failed", answer(""), false, 502},
		{"closed after the request", answer(""), true, 502},
		{"head cut", answer("HTTP/1.1 200 OK\r\nContent-Le"), true, 502},
		{"malformed head", answer("HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"), true, 502},
		{"body cut", answer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), true, 200},
		{"timeout", func(c net.Conn) {
			defer c.Close()
			readReq(c)
			time.Sleep(time.Second)
		}, true, 504},
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, path := range []string{"direct", "reverseproxy"} {
		for _, tc := range cases {
			t.Run(path+" "+tc.name, func(t *testing.T) {
				t.Parallel()
				addr := deadAddr
				if tc.serve != nil {
					addr = rawUpstream(t, tc.serve).Addr().String()
				}
				dial := (&net.Dialer{}).DialContext
				if tc.name == "write failed" {
					dial = func(ctx context.Context, network, a string) (net.Conn, error) {
						c, err := (&net.Dialer{}).DialContext(ctx, network, a)
						if err != nil {
							return nil, err
						}
						return failingWrites{c}, nil
					}
				}
				// As in production: levee's transport, falling back to
				// net/http's for what it does not send (a streamed body).
				nt := NewTransport()
				nt.DialContext = dial
				tr := h1.NewTransport(nt, 4)
				tr.DialContext = dial
				t.Cleanup(tr.CloseIdleConnections)
				cfg, err := Parse("t.yaml", []byte(fmt.Sprintf("listen: 127.0.0.1:0\nroutes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: http://%s\n    timeout: 200ms\n", addr)), nil)
				if err != nil {
					t.Fatal(err)
				}
				g, err := New(cfg, Options{Logger: quiet, Transport: tr})
				if err != nil {
					t.Fatal(err)
				}
				ri, code := serveOnRoute(t, g, "/x", path == "reverseproxy")
				if ri.outcomeUnknown != tc.unknown {
					t.Errorf("outcome unknown %v, want %v (error %q)", ri.outcomeUnknown, tc.unknown, ri.upstreamErr)
				}
				if code != tc.status {
					t.Errorf("status %d, want %d", code, tc.status)
				}
			})
		}
	}
}

func TestOutcomeUnknownWraps(t *testing.T) {
	base := fmt.Errorf("upstream x: read: %w", context.DeadlineExceeded)
	err := h1.Unknown(base)
	if !h1.OutcomeUnknown(err) || !errors.Is(err, context.DeadlineExceeded) || !isTimeout(err) {
		t.Fatalf("%v: unknown %v, still a timeout %v", err, h1.OutcomeUnknown(err), isTimeout(err))
	}
	if h1.OutcomeUnknown(base) || h1.OutcomeUnknown(nil) || h1.Unknown(nil) != nil || h1.Unknown(err) != err {
		t.Fatal("Unknown/OutcomeUnknown on unmarked, nil or marked errors")
	}
}
