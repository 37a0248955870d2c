package gateway_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func rlConfig(up, global, route string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {type: memory}
rate_limit:
  policies:
%s
routes:
  - name: api
    match: {path_prefix: /v1}
    upstream: %s
    rate_limit:
%s
  - name: free
    match: {path_prefix: /free}
    upstream: %s
`, global, up, route, up)
}

func TestRateLimitThroughGateway(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	g := startGateway(t, rlConfig(u.srv.URL,
		"    - {name: global-ip, limit: 1000/s burst 1000, key: ip}",
		"      - {name: per-key, limit: 3/hour burst 3, key: \"header:X-Api-Key\"}"))
	for i := 0; i < 3; i++ {
		resp, _ := send(t, "GET", g.base+"/v1/x", "", "X-Api-Key", "alice")
		if resp.StatusCode != 201 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		if resp.Header.Get("RateLimit-Policy") == "" || resp.Header.Get("RateLimit") == "" {
			t.Fatalf("allowed response lacks RateLimit headers: %v", resp.Header)
		}
	}
	resp, body := send(t, "GET", g.base+"/v1/x", "", "X-Api-Key", "alice")
	typ, doc := problemOf(t, resp, body)
	if resp.StatusCode != 429 || typ != "rate-limited" || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "per-key") {
		t.Fatalf("4th request: %d %s %v", resp.StatusCode, body, doc)
	}
	if calls := u.calls.Load(); calls != 3 {
		t.Fatalf("upstream saw %d requests, want 3 (the 429 must not reach it)", calls)
	}
	// Another key, and another route without the policy, are unaffected.
	if resp, _ := send(t, "GET", g.base+"/v1/x", "", "X-Api-Key", "bob"); resp.StatusCode != 201 {
		t.Fatalf("other key: %d", resp.StatusCode)
	}
	if resp, _ := send(t, "GET", g.base+"/free/x", "", "X-Api-Key", "alice"); resp.StatusCode != 201 {
		t.Fatalf("route without the policy: %d", resp.StatusCode)
	}
	m := get(t, "http://"+g.srv.AdminAddr()+"/metrics")
	if !strings.Contains(m, `levee_ratelimit_decisions_total{policy="per-key",result="denied"} 1`) {
		t.Fatalf("metrics:\n%s", grep(m, "ratelimit"))
	}
	if !strings.Contains(g.logs.String(), `"rate_limited_by":"per-key"`) {
		t.Fatalf("access log lacks the denying policy:\n%s", g.logs.String())
	}
}

// Lowering a limit on reload applies at once and grants no fresh burst.
func TestRateLimitReloadKeepsState(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	policy := func(limit string) string {
		return rlConfig(u.srv.URL, "    - {name: all, limit: "+limit+", key: const}", "      []")
	}
	g := startGateway(t, strings.Replace(policy("100/hour burst 100"), "    rate_limit:\n      []\n", "", 1))
	for i := 0; i < 50; i++ {
		if resp, _ := send(t, "GET", g.base+"/v1/x", ""); resp.StatusCode != 201 {
			t.Fatalf("request %d under 100/hour: %d", i, resp.StatusCode)
		}
	}
	if err := os.WriteFile(g.path, []byte(strings.Replace(policy("10/hour burst 10"), "    rate_limit:\n      []\n", "", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if resp, _ := send(t, "GET", g.base+"/v1/x", ""); resp.StatusCode != 429 {
		t.Fatalf("after lowering 100 -> 10 with 50 spent: %d, want 429 (no free reset)", resp.StatusCode)
	}
}

func TestRateLimitConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ global, route, want string }{
		{"    - {name: a, limit: 10 per second}", "      []", "rate_limit.policies[0].limit:"},
		{"    - {name: a, limit: 10/s, key: cookie}", "      []", "rate_limit.policies[0].key:"},
		{"    - {name: a, limit: 10/s}", "      - {name: a, limit: 5/s}", "duplicate policy name \"a\""},
		{"    - {name: a, limit: 10/s, on_store_error: explode}", "      []", "on_store_error"},
		{"    - {limit: 10/s}", "      []", "rate_limit.policies[0].name: required"},
		{"    - {name: a, limit: concurrency 5, fallback: 10/s}", "      []", "must be the same kind"},
	} {
		_, err := parseString(rlConfig("http://h", tc.global, tc.route))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s / %s: err = %v, want %q", tc.global, tc.route, err, tc.want)
		}
	}
}
