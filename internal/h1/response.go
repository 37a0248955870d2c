package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
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
	line, rest := head[:i], head[i+2:]
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || len(line) > 12 && line[12] != ' ' {
		return nil, 0
	}
	code := 0
	for _, c := range []byte(line[9:12]) {
		if c < '0' || c > '9' {
			return nil, 0
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return nil, 0
	}
	status := line[9:]
	n := strings.Count(rest, "\n") - 1
	values := make([]string, n)
	h := make(http.Header, n)
	cl, lengths := int64(-1), 0
	closeConn := false
	for k := 0; ; k++ {
		j := strings.Index(rest, "\r\n")
		line := rest[:j]
		rest = rest[j+2:]
		if line == "" {
			break
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return nil, 0
		}
		name := line[:colon]
		if !Token(name) {
			return nil, 0
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !ValidFieldValue(value) {
			return nil, 0
		}
		if !isCanonicalKey(name) {
			name = textproto.CanonicalMIMEHeaderKey(name)
		}
		switch name {
		case "Transfer-Encoding", "Trailer":
			return nil, 0
		case "Content-Length":
			lengths++
			if lengths > 1 || value == "" || len(value) > 18 {
				return nil, 0
			}
			v, err := strconv.ParseInt(value, 10, 64)
			if err != nil || v < 0 || value[0] == '+' {
				return nil, 0
			}
			cl = v
		case "Connection":
			if HasToken([]string{value}, "close") {
				closeConn = true
			}
		}
		if old, ok := h[name]; ok {
			h[name] = append(old, value)
		} else {
			values[k] = value
			h[name] = values[k : k+1 : k+1]
		}
	}
	noBody := req.Method == http.MethodHead || code/100 == 1 || code == http.StatusNoContent || code == http.StatusNotModified
	if !noBody {
		bodyLen = cl // cl >= 0 past the switch below
	}
	switch {
	case noBody:
		if req.Method != http.MethodHead || cl < 0 {
			// http.ReadResponse reports 0 for bodiless statuses and -1 for
			// a HEAD without a length; HEAD keeps a declared length.
			cl = 0
			if req.Method == http.MethodHead {
				cl = -1
			}
		}
	case cl < 0:
		return nil, 0 // read until close: http.ReadResponse
	}
	if p := h["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		return nil, 0 // http.ReadResponse rewrites it; rare in responses
	}
	if closeConn {
		delete(h, "Connection") // as http.ReadResponse does
	}
	return &http.Response{
		Status: status, StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: cl, Close: closeConn, Request: req,
	}, bodyLen
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
