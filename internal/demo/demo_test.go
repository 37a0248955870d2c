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
	if res.Executed != 3 {
		t.Fatalf("upstream executed %d charges, want 3\n%s", res.Executed, out.String())
	}
	want := map[string][]int{
		"first": {201}, "retry": {201}, "concurrent": {201, 409, 409, 409, 409},
		"mismatch": {422}, "missing": {400}, "failure": {503}, "failure-retry": {201},
		"webhook": {202, 202, 202}, "webhook-tampered": {403}, "enqueue": {202}, "replay": {200},
	}
	if len(res.Steps) != len(want) {
		t.Errorf("%d steps recorded, want %d", len(res.Steps), len(want))
	}
	if res.WebhookDeliveries != 1 || res.LedgerDeliveries != 1 {
		t.Errorf("webhook delivered %d times, replayed message %d times; want once each\n%s", res.WebhookDeliveries, res.LedgerDeliveries, out.String())
	}
	for _, s := range res.Steps {
		if w, ok := want[s.Name]; !ok || !slices.Equal(s.Statuses, w) {
			t.Errorf("step %s: statuses %v, want %v", s.Name, s.Statuses, w)
		}
	}
	if !strings.Contains(out.String(), "Idempotent-Replayed: true") {
		t.Errorf("the tour does not show the replay header:\n%s", out.String())
	}
}
