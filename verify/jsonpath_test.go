package verify_test

import (
	"errors"
	"testing"

	"github.com/leveehq/levee/verify"
)

func TestJSONPath(t *testing.T) {
	t.Parallel()
	doc := []byte(`{"id":"a","n":1,"o":{"x.y":[1,{"z":"w"}]}}`)
	for _, tc := range []struct{ path, want string }{
		{"$.id", `"a"`}, {"id", `"a"`}, {"$.n", "1"}, {`$.o['x.y'][1].z`, `"w"`}, {`$["o"]["x.y"][0]`, "1"},
	} {
		p, err := verify.ParseJSONPath(tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		got, err := p.Lookup(doc)
		if err != nil || got != tc.want {
			t.Errorf("%s = %s, %v; want %s", tc.path, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "$", "$.", "$[", "$[x]", "$[-1]", "$['a", "$..a", "$a"} {
		if _, err := verify.ParseJSONPath(bad); !errors.Is(err, verify.ErrJSONPath) {
			t.Errorf("%q: %v, want ErrJSONPath", bad, err)
		}
	}
	p, _ := verify.ParseJSONPath("$.missing")
	if _, err := p.Lookup(doc); !errors.Is(err, verify.ErrJSONPath) {
		t.Errorf("missing member: %v", err)
	}
	if _, err := p.Lookup([]byte("not json")); !errors.Is(err, verify.ErrJSONPath) {
		t.Errorf("not JSON: %v", err)
	}
}

func FuzzJSONPath(f *testing.F) {
	for _, s := range []string{"$.id", "a.b[0]", `$['x'][2]["y"]`, "$[", "$.a..b", "$[99999999999]"} {
		f.Add(s, `{"a":{"b":[1]},"id":"x"}`)
	}
	f.Fuzz(func(t *testing.T, path, doc string) {
		p, err := verify.ParseJSONPath(path)
		if err != nil {
			if !errors.Is(err, verify.ErrJSONPath) {
				t.Fatalf("error does not wrap ErrJSONPath: %v", err)
			}
			return
		}
		q, err := verify.ParseJSONPath(p.String())
		if err != nil || q.String() != p.String() {
			t.Fatalf("%q reparsed as %q: %v", p.String(), q.String(), err)
		}
		_, _ = p.Lookup([]byte(doc))
	})
}
