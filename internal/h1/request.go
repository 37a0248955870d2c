package h1

import (
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// frontHead is a request head parsed by parseFrontHead.
type frontHead struct {
	method        string
	target        string
	url           *url.URL
	host          string
	header        http.Header
	contentLength int64 // 0 when absent
	close         bool  // "Connection: close"
}

// parseFrontHead parses an HTTP/1.1 request head (request line and
// header fields, through the empty line) for the front server. It
// accepts a strict subset of HTTP/1.1 and reports ok=false for anything
// outside it — another version, an absolute-form, authority-form or
// asterisk-form target, obs-fold, a bare CR or LF, whitespace before a
// colon, a missing or repeated Host, Transfer-Encoding, a repeated or
// non-numeric Content-Length, Expect, Upgrade, HTTP2-Settings or a
// "Connection: upgrade" — and the connection then goes to Go's net/http
// server, which serves or refuses it. What it accepts, net/http accepts
// and reads the same way (FuzzFrontParse compares them).
//
// head is one string (the header bytes copied once); names and values
// are substrings of it, so a request costs one string, one []string and
// the map.
func parseFrontHead(head string) (h frontHead, ok bool) {
	if !strings.HasSuffix(head, "\r\n\r\n") {
		return h, false
	}
	i := strings.IndexByte(head, '\n')
	if i < 1 || head[i-1] != '\r' {
		return h, false
	}
	if !h.parseRequestLine(head[:i-1]) {
		return h, false
	}
	hosts, lengths := 0, 0
	header, rest, ok := parseFieldLines(head[i+1:], func(name, value string) fieldAction {
		switch name {
		case "Host":
			hosts++
			if !validFrontHost(value) {
				return fieldRefuse
			}
			h.host = value
			return fieldSkip // net/http keeps Host out of the header map
		case "Content-Length":
			lengths++
			cl, ok := parseFrontLength(value)
			if lengths > 1 || !ok {
				return fieldRefuse
			}
			h.contentLength = cl
		case "Transfer-Encoding", "Expect", "Upgrade", "Http2-Settings":
			return fieldRefuse
		case "Connection":
			for t := range Tokens(value) {
				switch {
				case strings.EqualFold(t, "close"):
					h.close = true
				case strings.EqualFold(t, "upgrade"):
					return fieldRefuse
				}
			}
		}
		return fieldKeep
	})
	if !ok || rest != "" || hosts != 1 {
		return h, false
	}
	// As net/http: "Pragma: no-cache" implies Cache-Control.
	if p := header["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
		if _, ok := header["Cache-Control"]; !ok {
			header["Cache-Control"] = []string{"no-cache"}
		}
	}
	h.header = header
	return h, true
}

// parseRequestLine parses "METHOD origin-form HTTP/1.1" into h.
func (h *frontHead) parseRequestLine(line string) bool {
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return false
	}
	h.method = line[:sp1]
	if !Token(h.method) {
		return false
	}
	line = line[sp1+1:]
	sp2 := strings.IndexByte(line, ' ')
	if sp2 <= 0 || line[sp2+1:] != "HTTP/1.1" {
		return false
	}
	h.target = line[:sp2]
	if h.target[0] != '/' || h.method == http.MethodConnect {
		return false
	}
	for j := 0; j < len(h.target); j++ {
		if c := h.target[j]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	u, err := url.ParseRequestURI(h.target)
	if err != nil {
		return false
	}
	h.url = u
	return true
}

// parseFrontLength parses a Content-Length value: digits only, at most
// 18 of them.
func parseFrontLength(v string) (int64, bool) {
	if v == "" || len(v) > 18 {
		return 0, false
	}
	var cl int64
	for j := 0; j < len(v); j++ {
		c := v[j]
		if c < '0' || c > '9' {
			return 0, false
		}
		cl = cl*10 + int64(c-'0')
	}
	return cl, true
}

// fieldAction is what a parser's hook decides about one field line.
type fieldAction int

const (
	fieldKeep   fieldAction = iota // into the header map
	fieldSkip                      // not into the map
	fieldRefuse                    // outside the subset: give up
)

// parseFieldLines parses field lines — rest runs from after the start
// line, each line ending in CRLF, through the empty line — the way
// net/http reads those it accepts: a token name directly followed by the
// colon (so also no obs-fold), the value trimmed of spaces and tabs and
// free of control characters but HTAB, the name canonicalised. hook sees
// each field (canonical name, value) first. It returns the header map
// (its values share one backing slice: one allocation for them all, one
// for the map) and what follows the empty line; ok is false for a line
// outside that subset, a bare LF or CR among them, or when hook refuses.
// It is the one header-line loop of the request and response parsers.
func parseFieldLines(rest string, hook func(name, value string) fieldAction) (h http.Header, after string, ok bool) {
	// Count the fields to size the value slice once.
	n := strings.Count(rest, "\n") - 1
	if n < 0 {
		return nil, "", false
	}
	values := make([]string, n)
	h = make(http.Header, n)
	for k := 0; ; k++ {
		i := strings.IndexByte(rest, '\n')
		if i < 1 || rest[i-1] != '\r' {
			return nil, "", false
		}
		line := rest[:i-1]
		rest = rest[i+1:]
		if line == "" {
			return h, rest, true
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return nil, "", false
		}
		name := line[:colon]
		if !Token(name) {
			return nil, "", false // also whitespace before the colon, obs-fold
		}
		value := strings.Trim(line[colon+1:], " \t")
		if !ValidFieldValue(value) {
			return nil, "", false
		}
		if !isCanonicalKey(name) {
			name = textproto.CanonicalMIMEHeaderKey(name)
		}
		switch hook(name, value) {
		case fieldSkip:
			continue
		case fieldRefuse:
			return nil, "", false
		}
		if old, ok := h[name]; ok {
			h[name] = append(old, value)
		} else {
			values[k] = value
			h[name] = values[k : k+1 : k+1]
		}
	}
}

// isCanonicalKey reports whether k is already in the form
// textproto.CanonicalMIMEHeaderKey gives: a capital letter at the start
// and after each hyphen, lower case elsewhere.
func isCanonicalKey(k string) bool {
	upper := true
	for i := 0; i < len(k); i++ {
		c := k[i]
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return false
		}
		upper = c == '-'
	}
	return true
}

// validFrontHost accepts the Host values the front server serves itself:
// a name or address with an optional port, from a small alphabet.
// Anything else goes to net/http, which applies its own rules.
func validFrontHost(h string) bool {
	if h == "" || len(h) > 255 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_') {
			return false
		}
	}
	return true
}
