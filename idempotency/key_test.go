package idempotency_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/leveehq/levee/idempotency"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 255)
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"abc", "abc", true},
		{`"abc"`, "abc", true},
		{` "abc" `, "abc", true},
		{`"a\"b\\c"`, `a"b\c`, true},
		{"8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324", true},
		{long, long, true},
		{`"` + long + `"`, long, true},
		{long + "k", "", false},
		{"", "", false},
		{`""`, "", false},
		{"a b", "", false},
		{`"a b"`, "", false}, // visible ASCII only, even quoted
		{"ключ", "", false},
		{"a\x00b", "", false},
		{`"abc`, "", false},
		{`"abc";p=1`, "", false},
		{`"a\nb"`, "", false},
		{`"abc"x`, "", false},
	} {
		got, err := idempotency.ParseKey(tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("ParseKey(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, idempotency.ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %q, %v; want ErrInvalidKey", tc.in, got, err)
		}
	}
}

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"abc", `"abc"`, `"a\"b"`, "", `"`, `"\`, "a b", strings.Repeat("x", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		k, err := idempotency.ParseKey(in)
		if err != nil {
			if !errors.Is(err, idempotency.ErrInvalidKey) {
				t.Fatalf("error %v does not wrap ErrInvalidKey", err)
			}
			return
		}
		if len(k) < 1 || len(k) > idempotency.MaxKeyLen {
			t.Fatalf("accepted key of length %d", len(k))
		}
		for i := 0; i < len(k); i++ {
			if k[i] < 0x21 || k[i] > 0x7e {
				t.Fatalf("accepted non-visible byte %q", k[i])
			}
		}
		// The quoted form of an accepted key parses back to the same key.
		q := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(k) + `"`
		if k2, err := idempotency.ParseKey(q); err != nil || k2 != k {
			t.Fatalf("quoted round trip of %q = %q, %v", k, k2, err)
		}
	})
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	same := [][2]string{
		{`{"a":1,"b":2}`, `{"b":2,"a":1}`},
		{`{ "a" : [1, 2, {"y":1,"x":2}] }`, `{"a":[1,2,{"x":2,"y":1}]}`},
		{`"\u0041"`, `"A"`},
		{"{\"a\":\n\t\"x\"}", `{"a":"x"}`},
		{`{"é":"\u00e9"}`, `{"é":"é"}`},
	}
	for _, p := range same {
		a, err1 := idempotency.CanonicalJSON([]byte(p[0]))
		b, err2 := idempotency.CanonicalJSON([]byte(p[1]))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s and %s: %s / %s (%v %v), want equal", p[0], p[1], a, b, err1, err2)
		}
	}
	differ := [][2]string{
		{`{"a":1}`, `{"a":1.0}`},
		{`{"a":1}`, `{"a":"1"}`},
		{`[1,2]`, `[2,1]`},
		{`{"a":null}`, `{}`},
	}
	for _, p := range differ {
		a, _ := idempotency.CanonicalJSON([]byte(p[0]))
		b, _ := idempotency.CanonicalJSON([]byte(p[1]))
		if bytes.Equal(a, b) {
			t.Errorf("%s and %s canonicalise equal (%s), want different", p[0], p[1], a)
		}
	}
	for _, bad := range []string{`{`, `{"a":1}x`, `{"a":1}{"b":2}`, "\xff", strings.Repeat("[", 600) + strings.Repeat("]", 600)} {
		if _, err := idempotency.CanonicalJSON([]byte(bad)); err == nil {
			t.Errorf("CanonicalJSON(%.40q) succeeded, want an error", bad)
		}
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":[true,null,"x"]}`, `[]`, `"\u0000"`, `1e5`, `{"a":{"b":{}}}`, `{"a":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := idempotency.CanonicalJSON(in)
		if err != nil {
			return
		}
		if !json.Valid(c) {
			t.Fatalf("canonical form %q of %q is not valid JSON", c, in)
		}
		c2, err := idempotency.CanonicalJSON(c)
		if err != nil || !bytes.Equal(c, c2) {
			t.Fatalf("not idempotent: %q -> %q (%v)", c, c2, err)
		}
	})
}

func FuzzUnmarshalResponse(f *testing.F) {
	f.Add(idempotency.MarshalResponse(idempotency.Response{Status: 201, Body: []byte("x")}))
	f.Add([]byte{1, 0, 200, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := idempotency.UnmarshalResponse(in)
		if err != nil {
			return
		}
		again, err := idempotency.UnmarshalResponse(idempotency.MarshalResponse(r))
		if err != nil || again.Status != r.Status || !bytes.Equal(again.Body, r.Body) || len(again.Header) != len(r.Header) {
			t.Fatalf("round trip changed %+v into %+v (%v)", r, again, err)
		}
	})
}
