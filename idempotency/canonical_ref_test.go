package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"
)

// canonicalJSONReference is CanonicalJSON as it was first written, on
// encoding/json's token stream. Fingerprints already recorded were made
// with it, so the single-pass CanonicalJSON must give the same bytes and
// fail on the same inputs.
func canonicalJSONReference(b []byte) ([]byte, error) {
	if !utf8.Valid(b) {
		return nil, errors.New("invalid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	out, err := refValue(dec, nil, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	return out, nil
}

func refValue(dec *json.Decoder, out []byte, depth int) ([]byte, error) {
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
				v, err := refValue(dec, nil, depth+1)
				if err != nil {
					return nil, err
				}
				ms = append(ms, member{k, v})
			}
			if _, err := dec.Token(); err != nil {
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
				if out, err = refValue(dec, out, depth+1); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil {
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

func FuzzCanonicalJSONMatchesReference(f *testing.F) {
	for _, s := range []string{
		`{"b":1,"a":[true,false,null,-0.5e+3,"x"]}`, ` { "a" : { } , "a" : [ ] } `, `"\u0041\ud83d\ude00\ud800\u0041\udc00\/\b\f\n\r\t\"\\"`,
		`[1,]`, `{"a":1,}`, `01`, `1 2`, `-`, `1.`, `1e`, `[-01]`, `"\x"`, "\"\x01\"", `{"k" 1}`, `nul`, `[[[[]]]]`, "\"\u2028\x7f\"",
		`{"z":{"y":1,"x":2},"é":3,"e":4}`, `123abc`, `{}x`, ``, `   `, `"\ud800"`, `"\udc00\ud800"`, `"\ud800\ud800\udc00"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := CanonicalJSON(in)
		want, werr := canonicalJSONReference(in)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%q: CanonicalJSON error %v, reference error %v", in, err, werr)
		}
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("%q:\n got  %q\n want %q", in, got, want)
		}
	})
}

func TestCanonicalJSONDeepNesting(t *testing.T) {
	for _, n := range []int{maxJSONDepth, maxJSONDepth + 1, 5000} {
		in := bytes.Repeat([]byte("["), n+1)
		in = append(in, bytes.Repeat([]byte("]"), n+1)...)
		_, err := CanonicalJSON(in)
		_, werr := canonicalJSONReference(in)
		if (err == nil) != (werr == nil) {
			t.Fatalf("depth %d: error %v, reference %v", n, err, werr)
		}
	}
}

// The request body of bench/gateway.
var benchBody = []byte(`{"amount":1000,"currency":"eur","customer":"cus_0123456789","description":"levee bench"}`)

func BenchmarkCanonicalJSON(b *testing.B) {
	b.Run("single-pass", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := CanonicalJSON(benchBody); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json-reference", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := canonicalJSONReference(benchBody); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The fingerprint and key functions as first written, hashing field by
// field: recorded fingerprints and keys must not change.
func refWriteLen(h hash.Hash, n int) {
	var b [binary.MaxVarintLen64]byte
	h.Write(b[:binary.PutUvarint(b[:], uint64(n))])
}

func refWriteField(h hash.Hash, s string) {
	refWriteLen(h, len(s))
	io.WriteString(h, s)
}

func refWriteBody(h hash.Hash, body []byte, tryJSON bool) {
	if tryJSON {
		if c, err := canonicalJSONReference(body); err == nil {
			h.Write([]byte{'j'})
			refWriteLen(h, len(c))
			h.Write(c)
			return
		}
	}
	h.Write([]byte{'r'})
	refWriteLen(h, len(body))
	h.Write(body)
}

func refFingerprintRequest(r *http.Request, body []byte, headers []string) Fingerprint {
	h := sha256.New()
	refWriteField(h, r.Method)
	refWriteField(h, r.URL.EscapedPath())
	q := r.URL.RawQuery
	if q != "" {
		if v, err := url.ParseQuery(q); err == nil {
			q = v.Encode()
		}
	}
	refWriteField(h, q)
	for _, name := range headers {
		refWriteField(h, http.CanonicalHeaderKey(name))
		vs := r.Header.Values(name)
		refWriteLen(h, len(vs))
		for _, v := range vs {
			refWriteField(h, v)
		}
	}
	refWriteBody(h, body, IsJSONContentType(r.Header.Get("Content-Type")))
	var fp Fingerprint
	h.Sum(fp[:0])
	return fp
}

func FuzzFingerprintMatchesReference(f *testing.F) {
	f.Add("POST", "/v1/pay?b=2&a=1", "application/json", "tenant-a", `{"b":1,"a":2}`, "k1")
	f.Add("PUT", "/x/%2F", "text/plain", "", "raw body", "")
	f.Add("POST", "/", "application/merchant+json; charset=utf-8", "t", `{"a":"\u0041"}`, strings.Repeat("k", 300))
	f.Fuzz(func(t *testing.T, method, target, ctype, tenant, body, key string) {
		r, err := http.NewRequest("GET", "http://h"+target, nil)
		if err != nil || !h1ok(method) {
			return
		}
		r.Method = method
		r.Header.Set("Content-Type", ctype)
		r.Header.Add("X-Tenant", tenant)
		r.Header.Add("X-Tenant", key)
		heads := []string{"x-tenant", "Content-Type", "Absent"}
		if got, want := FingerprintRequest(r, []byte(body), heads), refFingerprintRequest(r, []byte(body), heads); got != want {
			t.Fatalf("FingerprintRequest changed for %s %s %q", method, target, body)
		}
		h := sha256.New()
		refWriteBody(h, []byte(body), true)
		var want Fingerprint
		h.Sum(want[:0])
		if FingerprintOf([]byte(body)) != want {
			t.Fatalf("FingerprintOf changed for %q", body)
		}
		h = sha256.New()
		refWriteField(h, target)
		refWriteField(h, tenant)
		refWriteField(h, key)
		if ScopedKey(target, tenant, key) != hex.EncodeToString(h.Sum(nil)) {
			t.Fatalf("ScopedKey changed for %q %q %q", target, tenant, key)
		}
	})
}

func h1ok(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range []byte(m) {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Bodies past the in-buffer size are hashed in place: the same
// fingerprints as the first implementation.
func TestFingerprintLargeBodies(t *testing.T) {
	raw := bytes.Repeat([]byte("x"), 100<<10)
	doc := []byte(`{"b":"` + strings.Repeat("y", 100<<10) + `","a":[1,2]}`)
	for _, tc := range []struct {
		body  []byte
		ctype string
	}{{raw, "text/plain"}, {raw, "application/json"}, {doc, "application/json"}, {doc, "text/plain"}} {
		r, _ := http.NewRequest("POST", "http://h/v1/pay?b=2&a=1", nil)
		r.Header.Set("Content-Type", tc.ctype)
		if FingerprintRequest(r, tc.body, nil) != refFingerprintRequest(r, tc.body, nil) {
			t.Fatalf("%s body of %d bytes: fingerprint changed", tc.ctype, len(tc.body))
		}
	}
}
