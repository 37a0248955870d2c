package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// CanonicalJSON returns the canonical form of a JSON document: object
// members sorted by key (bytewise on the decoded UTF-8), no insignificant
// whitespace, strings re-escaped minimally (so "\u0041" equals "A"), and
// numbers kept as their literal text (1 and 1.0 differ: levee does not
// guess whether a client meant them to be equal). Invalid JSON, invalid
// UTF-8 or trailing data yields an error.
//
// It is a single pass over the bytes (encoding/json's token stream cost a
// tenth of an idempotent request's CPU); its output is byte for byte the
// one of the encoding/json-based version it replaced, which a fuzz test
// keeps as the reference, so fingerprints recorded before stay valid.
func CanonicalJSON(b []byte) ([]byte, error) {
	return appendCanonicalJSON(make([]byte, 0, len(b)), b)
}

// appendCanonicalJSON appends the canonical form of b to dst; on error dst
// may hold part of it.
func appendCanonicalJSON(dst, b []byte) ([]byte, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("idempotency: canonical JSON: invalid UTF-8")
	}
	p := canonParser{src: b}
	p.skipSpace()
	out, err := p.value(dst, 0)
	if err != nil {
		return nil, fmt.Errorf("idempotency: canonical JSON: %w", err)
	}
	p.skipSpace()
	if p.i != len(b) {
		return nil, errors.New("idempotency: canonical JSON: trailing data after the document")
	}
	return out, nil
}

// maxJSONDepth bounds recursion on hostile input.
const maxJSONDepth = 512

type canonParser struct {
	src     []byte
	i       int
	scratch []byte // decoded strings with escapes
}

var errJSONSyntax = errors.New("invalid JSON")

func (p *canonParser) skipSpace() {
	for p.i < len(p.src) {
		switch p.src[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// value appends the canonical form of the value at p.i to out.
func (p *canonParser) value(out []byte, depth int) ([]byte, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("nesting too deep")
	}
	if p.i >= len(p.src) {
		return nil, errJSONSyntax
	}
	switch c := p.src[p.i]; {
	case c == '{':
		return p.object(out, depth)
	case c == '[':
		p.i++
		out = append(out, '[')
		p.skipSpace()
		if p.i < len(p.src) && p.src[p.i] == ']' {
			p.i++
			return append(out, ']'), nil
		}
		for {
			var err error
			if out, err = p.value(out, depth+1); err != nil {
				return nil, err
			}
			p.skipSpace()
			if p.i >= len(p.src) {
				return nil, errJSONSyntax
			}
			switch p.src[p.i] {
			case ',':
				p.i++
				p.skipSpace()
				out = append(out, ',')
			case ']':
				p.i++
				return append(out, ']'), nil
			default:
				return nil, errJSONSyntax
			}
		}
	case c == '"':
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return appendJSONString(out, s), nil
	case c == '-' || c >= '0' && c <= '9':
		return p.number(out)
	case c == 't':
		return p.literal(out, "true")
	case c == 'f':
		return p.literal(out, "false")
	case c == 'n':
		return p.literal(out, "null")
	}
	return nil, errJSONSyntax
}

func (p *canonParser) literal(out []byte, lit string) ([]byte, error) {
	if len(p.src)-p.i < len(lit) || string(p.src[p.i:p.i+len(lit)]) != lit {
		return nil, errJSONSyntax
	}
	p.i += len(lit)
	return append(out, lit...), nil
}

// object sorts the members by key (stable: duplicate keys keep their
// order) and appends them.
func (p *canonParser) object(out []byte, depth int) ([]byte, error) {
	p.i++ // {
	type member struct {
		key        string
		start, end int // the canonical value in vals
	}
	var ms []member
	var vals []byte
	p.skipSpace()
	if p.i < len(p.src) && p.src[p.i] == '}' {
		p.i++
		return append(out, '{', '}'), nil
	}
	for {
		if p.i >= len(p.src) || p.src[p.i] != '"' {
			return nil, errJSONSyntax
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.i >= len(p.src) || p.src[p.i] != ':' {
			return nil, errJSONSyntax
		}
		p.i++
		p.skipSpace()
		start := len(vals)
		if vals, err = p.value(vals, depth+1); err != nil {
			return nil, err
		}
		ms = append(ms, member{k, start, len(vals)})
		p.skipSpace()
		if p.i >= len(p.src) {
			return nil, errJSONSyntax
		}
		if p.src[p.i] == '}' {
			p.i++
			break
		}
		if p.src[p.i] != ',' {
			return nil, errJSONSyntax
		}
		p.i++
		p.skipSpace()
	}
	slices.SortStableFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out = append(out, '{')
	for i, m := range ms {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendJSONString(out, m.key)
		out = append(out, ':')
		out = append(out, vals[m.start:m.end]...)
	}
	return append(out, '}'), nil
}

// str reads the string at p.i (its opening quote) and returns it decoded
// as encoding/json does: escapes resolved, surrogate pairs joined, a lone
// surrogate read as U+FFFD.
func (p *canonParser) str() (string, error) {
	p.i++ // opening quote
	start := p.i
	for p.i < len(p.src) {
		c := p.src[p.i]
		switch {
		case c == '"':
			s := string(p.src[start:p.i])
			p.i++
			return s, nil
		case c == '\\':
			return p.escapedStr(start)
		case c < 0x20:
			return "", errJSONSyntax
		}
		p.i++
	}
	return "", errJSONSyntax
}

func (p *canonParser) escapedStr(start int) (string, error) {
	buf := append(p.scratch[:0], p.src[start:p.i]...)
	for p.i < len(p.src) {
		c := p.src[p.i]
		switch {
		case c == '"':
			p.i++
			p.scratch = buf
			return string(buf), nil
		case c < 0x20:
			return "", errJSONSyntax
		case c != '\\':
			buf = append(buf, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.src) {
			return "", errJSONSyntax
		}
		e := p.src[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := hex4(p.src[p.i:])
			if !ok {
				return "", errJSONSyntax
			}
			p.i += 4
			if utf16.IsSurrogate(r) {
				if len(p.src)-p.i >= 6 && p.src[p.i] == '\\' && p.src[p.i+1] == 'u' {
					if r2, ok := hex4(p.src[p.i+2:]); ok {
						if d := utf16.DecodeRune(r, r2); d != unicode.ReplacementChar {
							p.i += 6
							buf = utf8.AppendRune(buf, d)
							break
						}
					}
				}
				r = unicode.ReplacementChar
			}
			buf = utf8.AppendRune(buf, r)
		default:
			return "", errJSONSyntax
		}
	}
	return "", errJSONSyntax
}

// hex4 decodes four hex digits.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r*16 + rune(c)
	}
	return r, true
}

// number appends the number literal at p.i as written, after checking its
// grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *canonParser) number(out []byte) ([]byte, error) {
	s, i := p.src, p.i
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := func() bool {
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > j
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case !digits():
		return nil, errJSONSyntax
	}
	if i < len(s) && s[i] == '.' {
		i++
		if !digits() {
			return nil, errJSONSyntax
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if !digits() {
			return nil, errJSONSyntax
		}
	}
	out = append(out, s[p.i:i]...)
	p.i = i
	return out, nil
}

// appendJSONString writes s as a JSON string with the minimal escapes:
// quote, backslash and control characters; everything else as UTF-8.
func appendJSONString(out []byte, s string) []byte {
	const hex = "0123456789abcdef"
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c < 0x20:
			out = append(out, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			out = append(out, c)
		}
	}
	return append(out, '"')
}

// IsJSONContentType reports whether a Content-Type names JSON
// (application/json or any +json suffix).
func IsJSONContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// FingerprintOf fingerprints an opaque payload for Engine.Do: the canonical
// JSON form when payload is a JSON document, its raw bytes otherwise.
func FingerprintOf(payload []byte) Fingerprint {
	bp := preimagePool.Get().(*[]byte)
	fp, b := sumWithBody((*bp)[:0], payload, true)
	putPreimage(bp, b)
	return fp
}

// FingerprintRequest fingerprints an HTTP request: method, path, query
// (parameters sorted), the body (canonical JSON when the Content-Type is
// JSON and the body parses; raw bytes otherwise) and the values of the
// named headers. Headers not named — X-Request-Id, Date, tracing headers —
// do not count, so a retry that changes them is still "the same request".
//
// The fields are length-prefixed (uvarint) and hashed with SHA-256 in one
// pass over a pooled buffer.
func FingerprintRequest(r *http.Request, body []byte, headers []string) Fingerprint {
	bp := preimagePool.Get().(*[]byte)
	b := (*bp)[:0]
	b = appendField(b, r.Method)
	b = appendField(b, r.URL.EscapedPath())
	q := r.URL.RawQuery
	if q != "" {
		if v, err := url.ParseQuery(q); err == nil {
			q = v.Encode() // sorted by key, stable within a key
		}
	}
	b = appendField(b, q)
	for _, name := range headers {
		b = appendField(b, http.CanonicalHeaderKey(name))
		vs := r.Header.Values(name)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = appendField(b, v)
		}
	}
	fp, b := sumWithBody(b, body, IsJSONContentType(r.Header.Get("Content-Type")))
	putPreimage(bp, b)
	return fp
}

// preimagePool holds the buffers fingerprints are computed over.
var preimagePool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func putPreimage(bp *[]byte, b []byte) {
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		preimagePool.Put(bp)
	}
}

// sumWithBody appends the body's tag and length to the fields in b — 'j'
// and the canonical JSON when tryJSON and body is a JSON document, else
// 'r' and the raw bytes — and returns the SHA-256 of b followed by those
// bytes, and b. A body up to 4 KiB is appended and hashed in one call; a
// larger one is hashed where it is, not copied.
func sumWithBody(b, body []byte, tryJSON bool) (Fingerprint, []byte) {
	content, tag := body, byte('r')
	var cp *[]byte
	if tryJSON {
		cp = preimagePool.Get().(*[]byte)
		if c, err := appendCanonicalJSON((*cp)[:0], body); err == nil {
			content, tag = c, 'j'
		}
	}
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(content)))
	var fp Fingerprint
	if len(content) <= 4<<10 {
		b = append(b, content...)
		fp = sha256.Sum256(b)
	} else {
		h := sha256.New()
		h.Write(b)
		h.Write(content)
		h.Sum(fp[:0])
	}
	if cp != nil {
		if tag == 'j' {
			putPreimage(cp, content)
		} else {
			putPreimage(cp, (*cp)[:0])
		}
	}
	return fp, b
}

func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}
