package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"unicode/utf8"
)

// CanonicalJSON returns the canonical form of a JSON document: object
// members sorted by key (bytewise on the decoded UTF-8), no insignificant
// whitespace, strings re-escaped minimally (so "\u0041" equals "A"), and
// numbers kept as their literal text (1 and 1.0 differ: levee does not
// guess whether a client meant them to be equal). Invalid JSON, invalid
// UTF-8 or trailing data yields an error.
func CanonicalJSON(b []byte) ([]byte, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("idempotency: canonical JSON: invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	out, err := canonValue(dec, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("idempotency: canonical JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("idempotency: canonical JSON: trailing data after the document")
	}
	return out, nil
}

// maxJSONDepth bounds recursion on hostile input.
const maxJSONDepth = 512

func canonValue(dec *json.Decoder, out []byte, depth int) ([]byte, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("nesting too deep")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			type member struct {
				key string
				val []byte
			}
			var ms []member
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("object key is not a string")
				}
				v, err := canonValue(dec, nil, depth+1)
				if err != nil {
					return nil, err
				}
				ms = append(ms, member{k, v})
			}
			if _, err := dec.Token(); err != nil { // '}'
				return nil, err
			}
			sort.SliceStable(ms, func(i, j int) bool { return ms[i].key < ms[j].key })
			out = append(out, '{')
			for i, m := range ms {
				if i > 0 {
					out = append(out, ',')
				}
				out = appendJSONString(out, m.key)
				out = append(out, ':')
				out = append(out, m.val...)
			}
			return append(out, '}'), nil
		case '[':
			out = append(out, '[')
			first := true
			for dec.More() {
				if !first {
					out = append(out, ',')
				}
				first = false
				if out, err = canonValue(dec, out, depth+1); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil { // ']'
				return nil, err
			}
			return append(out, ']'), nil
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	case string:
		return appendJSONString(out, t), nil
	case json.Number:
		return append(out, t...), nil
	case bool:
		if t {
			return append(out, "true"...), nil
		}
		return append(out, "false"...), nil
	case nil:
		return append(out, "null"...), nil
	}
	return nil, fmt.Errorf("unexpected token %T", tok)
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
	h := sha256.New()
	writeBody(h, payload, true)
	var fp Fingerprint
	h.Sum(fp[:0])
	return fp
}

// FingerprintRequest fingerprints an HTTP request: method, path, query
// (parameters sorted), the body (canonical JSON when the Content-Type is
// JSON and the body parses; raw bytes otherwise) and the values of the
// named headers. Headers not named — X-Request-Id, Date, tracing headers —
// do not count, so a retry that changes them is still "the same request".
func FingerprintRequest(r *http.Request, body []byte, headers []string) Fingerprint {
	h := sha256.New()
	writeField(h, r.Method)
	writeField(h, r.URL.EscapedPath())
	q := r.URL.RawQuery
	if q != "" {
		if v, err := url.ParseQuery(q); err == nil {
			q = v.Encode() // sorted by key, stable within a key
		}
	}
	writeField(h, q)
	for _, name := range headers {
		writeField(h, http.CanonicalHeaderKey(name))
		vs := r.Header.Values(name)
		writeLen(h, len(vs))
		for _, v := range vs {
			writeField(h, v)
		}
	}
	writeBody(h, body, IsJSONContentType(r.Header.Get("Content-Type")))
	var fp Fingerprint
	h.Sum(fp[:0])
	return fp
}

func writeBody(h hash.Hash, body []byte, tryJSON bool) {
	if tryJSON {
		if c, err := CanonicalJSON(body); err == nil {
			h.Write([]byte{'j'})
			writeLen(h, len(c))
			h.Write(c)
			return
		}
	}
	h.Write([]byte{'r'})
	writeLen(h, len(body))
	h.Write(body)
}

func writeLen(h hash.Hash, n int) {
	var b [binary.MaxVarintLen64]byte
	h.Write(b[:binary.PutUvarint(b[:], uint64(n))])
}

func writeField(h hash.Hash, s string) {
	writeLen(h, len(s))
	io.WriteString(h, s)
}
