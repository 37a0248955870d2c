package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCleanupPassChunksAndMovesOnAfterAFailure: a pass deletes in chunks
// until one comes back short; a failing store is counted and logged, and
// the pass still sweeps the next store.
func TestCleanupPassChunksAndMovesOnAfterAFailure(t *testing.T) {
	left := int64(2*cleanupChunk + 7) // three chunks: full, full, short
	var calls []int
	failing := cleanupTarget{"idempotency", func(context.Context, time.Time, int) (int64, error) {
		return 0, errors.New("disk I/O error")
	}}
	good := cleanupTarget{"queue", func(_ context.Context, _ time.Time, limit int) (int64, error) {
		calls = append(calls, limit)
		n := min(left, int64(limit))
		left -= n
		return n, nil
	}}
	m := newCleanupMetrics(prometheus.NewRegistry())
	c := &cleanup{targets: []cleanupTarget{failing, good}, m: m, log: slog.New(slog.NewTextHandler(io.Discard, nil)), ctx: context.Background()}
	c.pass()
	if len(calls) != 3 || left != 0 {
		t.Errorf("%d chunks, %d rows left; want 3 chunks and none left", len(calls), left)
	}
	if got := testutil.ToFloat64(m.deleted.WithLabelValues("queue")); got != float64(2*cleanupChunk+7) {
		t.Errorf("deleted{queue} = %v", got)
	}
	if got := testutil.ToFloat64(m.failures.WithLabelValues("idempotency")); got != 1 {
		t.Errorf("failures{idempotency} = %v, want 1", got)
	}
	if startCleanup(nil, time.Second, m, c.log) != nil || startCleanup([]cleanupTarget{good}, 0, m, c.log) != nil {
		t.Error("a clean-up started with nothing to clean, or with the interval 0 (off)")
	}
	var nilc *cleanup
	nilc.Stop() // safe
}

// TestCleanupStopCancelsAStatementInFlight: Stop does not wait out a
// clean-up statement (up to cleanupTimeout); it cancels it, and that is not
// counted as a failure.
func TestCleanupStopCancelsAStatementInFlight(t *testing.T) {
	started, ended := make(chan struct{}), make(chan error, 1)
	blocking := cleanupTarget{"idempotency", func(ctx context.Context, _ time.Time, _ int) (int64, error) {
		close(started)
		<-ctx.Done()
		ended <- ctx.Err()
		return 0, ctx.Err()
	}}
	m := newCleanupMetrics(prometheus.NewRegistry())
	c := startCleanup([]cleanupTarget{blocking}, time.Second, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	<-started
	c.Stop()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Errorf("the statement in flight ended with %v, want context.Canceled (Stop)", err)
	}
	if got := testutil.ToFloat64(m.failures.WithLabelValues("idempotency")); got != 0 {
		t.Errorf("failures{idempotency} = %v after Stop, want 0", got)
	}
}
