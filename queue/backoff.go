package queue

import "time"

// BackoffCeiling is the upper bound of the wait after the given failed
// attempt (from 1): base·2^(attempt−1), capped at max. The wait itself is
// drawn uniformly from [0, ceiling] ("full jitter"), so that retries of
// messages that failed together spread out.
func BackoffCeiling(attempt int, base, max time.Duration) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := base
	for i := 1; i < attempt; i++ {
		if d >= max/2 {
			return max
		}
		d *= 2
	}
	return min(d, max)
}
