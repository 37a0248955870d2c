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
	line, rest := head[:i-1], head[i+1:]
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 {
		return h, false
	}
	h.method = line[:sp1]
	if !Token(h.method) {
		return h, false
	}
	line = line[sp1+1:]
	sp2 := strings.IndexByte(line, ' ')
	if sp2 <= 0 || line[sp2+1:] != "HTTP/1.1" {
		return h, false
	}
	h.target = line[:sp2]
	if h.target[0] != '/' || h.method == http.MethodConnect {
		return h, false
	}
	for j := 0; j < len(h.target); j++ {
		if c := h.target[j]; c <= ' ' || c >= 0x7f {
			return h, false
		}
	}
	u, err := url.ParseRequestURI(h.target)
	if err != nil {
		return h, false
	}
	h.url = u

	// Count the fields to size the value slice once.
	n := strings.Count(rest, "\n") - 1
	if n < 0 {
		return h, false
	}
	values := make([]string, n)
	h.header = make(http.Header, n)
	hosts, lengths := 0, 0
	for k := 0; ; k++ {
		i := strings.IndexByte(rest, '\n')
		if i < 1 || rest[i-1] != '\r' {
			return h, false
		}
		line := rest[:i-1]
		rest = rest[i+1:]
		if line == "" {
			if rest != "" || hosts != 1 {
				return h, false
			}
			// As net/http: "Pragma: no-cache" implies Cache-Control.
			if p := h.header["Pragma"]; len(p) > 0 && p[0] == "no-cache" {
				if _, ok := h.header["Cache-Control"]; !ok {
					h.header["Cache-Control"] = []string{"no-cache"}
				}
			}
			break
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return h, false
		}
		name := line[:colon]
		if !Token(name) {
			return h, false // also whitespace before the colon, obs-fold
		}
		value := strings.Trim(line[colon+1:], " \t")
		for j := 0; j < len(value); j++ {
			if c := value[j]; c < ' ' && c != '\t' || c == 0x7f {
				return h, false
			}
		}
		if !isCanonicalKey(name) {
			name = textproto.CanonicalMIMEHeaderKey(name)
		}
		switch name {
		case "Host":
			hosts++
			if !validFrontHost(value) {
				return h, false
			}
			h.host = value
			continue // net/http keeps Host out of the header map
		case "Content-Length":
			lengths++
			if lengths > 1 || value == "" || len(value) > 18 {
				return h, false
			}
			var cl int64
			for j := 0; j < len(value); j++ {
				c := value[j]
				if c < '0' || c > '9' {
					return h, false
				}
				cl = cl*10 + int64(c-'0')
			}
			h.contentLength = cl
		case "Transfer-Encoding", "Expect", "Upgrade", "Http2-Settings":
			return h, false
		case "Connection":
			for t := range Tokens(value) {
				switch {
				case strings.EqualFold(t, "close"):
					h.close = true
				case strings.EqualFold(t, "upgrade"):
					return h, false
				}
			}
		}
		if old, ok := h.header[name]; ok {
			h.header[name] = append(old, value)
		} else {
			values[k] = value
			h.header[name] = values[k : k+1 : k+1]
		}
	}
	return h, true
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
