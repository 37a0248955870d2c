package ratelimit_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/ratelimit"
)

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	rate := func(limit int64, period time.Duration, burst int64) ratelimit.Policy {
		return ratelimit.Policy{Kind: ratelimit.KindRate, Limit: limit, Period: period, Burst: burst}
	}
	cases := []struct {
		in   string
		want ratelimit.Policy
		str  string
	}{
		{"100/s burst 200", rate(100, time.Second, 200), "100/s burst 200"},
		{"1000/hour", rate(1000, time.Hour, 1000), "1000/h"},
		{"5000/day", rate(5000, 24*time.Hour, 5000), "5000/d"},
		{"10/m burst 20", rate(10, time.Minute, 20), "10/m burst 20"},
		{"100/10s", rate(100, 10*time.Second, 100), "100/10s"},
		{"100/60s", rate(100, time.Minute, 100), "100/m"},
		{"  7 / Minutes   BURST   1 ", rate(7, time.Minute, 1), "7/m burst 1"},
		{"1/2d", rate(1, 48*time.Hour, 1), "1/2d"},
		{"1000000/s", rate(1000000, time.Second, 1000000), "1000000/s"},
		{"concurrency 50", ratelimit.Policy{Kind: ratelimit.KindConcurrency, Limit: 50}, "concurrency 50"},
		{"Concurrency\t3", ratelimit.Policy{Kind: ratelimit.KindConcurrency, Limit: 3}, "concurrency 3"},
	}
	for _, c := range cases {
		p, err := ratelimit.ParsePolicy(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if p != c.want || p.String() != c.str {
			t.Errorf("%q: got %+v (%s), want %+v (%s)", c.in, p, p, c.want, c.str)
		}
	}
}

func TestParsePolicyErrors(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want string }{
		{"", "empty"},
		{"100", `no "/"`},
		{"100/", "no time unit"},
		{"100/x", `unknown time unit "x"`},
		{"100/fortnight", `unknown time unit "fortnight"`},
		{"100/2week", `unknown time unit "week"`},
		{"100/week burst 5", `a calendar quota takes no "burst"`},
		{"100/h calendar", `"calendar" applies to day, week or month`},
		{"0/s", `limit "0" is not a whole number`},
		{"-1/s", `limit "-1"`},
		{"1.5/s", `limit "1.5"`},
		{"99999999999/s", "limit"},
		{"10/s burst", `exactly one number after "burst"`},
		{"10/s burst 0", `burst "0"`},
		{"10/s burst 5 extra", `exactly one number after "burst"`},
		{"10/s bust 5", `unexpected "bust"`},
		{"2000000/s", "above the maximum"},
		{"1/367d", "longer than"},
		{"1/d burst 400", "spans more than"},
		{"concurrency", "want \"concurrency N\""},
		{"concurrency 0", "concurrency limit"},
		{"concurrency 5 burst 1", "want \"concurrency N\""},
		{"concurrency5", "want \"concurrency N\""},
		{"100/0s", "period multiplier"},
	}
	for _, c := range cases {
		_, err := ratelimit.ParsePolicy(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ratelimit.ErrInvalidPolicy) {
			t.Errorf("%q: err = %v, want ErrInvalidPolicy mentioning %q", c.in, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), "ratelimit: policy") {
			t.Errorf("%q: error %q lacks the package prefix", c.in, err)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	ok := ratelimit.Policy{Name: "api", Limit: 10, Period: time.Second}
	if err := ok.Validate(); err != nil || ok.EffectiveBurst() != 10 || ok.Interval() != 100*time.Millisecond {
		t.Fatalf("%v burst %d interval %v", err, ok.EffectiveBurst(), ok.Interval())
	}
	bad := []struct {
		p    ratelimit.Policy
		want string
	}{
		{ratelimit.Policy{Limit: 10, Period: time.Second}, "name is empty"},
		{ratelimit.Policy{Name: strings.Repeat("n", 65), Limit: 10, Period: time.Second}, "longer than 64"},
		{ratelimit.Policy{Name: "é", Limit: 10, Period: time.Second}, "printable ASCII"},
		{ratelimit.Policy{Name: "a", Limit: 10, Period: 1500 * time.Millisecond}, "whole number of seconds"},
		{ratelimit.Policy{Name: "a", Limit: 10}, "period"},
		{ratelimit.Policy{Name: "a", Limit: 10, Period: time.Second, Burst: -1}, "burst"},
		{ratelimit.Policy{Name: "a", Kind: ratelimit.KindConcurrency, Limit: 10, Period: time.Second}, "no period, burst or calendar"},
		{ratelimit.Policy{Name: "a", Kind: 9, Limit: 10}, "unknown kind"},
	}
	for _, c := range bad {
		if err := c.p.Validate(); err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ratelimit.ErrInvalidPolicy) {
			t.Errorf("%+v: err = %v, want %q", c.p, err, c.want)
		}
	}
}

func TestParseFailureMode(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]ratelimit.FailureMode{"": ratelimit.FailOpen, "fail_open": ratelimit.FailOpen, "fail_closed": ratelimit.FailClosed} {
		if got, err := ratelimit.ParseFailureMode(in); got != want || err != nil || (in != "" && got.String() != in) {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ratelimit.ParseFailureMode("open"); err == nil {
		t.Error("\"open\" accepted")
	}
}
