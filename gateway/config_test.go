package gateway_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
)

func noEnv(string) (string, bool) { return "", false }

func TestExampleConfigIsValid(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../examples/levee.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := gateway.Parse("../examples/levee.yaml", data, noEnv)
	if err != nil {
		t.Fatalf("examples/levee.yaml: %v", err)
	}
	r := cfg.Routes[0]
	if r.Name != "payments" || r.Idempotency == nil || !r.Idempotency.Required || r.Idempotency.Lease.D() != 30*time.Second {
		t.Fatalf("route 0 = %+v", r)
	}
	if cfg.Server.MaxBodyBytes != 10<<20 || cfg.Server.MaxHeaderBytes != 64<<10 {
		t.Fatalf("sizes: %d %d", cfg.Server.MaxBodyBytes, cfg.Server.MaxHeaderBytes)
	}
	if cfg.Store.Postgres.URL != "postgres://levee@127.0.0.1:5432/levee?sslmode=disable" {
		t.Fatalf("default from ${VAR:-default} not applied: %q", cfg.Store.Postgres.URL)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := gateway.Parse("x.yaml", []byte("routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://127.0.0.1:1\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":8080" || cfg.Admin.Listen != "127.0.0.1:9090" || cfg.Store.Type != "sqlite" || cfg.Store.SQLite.Path != "levee.db" {
		t.Fatalf("defaults: %+v", cfg)
	}
	if cfg.Routes[0].Timeout.D() != 30*time.Second || cfg.Server.ShutdownTimeout.D() != 35*time.Second || !*cfg.Log.AccessLog {
		t.Fatalf("defaults: %+v", cfg.Routes[0])
	}
}

func TestConfigErrorsNameLineAndField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown field", "routes:\n  - name: a\n    match: {path: /a}\n    upstreem: http://x\n",
			[]string{"x.yaml:4: routes[0].upstreem: unknown field", "known fields here:"}},
		{"unknown top-level", "listen: :1\nlisten_port: 3\nroutes: []\n", []string{"x.yaml:2: listen_port: unknown field"}},
		{"bad upstream", "routes:\n  - name: a\n    match: {path: /a}\n    upstream: ftp://x\n",
			[]string{"x.yaml:4: routes[0].upstream: must be an absolute http or https URL"}},
		{"missing upstream", "routes:\n  - name: a\n    match: {path: /a}\n", []string{"routes[0].upstream: required"}},
		{"duplicate name", "routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n  - name: a\n    match: {path: /b}\n    upstream: http://h\n",
			[]string{"x.yaml:5: routes[1].name: duplicate route name \"a\""}},
		{"bad duration", "routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n    timeout: 5 seconds\n",
			[]string{"x.yaml:5:", "invalid duration \"5 seconds\""}},
		{"bad size", "server:\n  max_body_bytes: 10 parsecs\nroutes: []\n", []string{"x.yaml:2:", "unknown unit"}},
		{"no routes", "listen: :8080\n", []string{"routes: at least one route is required"}},
		{"empty", "", []string{"the config is empty"}},
		{"yaml syntax", "routes:\n  - name: [\n", []string{"x.yaml:"}},
		{"unknown store", "store: {type: mongo}\nroutes: []\n", []string{"x.yaml:1: store.type: unknown store \"mongo\""}},
		{"postgres needs url", "store: {type: postgres}\nroutes: []\n", []string{"store.postgres.url: required"}},
		{"flush delay too long", "store:\n  redis: {flush_delay: 20ms}\nroutes: []\n", []string{"x.yaml:2: store.redis.flush_delay: must be between 0 and 10ms"}},
		{"cleanup interval too short", "store: {cleanup_interval: 10ms}\nroutes: []\n", []string{"x.yaml:1: store.cleanup_interval: must be 0 (off) or between 1s and 24h"}},
		{"flush delay on the limiter", "rate_limit:\n  redis: {flush_delay: 1ms}\nroutes: []\n", []string{"x.yaml:2: rate_limit.redis.flush_delay: applies to store.redis only"}},
		{"unknown engine", "server: {engine: nginx}\nroutes: []\n", []string{"x.yaml:1: server.engine: unknown engine \"nginx\""}},
		{"GET not idempotent", "routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n    idempotency:\n      methods: [GET]\n",
			[]string{"routes[0].idempotency.methods[0]: GET is safe"}},
		{"missing env", "store:\n  redis:\n    password: ${NOPE}\nroutes: []\n", []string{"x.yaml:3:", "environment variable NOPE is not set"}},
		{"bad proxy cidr", "trusted_proxies: [10.0.0.0/33]\nroutes: []\n", []string{"trusted_proxies[0]: invalid CIDR"}},
		{"host with port", "routes:\n  - name: a\n    match: {path: /a, host: \"api.example.com:8443\"}\n    upstream: http://h\n", []string{"routes[0].match.host:", "without a port"}},
		{"unclean path", "routes:\n  - name: a\n    match: {path: /v1/./pay}\n    upstream: http://h\n", []string{"routes[0].match.path:", "use \"/v1/pay\""}},
		{"upstream credentials", "routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://u:secret@h\n", []string{"routes[0].upstream: must not carry credentials"}},
		{"shutdown too short", "server: {shutdown_timeout: 10s}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n    timeout: 20s\n", []string{"x.yaml:1: server.shutdown_timeout: 10s is shorter"}},
		{"prefix and path", "routes:\n  - name: a\n    match: {path: /a, path_prefix: /b}\n    upstream: http://h\n", []string{"routes[0].match: path and path_prefix are exclusive"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := gateway.Parse("x.yaml", []byte(tc.yaml), noEnv)
			var ce *gateway.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *ConfigError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Parallel()
	env := map[string]string{"PW": "s3cr:t #x", "PORT": "7070", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	y := "listen: 127.0.0.1:${PORT}\nstore:\n  redis:\n    password: ${PW}\n    prefix: ${EMPTY:-dflt}\n    db: ${DBN:-3}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h/$$x\n"
	cfg, err := gateway.Parse("x.yaml", []byte(y), lookup)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7070" || cfg.Store.Redis.Password != "s3cr:t #x" || cfg.Store.Redis.Prefix != "dflt" || cfg.Store.Redis.DB != 3 {
		t.Fatalf("expanded: listen %q pw %q prefix %q db %d", cfg.Listen, cfg.Store.Redis.Password, cfg.Store.Redis.Prefix, cfg.Store.Redis.DB)
	}
	if cfg.Routes[0].Upstream != "http://h/$x" {
		t.Fatalf("$$ not a literal $: %q", cfg.Routes[0].Upstream)
	}
	red := cfg.Redacted()
	if red.Store.Redis.Password != "REDACTED" || cfg.Store.Redis.Password != "s3cr:t #x" {
		t.Fatal("Redacted must mask the copy only")
	}
}

func TestRedactedPostgresURL(t *testing.T) {
	t.Parallel()
	cfg, err := gateway.Parse("x.yaml", []byte("store:\n  type: postgres\n  postgres:\n    url: postgres://u:hunter2@db/levee?password=hunter2\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Redacted().Store.Postgres.URL; strings.Contains(u, "hunter2") {
		t.Fatalf("redacted URL still has the password: %s", u)
	}
	cfg.Store.Postgres.URL = "host=db user=u password=hunter2 dbname=levee"
	if u := cfg.Redacted().Store.Postgres.URL; u != "host=db user=u password=REDACTED dbname=levee" {
		t.Fatalf("redacted keyword DSN: %s", u)
	}
	cfg.Store.Postgres.URL = "host=db password='hun ter2' user=u"
	if u := cfg.Redacted().Store.Postgres.URL; strings.Contains(u, "hun") {
		t.Fatalf("redacted quoted keyword DSN: %s", u)
	}
}

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "64KiB": 64 << 10, "10MiB": 10 << 20, "1MB": 1e6, "2 GiB": 2 << 30, "5k": 5 << 10, "7b": 7} {
		if got, err := gateway.ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5MiB", "10 parsecs", "99999999999999999999"} {
		if _, err := gateway.ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	data, _ := os.ReadFile("../examples/levee.yaml")
	f.Add(data)
	f.Add([]byte("routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n"))
	f.Add([]byte("listen: ${X:-:1}\nroutes: [{name: a}]"))
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg, err := gateway.Parse("f.yaml", in, noEnv)
		if err != nil {
			var ce *gateway.ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error %v is not a ConfigError with problems", err)
			}
			return
		}
		if len(cfg.Routes) == 0 {
			t.Fatal("accepted a config without routes")
		}
		for _, r := range cfg.Routes {
			if r.Name == "" || r.Upstream == "" {
				t.Fatalf("accepted an incomplete route %+v", r)
			}
		}
	})
}

func FuzzExpandEnv(f *testing.F) {
	for _, s := range []string{"${A}", "$${A}", "${A:-b}", "x$", "${", "${1A}", "$$$$"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := gateway.ExpandEnv(in, func(string) (string, bool) { return "v", true })
		if err == nil && strings.Contains(in, "${") && !strings.Contains(in, "$$") && strings.Contains(out, "${") {
			t.Fatalf("ExpandEnv(%q) = %q left a reference unexpanded", in, out)
		}
	})
}

func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"1", "10MiB", "1 GB", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		n, err := gateway.ParseByteSize(in)
		if err == nil && n < 0 {
			t.Fatalf("ParseByteSize(%q) = %d", in, n)
		}
	})
}

func parseString(y string) (*gateway.Config, error) { return gateway.Parse("x.yaml", []byte(y), noEnv) }

func TestConfigReportsEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	y := "server:\n  read_timeout: 5 seconds\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n    timeout: forever\n    idempotency: {lease: 1x, required: maybe}\n  - name: b\n    match: {path_prefix: b}\n    upstream: ftp://x\n"
	_, err := parseString(y)
	want := []string{
		`x.yaml:2: server.read_timeout: invalid duration "5 seconds"`,
		`x.yaml:7: routes[0].timeout: invalid duration "forever"`,
		`x.yaml:8: routes[0].idempotency.lease: invalid duration "1x"`,
		`x.yaml:8: routes[0].idempotency.required: want a boolean`,
		`x.yaml:10: routes[1].match.path_prefix: must start with /`,
		`x.yaml:11: routes[1].upstream: must be an absolute http or https URL`,
	}
	if err == nil {
		t.Fatal("accepted")
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

func TestReloadRestartOnlyFieldsAreNamed(t *testing.T) {
	t.Parallel()
	base := "store: {type: memory}\nrate_limit: {concurrency_lease: 1m}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n"
	a, err := parseString(base)
	if err != nil {
		t.Fatal(err)
	}
	b, err := parseString(strings.Replace(strings.Replace(base, "1m", "2m", 1), "memory", "sqlite", 1) + "server: {max_body_bytes: 1KiB, idle_timeout: 1s}\n")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(a.RestartChanges(b), ",")
	if got != "store,server.idle_timeout,rate_limit.concurrency_lease" {
		t.Fatalf("RestartChanges = %s", got)
	}
}
