package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// readResponse reads one response from br as http.ReadResponse does.
// Responses with a plain head — HTTP/1.1, a Content-Length or no body,
// no Transfer-Encoding, the head within the buffer — are parsed in place
// (one string, one header map, one body reader: http.ReadResponse made 13
// allocations of a proxied request's 28); anything else is left to
// http.ReadResponse, which then reads it from the start (nothing is
// consumed before the choice). FuzzReadResponse checks both read the
// same.
func readResponse(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	if resp := readResponseFast(br, req); resp != nil {
		return resp, nil
	}
	return http.ReadResponse(br, req)
}

// readResponseFast returns nil, having consumed nothing, when the head is
// not one it parses.
func readResponseFast(br *bufio.Reader, req *http.Request) *http.Response {
	// The head must be buffered already or arrive within the buffer.
	var buf []byte
	for n := 0; ; {
		b, err := br.Peek(max(n, 1))
		if err != nil && len(b) < max(n, 1) {
			return nil // let http.ReadResponse report it
		}
		b, _ = br.Peek(br.Buffered())
		if i := bytes.Index(b, crlfcrlf); i >= 0 {
			buf = b[:i+4]
			break
		}
		if len(b) >= br.Size() {
			return nil
		}
		n = len(b) + 1
	}
	if !wellFormedLines(buf) {
		return nil
	}
	resp, bodyLen := parseResponseHead(string(buf), req)
	if resp == nil {
		return nil
	}
	br.Discard(len(buf))
	resp.Body = http.NoBody
	if bodyLen > 0 {
		resp.Body = &clBody{br: br, left: bodyLen}
	}
	return resp
}

// wellFormedLines reports whether every LF in b follows a CR and every CR
// precedes an LF.
func wellFormedLines(b []byte) bool {
	for i, c := range b {
		switch c {
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return false
			}
		case '\r':
			if i+1 >= len(b) || b[i+1] != '\n' {
				return false
			}
		}
	}
	return true
}

// parseResponseHead parses a head ending in CRLFCRLF whose lines
// wellFormedLines accepted; nil when it is outside the subset
// readResponseFast handles. bodyLen is the length of the body that
// follows: the Content-Length, or 0 when the response has none (to HEAD,
// 1xx, 204, 304).
func parseResponseHead(head string, req *http.Request) (resp *http.Response, bodyLen int64) {
	i := strings.Index(head, "\r\n")
	code, ok := parseStatusLine(head[:i])
	if !ok {
		return nil, 0
	}
	cl, lengths := int64(-1), 0
	closeConn := false
	h, _, ok := parseFieldLines(head[i+2:], func(name, value string) fieldAction {
		switch name {
		case "Transfer-Encoding", "Trailer":
			return fieldRefuse
		case "Content-Length":
			lengths++
			if lengths > 1 || value == "" || len(value) > 18 {
				return fieldRefuse
			}
			v, err := strconv.ParseInt(value, 10, 64)
			if err != nil || v < 0 || value[0] == '+' {
				return fieldRefuse
			}
			cl = v
		case "Connection":
			if HasToken([]string{value}, "close") {
				closeConn = true
			}
		}
		return fieldKeep
	})
	if !ok {
		return nil, 0
	}
	cl, bodyLen, ok = responseLength(req.Method, code, cl)
	if !ok {
		return nil, 0 // read until close: http.ReadResponse
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		return nil, 0 // http.ReadResponse rewrites it; rare in responses
	}
	if closeConn {
		delete(h, "Connection") // as http.ReadResponse does
	}
	return &http.Response{
		Status: head[9:i], StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: cl, Close: closeConn, Request: req,
	}, bodyLen
}

// parseStatusLine parses "HTTP/1.1 NNN[ reason]" (NNN >= 100).
func parseStatusLine(line string) (code int, ok bool) {
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return 0, false
	}
	for _, c := range []byte(line[9:12]) {
		if c < '0' || c > '9' {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	return code, code >= 100
}

// responseLength is what http.ReadResponse reports as ContentLength for
// a response to method with status code and declared length cl (-1:
// none), and the length of the body that follows; ok is false for a body
// read until the connection closes.
func responseLength(method string, code int, cl int64) (contentLength, bodyLen int64, ok bool) {
	noBody := method == http.MethodHead || code/100 == 1 || code == http.StatusNoContent || code == http.StatusNotModified
	switch {
	case !noBody && cl < 0:
		return 0, 0, false
	case !noBody:
		return cl, cl, true
	case method != http.MethodHead:
		return 0, 0, true // bodiless statuses report 0
	case cl < 0:
		return -1, 0, true // a HEAD without a length
	}
	return cl, 0, true // HEAD keeps a declared length
}

// clBody is a response body of known length read from the connection's
// buffer.
type clBody struct {
	br   *bufio.Reader
	left int64
}

func (b *clBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		return n, io.EOF
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *clBody) Close() error { return nil }
