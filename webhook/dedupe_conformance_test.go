package webhook_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	wh "github.com/leveehq/levee/webhook"
	"github.com/leveehq/levee/webhook/webhooktest"
)

// The handler tests' in-memory Dedupe passes the conformance suite in both
// of its in-flight behaviours, so what the handler tests show holds for any
// Dedupe that passes it too.
func TestDedupeConformance(t *testing.T) {
	t.Parallel()
	for name, wait := range map[string]bool{"InFlightError": false, "Wait": true} {
		t.Run(name, func(t *testing.T) {
			webhooktest.TestDedupe(t, func(*testing.T) wh.Dedupe {
				d := newDedupe()
				d.wait = wait
				return d
			})
		})
	}
}

// brokenDedupe marks an event seen even when the sink failed — the bug the
// suite exists to catch.
type brokenDedupe struct{ *dedupe }

func (b brokenDedupe) Claim(ctx context.Context, ev wh.Event) (func(context.Context, error) error, bool, error) {
	done, seen, err := b.dedupe.Claim(ctx, ev)
	if done == nil {
		return done, seen, err
	}
	return func(ctx context.Context, _ error) error { return done(ctx, nil) }, seen, err
}

// TestDedupeConformanceCatchesBrokenDedupe runs the suite against
// brokenDedupe in a child test process and expects it to fail there: a
// suite that cannot fail proves nothing.
func TestDedupeConformanceCatchesBrokenDedupe(t *testing.T) {
	t.Parallel()
	if os.Getenv("WEBHOOKTEST_BROKEN") == "1" {
		webhooktest.TestDedupe(t, func(*testing.T) wh.Dedupe { return brokenDedupe{newDedupe()} })
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestDedupeConformanceCatchesBrokenDedupe$", "-test.count=1")
	cmd.Env = append(os.Environ(), "WEBHOOKTEST_BROKEN=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the suite passed a Dedupe that marks failed events seen:\n%s", out)
	}
	if !strings.Contains(string(out), "a failed sink marked it") {
		t.Fatalf("the suite failed for another reason:\n%s", out)
	}
}
