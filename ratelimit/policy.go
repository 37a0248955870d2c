package ratelimit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind says how a Policy counts.
type Kind uint8

const (
	// KindRate limits how fast: Limit units per Period on average, with
	// up to Burst at once, decided by GCRA. Quotas ("5000/day") are rate
	// policies whose burst equals the limit.
	KindRate Kind = iota
	// KindConcurrency limits how many requests are in flight at once: at
	// most Limit, each slot given back when its request ends.
	KindConcurrency
	// KindCalendar is a quota of Limit units per calendar day, week
	// (Monday to Monday) or month in Location, counted from zero at each
	// boundary: "10000/month" resets at midnight on the 1st.
	KindCalendar
)

// String returns "rate", "concurrency" or "calendar".
func (k Kind) String() string {
	switch k {
	case KindRate:
		return "rate"
	case KindConcurrency:
		return "concurrency"
	case KindCalendar:
		return "calendar"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Bounds on policies. They keep every time the arithmetic handles within
// int64 nanoseconds and within the integers a Lua double holds exactly.
const (
	// MaxLimit bounds Limit and Burst.
	MaxLimit = 1_000_000_000
	// MaxPeriod bounds Period and the burst window (Burst × Interval).
	MaxPeriod = 366 * 24 * time.Hour
	// MinInterval is the finest emission interval: a rate policy admits at
	// most one unit per microsecond on average (1,000,000/s), the
	// resolution of Redis TIME.
	MinInterval = time.Microsecond
	// maxNameLen bounds Policy.Name.
	maxNameLen = 64
)

// Policy is one limit. Its state is keyed by Name and the request's key,
// never by the numbers, so a policy whose numbers change (a configuration
// reload turning 100/s into 10/s) keeps its state: the change takes effect
// at once, with neither a free reset nor a penalty beyond the new numbers.
//
// The zero Burst means Burst = Limit.
type Policy struct {
	// Name identifies the policy in state keys, in the RateLimit and
	// RateLimit-Policy response fields and in problem details: 1 to 64
	// printable ASCII characters. Names must be unique among the policies
	// of one request.
	Name string
	// Kind is KindRate (the zero value) or KindConcurrency.
	Kind Kind
	// Limit is the number of units admitted per Period (KindRate) or the
	// number of requests in flight at once (KindConcurrency).
	Limit int64
	// Period is the window of a rate policy: a whole number of seconds
	// from 1s to MaxPeriod. Zero for concurrency and calendar policies
	// (a calendar policy's period is Calendar).
	Period time.Duration
	// Burst is the number of units a rate policy admits at once after a
	// quiet spell. Zero means Limit. Zero for concurrency policies; zero
	// or Limit for calendar ones.
	Burst int64
	// Calendar is the calendar period of a KindCalendar policy; zero for
	// the other kinds.
	Calendar CalendarPeriod
	// Location is the time zone whose calendar a KindCalendar policy
	// follows (its days start at local midnight, across DST changes).
	// nil means UTC. Ignored by the other kinds.
	Location *time.Location
}

// CalendarPeriod is the period of a calendar quota.
type CalendarPeriod uint8

const (
	// CalendarDay runs from local midnight to the next (23, 24 or 25
	// hours, across DST changes).
	CalendarDay CalendarPeriod = iota + 1
	// CalendarWeek runs from Monday midnight to the next (ISO 8601 weeks).
	CalendarWeek
	// CalendarMonth runs from midnight on the 1st to the next 1st.
	CalendarMonth
)

// String returns "day", "week" or "month".
func (c CalendarPeriod) String() string {
	switch c {
	case CalendarDay:
		return "day"
	case CalendarWeek:
		return "week"
	case CalendarMonth:
		return "month"
	}
	return "CalendarPeriod(" + strconv.Itoa(int(c)) + ")"
}

// Window returns the calendar period of a KindCalendar policy that
// contains t: [start, end) in the policy's Location. It returns zero times
// for other kinds.
func (p Policy) Window(t time.Time) (start, end time.Time) {
	if p.Kind != KindCalendar {
		return time.Time{}, time.Time{}
	}
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	t = t.In(loc)
	y, m, d := t.Date()
	switch p.Calendar {
	case CalendarWeek:
		d -= (int(t.Weekday()) + 6) % 7 // back to Monday
		return time.Date(y, m, d, 0, 0, 0, 0, loc), time.Date(y, m, d+7, 0, 0, 0, 0, loc)
	case CalendarMonth:
		return time.Date(y, m, 1, 0, 0, 0, 0, loc), time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	default:
		return time.Date(y, m, d, 0, 0, 0, 0, loc), time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	}
}

// ErrInvalidPolicy is wrapped by every error that reports a malformed or
// out-of-range policy, from ParsePolicy or Policy.Validate.
var ErrInvalidPolicy = errors.New("ratelimit: invalid policy")

type policyError struct {
	input string // the text parsed, or "" for a Policy value
	msg   string
}

// Error formats the message with the package prefix and the input.
func (e *policyError) Error() string {
	if e.input != "" {
		return fmt.Sprintf("ratelimit: policy %q: %s", e.input, e.msg)
	}
	return "ratelimit: policy: " + e.msg
}

// Unwrap makes every policy error match ErrInvalidPolicy.
func (e *policyError) Unwrap() error { return ErrInvalidPolicy }

// burst returns the effective burst (0 for a concurrency policy).
func (p Policy) burst() int64 {
	switch p.Kind {
	case KindConcurrency:
		return 0
	case KindCalendar:
		return p.Limit
	}
	if p.Burst == 0 {
		return p.Limit
	}
	return p.Burst
}

// EffectiveBurst returns a rate policy's Burst, or Limit when Burst is
// zero; a calendar policy's Limit; 0 for a concurrency policy.
func (p Policy) EffectiveBurst() int64 { return p.burst() }

// Interval returns the emission interval of a rate policy: Period/Limit
// rounded up to a whole microsecond, the average spacing between admitted
// units. Rounding up keeps the admitted rate at or below Limit/Period.
// It returns 0 for a concurrency or invalid policy.
func (p Policy) Interval() time.Duration {
	return time.Duration(p.intervalMicros()) * time.Microsecond
}

func (p Policy) intervalMicros() int64 {
	if p.Kind != KindRate || p.Limit <= 0 || p.Period <= 0 {
		return 0
	}
	us := int64(p.Period / time.Microsecond)
	return (us + p.Limit - 1) / p.Limit
}

// Validate reports whether p is usable, naming the field that is not.
// Errors wrap ErrInvalidPolicy.
func (p Policy) Validate() error {
	if err := validName(p.Name); err != nil {
		return &policyError{msg: err.Error()}
	}
	if err := p.validNumbers(); err != nil {
		return &policyError{msg: fmt.Sprintf("%q: %s", p.Name, err)}
	}
	return nil
}

func validName(n string) error {
	if n == "" {
		return errors.New("name is empty")
	}
	if len(n) > maxNameLen {
		return fmt.Errorf("name %.20q... is longer than %d bytes", n, maxNameLen)
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("name %q has byte 0x%02x; use printable ASCII", n, c)
		}
	}
	return nil
}

func (p Policy) validNumbers() error {
	switch p.Kind {
	case KindConcurrency:
		if p.Limit < 1 || p.Limit > MaxLimit {
			return fmt.Errorf("concurrency limit %d is out of range 1..%d", p.Limit, MaxLimit)
		}
		if p.Period != 0 || p.Burst != 0 || p.Calendar != 0 {
			return errors.New("a concurrency policy has no period, burst or calendar")
		}
		return nil
	case KindCalendar:
		if p.Limit < 1 || p.Limit > MaxLimit {
			return fmt.Errorf("limit %d is out of range 1..%d", p.Limit, MaxLimit)
		}
		if p.Calendar < CalendarDay || p.Calendar > CalendarMonth {
			return fmt.Errorf("calendar period %v is not day, week or month", p.Calendar)
		}
		if p.Period != 0 || (p.Burst != 0 && p.Burst != p.Limit) {
			return errors.New("a calendar quota has no period and no burst other than its limit")
		}
		return nil
	case KindRate:
	default:
		return fmt.Errorf("unknown kind %d", p.Kind)
	}
	if p.Limit < 1 || p.Limit > MaxLimit {
		return fmt.Errorf("limit %d is out of range 1..%d", p.Limit, MaxLimit)
	}
	if p.Period < time.Second || p.Period > MaxPeriod || p.Period%time.Second != 0 {
		return fmt.Errorf("period %v is not a whole number of seconds from 1s to %v", p.Period, MaxPeriod)
	}
	if p.Calendar != 0 {
		return errors.New("a rate policy has no calendar period")
	}
	if p.Burst < 0 || p.Burst > MaxLimit {
		return fmt.Errorf("burst %d is out of range 1..%d", p.Burst, MaxLimit)
	}
	if iv := p.Interval(); p.Period/time.Duration(p.Limit) < MinInterval {
		return fmt.Errorf("rate %d per %v is above the maximum of one per %v", p.Limit, p.Period, MinInterval)
	} else if time.Duration(p.burst()) > MaxPeriod/iv {
		return fmt.Errorf("burst %d at one per %v spans more than %v", p.burst(), iv, MaxPeriod)
	}
	return nil
}

// String formats p in the syntax ParsePolicy reads, without the name:
// "100/s burst 200", "1000/h", "5000/d", "10/m burst 20", "100/10s",
// "concurrency 50", "10000/month", "5/week", "100/day calendar" (the
// Location of a calendar policy is not part of the string).
func (p Policy) String() string {
	switch p.Kind {
	case KindConcurrency:
		return "concurrency " + strconv.FormatInt(p.Limit, 10)
	case KindCalendar:
		s := strconv.FormatInt(p.Limit, 10) + "/" + p.Calendar.String()
		if p.Calendar == CalendarDay {
			s += " calendar"
		}
		return s
	}
	var b strings.Builder
	b.WriteString(strconv.FormatInt(p.Limit, 10))
	b.WriteByte('/')
	unit, name := time.Second, "s"
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}} {
		if p.Period >= u.d && p.Period%u.d == 0 {
			unit, name = u.d, u.name
			break
		}
	}
	if n := p.Period / unit; n != 1 {
		b.WriteString(strconv.FormatInt(int64(n), 10))
	}
	b.WriteString(name)
	if p.Burst != 0 && p.Burst != p.Limit {
		b.WriteString(" burst ")
		b.WriteString(strconv.FormatInt(p.Burst, 10))
	}
	return b.String()
}

var calendarUnits = map[string]CalendarPeriod{
	"week": CalendarWeek, "weeks": CalendarWeek,
	"month": CalendarMonth, "months": CalendarMonth,
}

var units = map[string]time.Duration{
	"s": time.Second, "sec": time.Second, "secs": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "mins": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hrs": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
}

// ParsePolicy parses a policy without a name (the caller sets Name):
//
//	100/s burst 200    100 per second on average, up to 200 at once
//	10/m burst 20      10 per minute, up to 20 at once
//	1000/hour          a quota: 1000 per hour, all of it usable at once
//	5000/day           likewise per day
//	100/10s            100 per 10 seconds
//	concurrency 50     at most 50 requests in flight
//	10000/month        a calendar quota: 10000 per calendar month, reset at
//	                   midnight on the 1st (Policy.Location, default UTC)
//	500/week           per calendar week, reset at Monday midnight
//	100/day calendar   per calendar day, reset at midnight ("100/day"
//	                   alone is the rolling quota above)
//
// Units are s, m, h and d, or sec/second(s), min/minute(s), hr/hour(s),
// day(s); an optional whole multiplier precedes the unit. week(s) and
// month(s), which have no fixed length, are always calendar periods and
// take no multiplier; "calendar" after day, week or month asks for the
// calendar period explicitly. Matching is
// case-insensitive and tolerates extra spaces. Without "burst", Burst is
// set to Limit. Errors name what is wrong and wrap ErrInvalidPolicy.
func ParsePolicy(s string) (Policy, error) {
	fail := func(format string, args ...any) (Policy, error) {
		return Policy{}, &policyError{input: s, msg: fmt.Sprintf(format, args...)}
	}
	in := strings.ToLower(strings.TrimSpace(s))
	if in == "" {
		return fail("empty; want e.g. \"100/s burst 200\", \"5000/day\" or \"concurrency 50\"")
	}
	var p Policy
	if rest, ok := strings.CutPrefix(in, "concurrency"); ok {
		f := strings.Fields(rest)
		if len(f) != 1 || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
			return fail("want \"concurrency N\"")
		}
		n, err := parseCount(f[0], "concurrency limit")
		if err != nil {
			return fail("%s", err)
		}
		p = Policy{Kind: KindConcurrency, Limit: n}
	} else {
		num, rest, ok := strings.Cut(in, "/")
		if !ok {
			return fail("no \"/\"; want N/unit, e.g. \"100/s\"")
		}
		limit, err := parseCount(strings.TrimSpace(num), "limit")
		if err != nil {
			return fail("%s", err)
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return fail("no time unit after \"/\" (want s, m, h or d)")
		}
		cal, isCal := calendarUnits[f[0]]
		if len(f) == 2 && f[1] == "calendar" {
			if !isCal {
				if u, ok := units[f[0]]; ok && u == 24*time.Hour {
					cal, isCal = CalendarDay, true
				} else {
					return fail("\"calendar\" applies to day, week or month, not %q", f[0])
				}
			}
		} else if isCal && len(f) > 1 {
			return fail("a calendar quota takes no %q", f[1])
		}
		if isCal {
			p = Policy{Kind: KindCalendar, Limit: limit, Calendar: cal}
			if err := p.validNumbers(); err != nil {
				return fail("%s", err)
			}
			return p, nil
		}
		period, err := parsePeriod(f[0])
		if err != nil {
			return fail("%s", err)
		}
		p = Policy{Kind: KindRate, Limit: limit, Period: period, Burst: limit}
		switch {
		case len(f) == 1:
		case f[1] != "burst":
			return fail("unexpected %q after the rate; want \"burst N\"", f[1])
		case len(f) != 3:
			return fail("want exactly one number after \"burst\"")
		default:
			if p.Burst, err = parseCount(f[2], "burst"); err != nil {
				return fail("%s", err)
			}
		}
	}
	if err := p.validNumbers(); err != nil {
		return fail("%s", err)
	}
	return p, nil
}

func parseCount(s, what string) (int64, error) {
	if s == "" || len(s) > 10 {
		return 0, fmt.Errorf("%s %q is not a whole number from 1 to %d", what, s, MaxLimit)
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%s %q is not a whole number from 1 to %d", what, s, MaxLimit)
		}
		n = n*10 + int64(c-'0')
	}
	if n < 1 || n > MaxLimit {
		return 0, fmt.Errorf("%s %q is not a whole number from 1 to %d", what, s, MaxLimit)
	}
	return n, nil
}

func parsePeriod(s string) (time.Duration, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	mult := int64(1)
	if i > 0 {
		n, err := parseCount(s[:i], "period multiplier")
		if err != nil {
			return 0, err
		}
		mult = n
	}
	u, ok := units[s[i:]]
	if !ok {
		return 0, fmt.Errorf("unknown time unit %q (want s, m, h or d)", s[i:])
	}
	if mult > int64(MaxPeriod/u) {
		return 0, fmt.Errorf("period %s is longer than %v", s, MaxPeriod)
	}
	return time.Duration(mult) * u, nil
}

// FailureMode says what a policy does when its store cannot decide
// (unreachable, timed out).
type FailureMode uint8

const (
	// FailOpen (the default) decides with the in-process fallback limiter
	// instead: each replica then enforces the policy (or its configured
	// fallback policy) on its own.
	FailOpen FailureMode = iota
	// FailClosed answers 503 with Retry-After: nothing passes unchecked.
	FailClosed
)

// String returns "fail_open" or "fail_closed".
func (m FailureMode) String() string {
	switch m {
	case FailOpen:
		return "fail_open"
	case FailClosed:
		return "fail_closed"
	}
	return "FailureMode(" + strconv.Itoa(int(m)) + ")"
}

// ParseFailureMode reads "fail_open" or "fail_closed" ("" means
// fail_open).
func ParseFailureMode(s string) (FailureMode, error) {
	switch strings.TrimSpace(s) {
	case "", "fail_open":
		return FailOpen, nil
	case "fail_closed":
		return FailClosed, nil
	}
	return 0, fmt.Errorf("ratelimit: failure mode %q: want fail_open or fail_closed", s)
}

// Share returns one replica's share of p when n replicas enforce it on
// their own (the fail-open fallback of a shared store): a policy that
// admits, summed over the n replicas, about what p admits alone.
//
//   - concurrency N: ceil(N/n) in flight;
//   - rate L/P burst B: the burst becomes ceil(B/n); the rate becomes
//     exactly L/(n·P) — the limit divided when n divides it, else the
//     period multiplied (when that stays within MaxPeriod, else the
//     limit is divided and rounded up);
//   - calendar quota L: ceil(L/n) per calendar period.
//
// Rounding up keeps every replica able to admit at least one unit, so n
// replicas together may admit up to n−1 units more than p's burst (or
// concurrency limit, or quota) at once. n ≤ 1 returns p unchanged; so
// does an invalid p.
func (p Policy) Share(n int) Policy {
	if n <= 1 || p.Validate() != nil {
		return p
	}
	r := int64(n)
	ceil := func(v int64) int64 { return (v + r - 1) / r }
	switch p.Kind {
	case KindConcurrency, KindCalendar:
		p.Limit = ceil(p.Limit)
		return p
	}
	b := ceil(p.burst())
	q := p
	switch {
	case p.Limit%r == 0:
		q.Limit /= r
	case p.Period <= MaxPeriod/time.Duration(r):
		q.Period *= time.Duration(r)
	default:
		q.Limit = ceil(p.Limit)
	}
	q.Burst = b
	if q.Validate() != nil { // the longer period put the burst window past MaxPeriod
		q = p
		q.Limit, q.Burst = ceil(p.Limit), b
	}
	return q
}
