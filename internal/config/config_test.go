package config_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/config"
)

type inner struct {
	Timeout config.Duration `yaml:"timeout"`
	Size    config.ByteSize `yaml:"size"`
	Name    string          `yaml:"name"`
}

func (i *inner) Defaults() {
	if i.Timeout == 0 {
		i.Timeout = config.Duration(time.Second)
	}
}

func (i *inner) Validate(r *config.Report, path string) {
	if i.Name == "" {
		r.Bad(config.Join(path, "name"), "required")
	}
}

type root struct {
	Listen   string  `yaml:"listen" reload:"restart"`
	Password string  `yaml:"password" redact:"secret"`
	URL      string  `yaml:"url" redact:"dsn"`
	Items    []inner `yaml:"items"`
	One      *inner  `yaml:"one" reload:"restart"`
	Count    int     `yaml:"count"`

	sawInnerDefaults bool
}

func (r *root) Defaults() {
	r.sawInnerDefaults = len(r.Items) == 0 || r.Items[0].Timeout != 0
}

func (r *root) Validate(rep *config.Report, _ string) {
	if r.Count < 0 {
		rep.Bad("count", "must not be negative")
	}
}

func noEnv(string) (string, bool) { return "", false }

func load(t *testing.T, y string) (*root, error) {
	t.Helper()
	var r root
	err := config.Load("x.yaml", []byte(y), noEnv, &r)
	return &r, err
}

func TestLoadReportsEveryProblemWithLineAndField(t *testing.T) {
	t.Parallel()
	_, err := load(t, "listen: :1\nitems:\n  - {timeout: 5 seconds, name: a}\n  - {size: 3 parsecs}\n  - {timeout: 1s}\ncount: -1\nbogus: 1\n")
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		`x.yaml:3: items[0].timeout: invalid duration "5 seconds"`,
		`x.yaml:4: items[1].size: invalid size "3 parsecs"`,
		`x.yaml:7: bogus: unknown field (known fields here: count, items, listen, one, password, url)`,
		`x.yaml:4: items[1].name: required`,
		`x.yaml:5: items[2].name: required`,
		`x.yaml:6: count: must not be negative`,
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestLoadDropsRepeatsOfUndecodableFields(t *testing.T) {
	t.Parallel()
	// name: [x] does not decode into a string; the section's "required"
	// for the same field would only repeat it.
	_, err := load(t, "items:\n  - {name: [x]}\n")
	if err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), "items[0].name: want a string") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoadDefaultsChildrenBeforeParents(t *testing.T) {
	t.Parallel()
	r, err := load(t, "items:\n  - {name: a}\n")
	if err != nil {
		t.Fatal(err)
	}
	if !r.sawInnerDefaults || r.Items[0].Timeout.D() != time.Second {
		t.Fatalf("the root ran before its children's defaults: %+v", r)
	}
}

func TestSyntaxErrorLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ y, want string }{
		{"items:\n  - name: a\n    timeout: {x: 1\n  - name: b\n", "x.yaml:3:"},
		{"items:\n  - name: a\n    timeout: 1s\n   bad: 1\n", "x.yaml:4:"},
		{"items:\n\t- name: a\n", "x.yaml:2:"},
	} {
		if _, err := load(t, tc.y); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want prefix %s", tc.y, err, tc.want)
		}
	}
}

func TestRestartChanges(t *testing.T) {
	t.Parallel()
	a, _ := load(t, "listen: :1\ncount: 1\none: {name: x}\nitems: [{name: a}]\n")
	b, _ := load(t, "listen: :2\ncount: 2\none: {name: y}\nitems: [{name: b}]\n")
	if got := config.RestartChanges(a, b); !slices.Equal(got, []string{"listen", "one"}) {
		t.Fatalf("RestartChanges = %v, want [listen one]", got)
	}
	if got := config.RestartChanges(a, a); len(got) != 0 {
		t.Fatalf("no change: %v", got)
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	r, err := load(t, "password: hunter2\nurl: postgres://u:hunter2@db/x?password=hunter2\nitems: [{name: a, timeout: 90s, size: 2MiB}]\n")
	if err != nil {
		t.Fatal(err)
	}
	red, err := config.Redact(r)
	if err != nil {
		t.Fatal(err)
	}
	if red.Password != config.Redacted || strings.Contains(red.URL, "hunter2") || !strings.Contains(red.URL, "u:REDACTED@db") {
		t.Fatalf("redacted: %q %q", red.Password, red.URL)
	}
	if r.Password != "hunter2" {
		t.Fatal("Redact changed the original")
	}
	if red.Items[0].Timeout.D() != 90*time.Second || red.Items[0].Size != 2<<20 {
		t.Fatalf("copy lost values: %+v", red.Items[0])
	}
	empty, _ := config.Redact(&root{})
	if empty.Password != "" {
		t.Fatal("an empty secret is shown as empty, not REDACTED")
	}
}

func TestRedactDSN(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"host=db user=u password=hunter2 dbname=levee": "host=db user=u password=REDACTED dbname=levee",
		"host=db password='hun ter2' user=u":           "host=db password=REDACTED user=u",
		"":                                             "",
	} {
		if got := config.RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte("listen: :1\nitems:\n  - {timeout: 5s, name: a}\n"))
	f.Add([]byte("items: {x: 1}\none: [1]\ncount: x\n"))
	f.Add([]byte("items:\n  - name: a\n   bad: 1\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var r root
		err := config.Load("f.yaml", in, noEnv, &r)
		if err == nil {
			for i, it := range r.Items {
				if it.Name == "" {
					t.Fatalf("accepted items[%d] without a name", i)
				}
			}
			return
		}
		var ce *config.Error
		if !errors.As(err, &ce) || len(ce.Problems) == 0 {
			t.Fatalf("error %v is not an *Error with problems", err)
		}
	})
}
