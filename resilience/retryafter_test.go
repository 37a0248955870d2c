package resilience_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/leveehq/levee/resilience"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := epoch
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"2", 2 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"3600", time.Hour, true},
		{"99999999999999999999999", 100 * 365 * 24 * time.Hour, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{now.Add(5 * time.Second).Format(time.RFC850), 5 * time.Second, true},
		{now.Add(5 * time.Second).Format(time.ANSIC), 5 * time.Second, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"12abc", 0, false},
	}
	for _, tc := range cases {
		got, ok := resilience.ParseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "2", "3600", "99999999999999999999999", "Fri, 02 Jan 2026 03:04:07 GMT",
		"Friday, 02-Jan-26 03:04:07 GMT", "Fri Jan  2 03:04:07 2026", "", "-1", "1.5", " 7 ", "\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := resilience.ParseRetryAfter(s, epoch)
		if d < 0 || d > 100*365*24*time.Hour || (!ok && d != 0) {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v", s, d, ok)
		}
	})
}

func FuzzParseQuota(f *testing.F) {
	for _, s := range [][3]string{{`"x";r=0;t=2`, `"x";q=10;w=60`, ""}, {"", "", "5"}, {`a;r=1, b;r=0`, "", "-3"}, {"", "", "1767323105"}} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, state, policy, remaining string) {
		h := http.Header{}
		h.Set("RateLimit", state)
		h.Set("RateLimit-Policy", policy)
		h.Set("X-RateLimit-Remaining", remaining)
		h.Set("X-RateLimit-Reset", remaining)
		q, ok := resilience.ParseQuota(h, epoch)
		if q.Remaining < 0 || q.Reset < 0 || (!ok && q != (resilience.Quota{})) {
			t.Fatalf("ParseQuota = %+v, %v", q, ok)
		}
	})
}
