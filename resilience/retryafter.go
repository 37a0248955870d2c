package resilience

import (
	"net/http"
	"strings"
	"time"
)

// maxRetryAfter is where ParseRetryAfter saturates: far above any cap.
const maxRetryAfter = 100 * 365 * 24 * time.Hour

// ParseRetryAfter parses a Retry-After field value (RFC 9110 §10.2.3):
// delay-seconds (1*DIGIT) or an HTTP-date (any of the three forms
// http.ParseTime reads), the latter relative to now. A date in the past
// means 0. A delay too large for a Duration saturates at about 100 years
// (above any cap, so it fails fast). It reports false for an empty or
// invalid value (a negative or fractional number, garbage), which
// callers treat as absent: the computed backoff applies.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	if c := v[0]; c >= '0' && c <= '9' {
		var secs int64
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c < '0' || c > '9' {
				return parseRetryAfterDate(v, now)
			}
			if secs < int64(maxRetryAfter/time.Second) {
				secs = secs*10 + int64(c-'0')
			}
		}
		return time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second, true
	}
	return parseRetryAfterDate(v, now)
}

func parseRetryAfterDate(v string, now time.Time) (time.Duration, bool) {
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	if d < 0 {
		return 0, true
	}
	return min(d, maxRetryAfter), true
}
