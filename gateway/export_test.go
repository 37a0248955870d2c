package gateway

import (
	"testing"
	"time"
)

// SetLegacyProbeEvery sets, for t's life, how long a probe of the
// idempotency store that found no earlier webhook record lets events skip
// the lookup (legacyProbeEvery).
func SetLegacyProbeEvery(t testing.TB, d time.Duration) {
	old := legacyProbeEvery.Swap(int64(d))
	t.Cleanup(func() { legacyProbeEvery.Store(old) })
}
