package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/leveehq/levee/internal/syncbuf"
)

type builtWith struct{ err error }

func (b builtWith) WaitIndexes(context.Context) error { return b.err }

// logIndexBuild: a background index build that failed is logged at WARN
// (docs/queue.md); one that ended well, or that Close interrupted, is not.
func TestLogIndexBuild(t *testing.T) {
	for _, c := range []struct {
		err  error
		warn bool
	}{
		{nil, false},
		{fmt.Errorf("pgqueue: index build: %w", context.Canceled), false},
		{errors.New("pgqueue: index build: queue_dedupe_expires: disk full"), true},
	} {
		var buf syncbuf.Buffer
		logIndexBuild(builtWith{c.err}, slog.New(slog.NewJSONHandler(&buf, nil)))
		got := buf.String()
		if warned := strings.Contains(got, `"level":"WARN"`) && strings.Contains(got, "disk full"); warned != c.warn {
			t.Errorf("build ending with %v: logged %q, want a WARN naming it %v", c.err, got, c.warn)
		}
	}
}
