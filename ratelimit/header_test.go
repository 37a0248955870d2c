package ratelimit_test

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
)

func TestFields(t *testing.T) {
	t.Parallel()
	burst := mustPolicy(t, "burst", "100/s")
	daily := mustPolicy(t, "daily", "5000/day")
	conc := mustPolicy(t, "inflight", "concurrency 50")
	odd := mustPolicy(t, `a "quoted" \ name`, "10/m burst 20")
	big := mustPolicy(t, "big", "1000/s burst 2000")
	monthly := mustPolicy(t, "monthly", "10000/month")
	cases := []struct {
		p           ratelimit.Policy
		r           ratelimit.Result
		policy, now string
	}{
		{burst, ratelimit.Result{Allowed: true, Remaining: 42, ResetAfter: 580 * time.Millisecond}, `"burst";q=100;w=1`, `"burst";r=42;t=1`},
		{daily, ratelimit.Result{Allowed: true, Remaining: 4999, ResetAfter: 17280 * time.Millisecond}, `"daily";q=5000;w=86400`, `"daily";r=4999;t=18`},
		// Denied: t is the time until one unit is back (17.28 s), not
		// until the whole quota is (24 h).
		{daily, ratelimit.Result{Remaining: 0, RetryAfter: 17280 * time.Millisecond, ResetAfter: 24 * time.Hour}, `"daily";q=5000;w=86400`, `"daily";r=0;t=18`},
		{conc, ratelimit.Result{Allowed: true, Remaining: 49}, `"inflight";q=50;qu="concurrent-requests"`, `"inflight";r=49`},
		{odd, ratelimit.Result{Allowed: true, Remaining: 20}, `"a \"quoted\" \\ name";q=20;w=120`, `"a \"quoted\" \\ name";r=20;t=0`},
		// The burst is q: r never exceeds it (issue 10: q=1000 with r=1999).
		{big, ratelimit.Result{Allowed: true, Remaining: 1999, ResetAfter: time.Millisecond}, `"big";q=2000;w=2`, `"big";r=1999;t=1`},
		{monthly, ratelimit.Result{Allowed: true, Remaining: 9999, ResetAfter: 240 * time.Hour, Window: 31 * 24 * time.Hour},
			`"monthly";q=10000;w=2678400`, `"monthly";r=9999;t=864000`},
	}
	for _, c := range cases {
		h := http.Header{}
		ratelimit.SetHeaders(h, c.p, c.r)
		if h.Get("RateLimit-Policy") != c.policy || h.Get("RateLimit") != c.now {
			t.Errorf("%s: got %q / %q, want %q / %q", c.p.Name, h.Get("RateLimit-Policy"), h.Get("RateLimit"), c.policy, c.now)
		}
		pol, err := ratelimit.ParsePolicyField(c.policy)
		if err != nil || len(pol) != 1 || pol[0].Name != c.p.Name || pol[0].Quota != max(c.p.EffectiveBurst(), c.p.Limit) {
			t.Errorf("%s: ParsePolicyField(%q) = %+v, %v", c.p.Name, c.policy, pol, err)
		}
		st, err := ratelimit.ParseStateField(c.now)
		if err != nil || len(st) != 1 || st[0].Name != c.p.Name || st[0].Remaining != c.r.Remaining {
			t.Errorf("%s: ParseStateField(%q) = %+v, %v", c.p.Name, c.now, st, err)
		}
		if len(pol) == 1 && len(st) == 1 && (st[0].Remaining > pol[0].Quota || (pol[0].Window > 0 && st[0].Reset > pol[0].Window)) {
			t.Errorf("%s: r > q or t > w: %+v %+v", c.p.Name, pol[0], st[0])
		}
	}
}

func TestParseFields(t *testing.T) {
	t.Parallel()
	pol, err := ratelimit.ParsePolicyField(`burst;q=100;w=60,"daily";q=1000;w=86400, "c"; q=5; qu="concurrent-requests";x-vendor=?1;z=1.5`)
	want := []ratelimit.QuotaPolicy{
		{Name: "burst", Quota: 100, Window: time.Minute},
		{Name: "daily", Quota: 1000, Window: 24 * time.Hour},
		{Name: "c", Quota: 5, Unit: "concurrent-requests"},
	}
	if err != nil || !reflect.DeepEqual(pol, want) {
		t.Fatalf("got %+v, %v", pol, err)
	}
	st, err := ratelimit.ParseStateField(`"burst";r=0;t=3, daily;r=999`)
	wantSt := []ratelimit.QuotaState{{Name: "burst", Remaining: 0, Reset: 3 * time.Second}, {Name: "daily", Remaining: 999, Reset: -1}}
	if err != nil || !reflect.DeepEqual(st, wantSt) {
		t.Fatalf("got %+v, %v", st, err)
	}
	for _, bad := range []string{
		``, `,`, `"a";q=1,`, `"a"`, `"a";q=-1`, `"a";q="1"`, `"a";q=1;w=1.5`, `"unterminated;q=1`,
		`(a b);q=1`, `1;q=1`, `"a";Q=1`, `"a";q=1 "b"`, `"a";q=1234567890123456`, `"a\x";q=1`, ":Ynl0ZXM=:;q=1",
	} {
		if _, err := ratelimit.ParsePolicyField(bad); !errors.Is(err, ratelimit.ErrInvalidField) {
			t.Errorf("ParsePolicyField(%q): err = %v, want ErrInvalidField", bad, err)
		}
	}
	for _, bad := range []string{`"a"`, `"a";t=1`, `"a";r=1;t=-1`, `"a";r=?1`} {
		if _, err := ratelimit.ParseStateField(bad); !errors.Is(err, ratelimit.ErrInvalidField) {
			t.Errorf("ParseStateField(%q): err = %v, want ErrInvalidField", bad, err)
		}
	}
}
