package keyrange

import (
	"strings"
	"testing"
)

func TestPrefixEnd(t *testing.T) {
	for _, c := range []struct {
		prefix, end string
		ok          bool
	}{
		{"levee:webhook:provider:", "levee:webhook:provider;", true},
		{"a", "b", true},
		{"a\xff", "b", true},
		{"a\xfe\xff\xff", "a\xff", true},
		{"\xff\xff", "", false},
		{"", "", false},
	} {
		end, ok := PrefixEnd(c.prefix)
		if end != c.end || ok != c.ok {
			t.Errorf("PrefixEnd(%q) = %q, %v; want %q, %v", c.prefix, end, ok, c.end, c.ok)
		}
	}
}

// FuzzPrefixEnd: a key is in [prefix, end) exactly when it begins with
// prefix (byte-wise order, as the stores' collations compare).
func FuzzPrefixEnd(f *testing.F) {
	f.Add("levee:webhook:p:", "levee:webhook:p:0a")
	f.Add("a\xff", "b")
	f.Add("\xff", "\xff\x00")
	f.Fuzz(func(t *testing.T, prefix, key string) {
		end, ok := PrefixEnd(prefix)
		in := key >= prefix && (!ok || key < end)
		if in != strings.HasPrefix(key, prefix) {
			t.Fatalf("prefix %q end %q (%v): key %q in range %v, has prefix %v", prefix, end, ok, key, in, strings.HasPrefix(key, prefix))
		}
	})
}
