package gateway_test

import (
	"strings"
	"testing"
	"time"
)

func rlOnly(rateLimit string) string {
	return `listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {type: memory}
rate_limit:
` + rateLimit + `
routes:
  - name: api
    match: {path_prefix: /v1}
    upstream: http://127.0.0.1:1
`
}

// The rate-limit options of issue 10 are reachable from YAML, with their
// defaults, and validated by field name.
func TestRateLimitConfigOptions(t *testing.T) {
	t.Parallel()
	cfg, err := parseString(rlOnly(`  policies:
    - {name: monthly, limit: 10000/month, key: "header:X-Api-Key", time_zone: Europe/Paris}`))
	if err != nil {
		t.Fatal(err)
	}
	rl := cfg.RateLimit
	if rl.Timeout.D() != 250*time.Millisecond || rl.MaxWait.D() != time.Second || rl.Replicas != 1 || rl.Connections != 256 {
		t.Fatalf("defaults: timeout %v max_wait %v replicas %d connections %d", rl.Timeout.D(), rl.MaxWait.D(), rl.Replicas, rl.Connections)
	}
	for _, c := range []struct{ yaml, want string }{
		{`  policies: [{name: p, limit: 100/s, time_zone: Europe/Paris}]`, "rate_limit.policies[0].time_zone: applies to calendar quotas only"},
		{`  policies: [{name: p, limit: 100/month, time_zone: Mars/Olympus}]`, `unknown time zone "Mars/Olympus"`},
		{`  replicas: -1`, "rate_limit.replicas"},
		{`  connections: 20000`, "rate_limit.connections"},
		{`  {timeout: 2s, max_wait: 1s}`, "rate_limit.max_wait"},
	} {
		y := rlOnly(c.yaml)
		if strings.HasPrefix(c.yaml, "  {") {
			y = strings.Replace(rlOnly(""), "rate_limit:\n", "rate_limit: "+strings.TrimSpace(c.yaml)+"\n", 1)
		}
		if _, err := parseString(y); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.yaml, err, c.want)
		}
	}
}
