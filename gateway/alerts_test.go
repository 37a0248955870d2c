package gateway

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAlertRulesUseExportedMetrics: every levee_ metric the shipped
// alerting rules (deploy/prometheus/alerts.yaml) query is one the gateway
// registers, so a renamed metric cannot silently disable an alert.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	rules, err := os.ReadFile("../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics("test")
	ch := make(chan *prometheus.Desc, 256)
	go func() { m.Registry.Describe(ch); close(ch) }()
	known := map[string]bool{}
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if sm := name.FindStringSubmatch(d.String()); sm != nil {
			known[sm[1]] = true
		}
	}
	used := regexp.MustCompile(`\blevee_[a-z_]+`).FindAllString(string(rules), -1)
	if len(used) == 0 {
		t.Fatal("no levee_ metric in the rules")
	}
	for _, u := range used {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(u, "_bucket"), "_sum"), "_count")
		if !known[u] && !known[base] {
			t.Errorf("alerts.yaml queries %s, which the gateway does not export", u)
		}
	}
}
