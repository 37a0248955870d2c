package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// readResponseFast reads what it accepts exactly as http.ReadResponse
// does: status, headers, length, Close, the body, and where the next
// message starts.
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloNEXT",
		"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\nNEXT",
		"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nNEXT",
		"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\nNEXT",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokNEXT",
		"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\nx-lower: a\r\nX-Lower: b\r\nContent-Length: 1\r\n\r\nzNEXT",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\n X: folded\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 999 Whatever\r\nContent-Length: 1\r\n\r\nx",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, msg string, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		req := &http.Request{Method: method}
		fast := bufio.NewReaderSize(strings.NewReader(msg), 4096)
		got := readResponseFast(fast, req)
		if got == nil {
			return
		}
		slow := bufio.NewReaderSize(strings.NewReader(msg), 4096)
		want, err := http.ReadResponse(slow, req)
		if err != nil {
			t.Fatalf("%q: accepted, but http.ReadResponse fails: %v", msg, err)
		}
		if got.Status != want.Status || got.StatusCode != want.StatusCode || got.Proto != want.Proto ||
			got.ContentLength != want.ContentLength || got.Close != want.Close ||
			!reflect.DeepEqual(map[string][]string(got.Header), map[string][]string(want.Header)) {
			t.Fatalf("%q:\n fast: %q %d len %d close %v %v\n want: %q %d len %d close %v %v", msg,
				got.Status, got.StatusCode, got.ContentLength, got.Close, got.Header,
				want.Status, want.StatusCode, want.ContentLength, want.Close, want.Header)
		}
		gb, gerr := io.ReadAll(got.Body)
		wb, werr := io.ReadAll(want.Body)
		if !bytes.Equal(gb, wb) || (gerr == nil) != (werr == nil) {
			t.Fatalf("%q: body %q (%v), want %q (%v)", msg, gb, gerr, wb, werr)
		}
		if gerr == nil {
			gr, _ := io.ReadAll(fast)
			wr, _ := io.ReadAll(slow)
			if !bytes.Equal(gr, wr) {
				t.Fatalf("%q: the next message starts at %q, want %q", msg, gr, wr)
			}
		}
	})
}
