package demo_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/leveehq/levee/internal/demo"
)

func TestTour(t *testing.T) {
	var out strings.Builder
	res, err := demo.Run(context.Background(), demo.Options{Out: &out})
	if err != nil {
		t.Fatalf("tour: %v\n%s", err, out.String())
	}
	if res.Executed != 4 {
		t.Fatalf("upstream executed %d charges, want 4\n%s", res.Executed, out.String())
	}
	want := map[string][]int{
		"first": {201}, "retry": {201}, "concurrent": {201, 409, 409, 409, 409},
		"mismatch": {422}, "missing": {400}, "failure": {503}, "failure-retry": {201},
		"lost": {502}, "held": {409}, "resolve": {200}, "replayed": {201},
		"egress-retry-after": {201}, "egress-same-key": {201}, "egress-down": {500}, "egress-open": {503},
		"egress-recovered": {201}, "egress-429": {503}, "egress-paused": {429},
		"webhook": {202, 202, 202}, "webhook-tampered": {403}, "enqueue": {202}, "replay": {200},
	}
	recorded := map[string]bool{}
	for _, s := range res.Steps {
		recorded[s.Name] = true
	}
	for name := range want {
		if !recorded[name] {
			t.Errorf("step %s was not recorded", name)
		}
	}
	if res.WebhookDeliveries != 1 || res.LedgerDeliveries != 1 {
		t.Errorf("webhook delivered %d times, replayed message %d times; want once each\n%s", res.WebhookDeliveries, res.LedgerDeliveries, out.String())
	}
	for _, s := range res.Steps {
		if w, ok := want[s.Name]; !ok || !slices.Equal(s.Statuses, w) {
			t.Errorf("step %s: statuses %v, want %v", s.Name, s.Statuses, w)
		}
	}
	for _, w := range []string{"Retry-After: 1", "key seen before: stored answer replayed", "the open breaker sent nothing (7 before, 7 after)",
		"the paused call never left (9 before, 9 after)", "the partner executed 3 charges"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("the tour does not show %q:\n%s", w, out.String())
		}
	}
	if !strings.Contains(out.String(), "Idempotent-Replayed: true") {
		t.Errorf("the tour does not show the replay header:\n%s", out.String())
	}
}
