package gateway

import "time"

// SetLegacyProbeEvery sets, on s's webhook routes, how long a probe of the
// idempotency store that found no earlier webhook record lets events skip
// the lookup (legacyDedupe.every).
func SetLegacyProbeEvery(s *Server, d time.Duration) {
	s.queues.legacyMu.Lock()
	defer s.queues.legacyMu.Unlock()
	for _, l := range s.queues.legacy {
		l.every.Store(int64(d))
	}
}
