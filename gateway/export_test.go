package gateway

import (
	"testing"
	"time"
)

// SetLegacyProbeEvery sets, for t's life, how long a probe of the
// idempotency store that found no earlier webhook record lets events skip
// the lookup (legacyProbeEvery). The setting is the package's: like
// t.Setenv, it refuses a parallel test.
func SetLegacyProbeEvery(t testing.TB, d time.Duration) {
	t.Setenv("LEVEE_TEST_LEGACY_PROBE_EVERY", d.String()) // panics in a parallel test
	old := legacyProbeEvery.Swap(int64(d))
	t.Cleanup(func() { legacyProbeEvery.Store(old) })
}
