package idempotency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
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
