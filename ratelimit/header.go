package ratelimit

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Response field names of draft-ietf-httpapi-ratelimit-headers.
const (
	HeaderPolicy = "RateLimit-Policy"
	HeaderState  = "RateLimit"
)

// ConcurrencyUnit is the quota unit ("qu") advertised for concurrency
// policies; rate policies count requests, the draft's default unit, and
// omit it.
const ConcurrencyUnit = "concurrent-requests"

// PolicyField formats p as one RateLimit-Policy member, in the
// structured-field syntax of draft-ietf-httpapi-ratelimit-headers; r is
// the policy's current state (only a calendar quota's Window is read):
//
//	"api";q=200;w=2                    100/s burst 200
//	"slow";q=5;w=300                   1/m burst 5
//	"daily";q=5000;w=86400             5000/day (rolling)
//	"monthly";q=10000;w=2678400        10000/month, in a 31-day month
//	"inflight";q=50;qu="concurrent-requests"
//
// A GCRA policy is described by what it lets a client do from a full
// state: q is the burst (the units usable at once) and w the burst window
// Burst × Interval rounded up to whole seconds (the time an emptied burst
// takes to come back entirely). So RateLimit's r never exceeds q, t never
// exceeds w, and q − r is the units in use. A calendar quota's q is its
// Limit and w the length of the current calendar period. Concurrency
// policies have no window.
func PolicyField(p Policy, r Result) string {
	b := make([]byte, 0, 48)
	b = appendSFString(b, p.Name)
	b = append(b, ";q="...)
	switch p.Kind {
	case KindConcurrency:
		b = strconv.AppendInt(b, p.Limit, 10)
		b = append(b, `;qu="`+ConcurrencyUnit+`"`...)
	case KindCalendar:
		b = strconv.AppendInt(b, p.Limit, 10)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, window(p, r), 10)
	default:
		b = strconv.AppendInt(b, p.burst(), 10)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, window(p, r), 10)
	}
	return string(b)
}

// window is the w of p in whole seconds (at least 1).
func window(p Policy, r Result) int64 {
	if p.Kind == KindCalendar {
		if r.Window > 0 {
			return max(ceilSeconds(r.Window), 1)
		}
		_, end := p.Window(time.Unix(0, 0))
		return max(ceilSeconds(end.Sub(time.Unix(0, 0))), 1) // no state: a nominal period
	}
	return max(ceilSeconds(time.Duration(p.burst())*p.Interval()), 1)
}

// StateField formats r as the RateLimit member for policy p:
// "api";r=42;t=1. r is Result.Remaining (never negative, never above
// the q of PolicyField); t is Result.NextAfter — the seconds until more
// quota is available, rounded up and at most w; 0 when r = q —
// as draft-ietf-httpapi-ratelimit-headers (-10 and later) defines it.
// Concurrency policies have no t. On a 429, Retry-After is never less
// than the violated policy's t: a demand of one unit waits exactly t.
func StateField(p Policy, r Result) string {
	b := make([]byte, 0, 48)
	b = appendSFString(b, p.Name)
	b = append(b, ";r="...)
	q := p.burst() // rate and calendar: the q of PolicyField
	if p.Kind == KindConcurrency {
		q = p.Limit
	}
	b = strconv.AppendInt(b, min(max(r.Remaining, 0), q), 10)
	if p.Kind != KindConcurrency {
		b = append(b, ";t="...)
		b = strconv.AppendInt(b, min(ceilSeconds(r.NextAfter(p)), window(p, r)), 10)
	}
	return string(b)
}

// SetHeaders sets RateLimit-Policy and RateLimit on h for one policy and
// its result.
func SetHeaders(h http.Header, p Policy, r Result) {
	h.Set(HeaderPolicy, PolicyField(p, r))
	h.Set(HeaderState, StateField(p, r))
}

// ceilSeconds rounds d up to whole seconds (0 stays 0).
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// appendSFString appends s as a structured-field String; bytes outside
// printable ASCII (which a valid Policy.Name never has) become '?'.
func appendSFString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// QuotaPolicy is one member of a RateLimit-Policy field.
type QuotaPolicy struct {
	// Name is the policy identifier (a String or Token).
	Name string
	// Quota is the q parameter.
	Quota int64
	// Window is the w parameter; 0 when absent.
	Window time.Duration
	// Unit is the qu parameter; "" when absent (meaning requests).
	Unit string
}

// QuotaState is one member of a RateLimit field.
type QuotaState struct {
	// Name is the policy identifier (a String or Token).
	Name string
	// Remaining is the r parameter.
	Remaining int64
	// Reset is the t parameter; -1 when absent.
	Reset time.Duration
}

// ErrInvalidField is wrapped by ParsePolicyField and ParseStateField
// errors. Per RFC 8941, a field that fails to parse must be ignored
// entirely.
var ErrInvalidField = errors.New("ratelimit: invalid field")

// ParsePolicyField parses a RateLimit-Policy field value (several field
// lines joined by ", "), as a client of a rate-limited API (levee's egress
// side) reads it. Members need a String or Token name and an Integer q;
// unknown parameters are ignored.
func ParsePolicyField(v string) ([]QuotaPolicy, error) {
	items, err := parseSFList(v)
	if err != nil {
		return nil, err
	}
	out := make([]QuotaPolicy, 0, len(items))
	for _, it := range items {
		p := QuotaPolicy{Name: it.name}
		q, ok := it.param("q")
		if !ok || q.kind != sfInteger || q.i < 0 {
			return nil, fmt.Errorf("%w: policy %q: missing or negative q", ErrInvalidField, it.name)
		}
		p.Quota = q.i
		if w, ok := it.param("w"); ok {
			if w.kind != sfInteger || w.i < 0 || w.i > int64(MaxPeriod/time.Second) {
				return nil, fmt.Errorf("%w: policy %q: w is not a whole number of seconds", ErrInvalidField, it.name)
			}
			p.Window = time.Duration(w.i) * time.Second
		}
		if u, ok := it.param("qu"); ok {
			if u.kind != sfString && u.kind != sfToken {
				return nil, fmt.Errorf("%w: policy %q: qu is not a string", ErrInvalidField, it.name)
			}
			p.Unit = u.s
		}
		out = append(out, p)
	}
	return out, nil
}

// ParseStateField parses a RateLimit field value. Members need a String
// or Token name and an Integer r; t is optional; unknown parameters are
// ignored.
func ParseStateField(v string) ([]QuotaState, error) {
	items, err := parseSFList(v)
	if err != nil {
		return nil, err
	}
	out := make([]QuotaState, 0, len(items))
	for _, it := range items {
		s := QuotaState{Name: it.name, Reset: -1}
		r, ok := it.param("r")
		if !ok || r.kind != sfInteger || r.i < 0 {
			return nil, fmt.Errorf("%w: %q: missing or negative r", ErrInvalidField, it.name)
		}
		s.Remaining = r.i
		if t, ok := it.param("t"); ok {
			if t.kind != sfInteger || t.i < 0 || t.i > int64(MaxPeriod/time.Second) {
				return nil, fmt.Errorf("%w: %q: t is not a whole number of seconds", ErrInvalidField, it.name)
			}
			s.Reset = time.Duration(t.i) * time.Second
		}
		out = append(out, s)
	}
	return out, nil
}

// A minimal RFC 8941 List parser: members must be Items whose bare value
// is a String or Token (the policy name); parameter values may be any
// bare item except Byte Sequences, Dates and Display Strings, which are
// rejected.

type sfKind uint8

const (
	sfInteger sfKind = iota + 1
	sfDecimal
	sfString
	sfToken
	sfBoolean
)

type sfValue struct {
	kind sfKind
	i    int64
	s    string
}

type sfParam struct {
	key string
	val sfValue
}

type sfItem struct {
	name   string
	params []sfParam
}

// param returns the last value of key (RFC 8941: later keys override).
func (it *sfItem) param(key string) (sfValue, bool) {
	for i := len(it.params) - 1; i >= 0; i-- {
		if it.params[i].key == key {
			return it.params[i].val, true
		}
	}
	return sfValue{}, false
}

type sfParser struct {
	s   string
	pos int
}

func (p *sfParser) fail(msg string) error {
	return fmt.Errorf("%w: %s at offset %d", ErrInvalidField, msg, p.pos)
}

func (p *sfParser) skipSP() {
	for p.pos < len(p.s) && p.s[p.pos] == ' ' {
		p.pos++
	}
}

func (p *sfParser) skipOWS() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

func parseSFList(v string) ([]sfItem, error) {
	p := &sfParser{s: v}
	p.skipSP()
	var items []sfItem
	if p.pos == len(p.s) {
		return nil, p.fail("empty list")
	}
	for {
		it, err := p.item()
		if err != nil {
			return nil, err
		}
		items = append(items, it)
		p.skipOWS()
		if p.pos == len(p.s) {
			return items, nil
		}
		if p.s[p.pos] != ',' {
			return nil, p.fail("expected ','")
		}
		p.pos++
		p.skipOWS()
		if p.pos == len(p.s) {
			return nil, p.fail("trailing ','")
		}
	}
}

func (p *sfParser) item() (sfItem, error) {
	v, err := p.bare()
	if err != nil {
		return sfItem{}, err
	}
	if v.kind != sfString && v.kind != sfToken {
		return sfItem{}, p.fail("policy name is not a string or token")
	}
	it := sfItem{name: v.s}
	for p.pos < len(p.s) && p.s[p.pos] == ';' {
		p.pos++
		p.skipSP()
		k, err := p.key()
		if err != nil {
			return sfItem{}, err
		}
		val := sfValue{kind: sfBoolean, i: 1}
		if p.pos < len(p.s) && p.s[p.pos] == '=' {
			p.pos++
			if val, err = p.bare(); err != nil {
				return sfItem{}, err
			}
		}
		it.params = append(it.params, sfParam{key: k, val: val})
	}
	return it, nil
}

func (p *sfParser) key() (string, error) {
	start := p.pos
	if p.pos == len(p.s) || !(p.s[p.pos] >= 'a' && p.s[p.pos] <= 'z' || p.s[p.pos] == '*') {
		return "", p.fail("expected a parameter key")
	}
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '*' {
			p.pos++
			continue
		}
		break
	}
	return p.s[start:p.pos], nil
}

func (p *sfParser) bare() (sfValue, error) {
	if p.pos == len(p.s) {
		return sfValue{}, p.fail("expected a value")
	}
	switch c := p.s[p.pos]; {
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case c == '"':
		return p.str()
	case c == '*' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		start := p.pos
		p.pos++
		for p.pos < len(p.s) && (isTchar(p.s[p.pos]) || p.s[p.pos] == ':' || p.s[p.pos] == '/') {
			p.pos++
		}
		return sfValue{kind: sfToken, s: p.s[start:p.pos]}, nil
	case c == '?':
		if p.pos+1 < len(p.s) && (p.s[p.pos+1] == '0' || p.s[p.pos+1] == '1') {
			p.pos += 2
			return sfValue{kind: sfBoolean, i: int64(p.s[p.pos-1] - '0')}, nil
		}
		return sfValue{}, p.fail("bad boolean")
	case c == '(':
		return sfValue{}, p.fail("inner lists are not policies")
	}
	return sfValue{}, p.fail("unsupported value")
}

func (p *sfParser) number() (sfValue, error) {
	neg := false
	if p.s[p.pos] == '-' {
		neg = true
		p.pos++
	}
	start, dot := p.pos, -1
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		if c >= '0' && c <= '9' {
			p.pos++
			continue
		}
		if c == '.' && dot < 0 {
			dot = p.pos
			p.pos++
			continue
		}
		break
	}
	digits := p.s[start:p.pos]
	if digits == "" || digits[0] == '.' {
		return sfValue{}, p.fail("bad number")
	}
	if dot < 0 {
		if len(digits) > 15 {
			return sfValue{}, p.fail("integer too long")
		}
		n, _ := strconv.ParseInt(digits, 10, 64)
		if neg {
			n = -n
		}
		return sfValue{kind: sfInteger, i: n}, nil
	}
	if frac := p.pos - dot - 1; frac < 1 || frac > 3 || dot-start > 12 {
		return sfValue{}, p.fail("bad decimal")
	}
	return sfValue{kind: sfDecimal}, nil
}

func (p *sfParser) str() (sfValue, error) {
	p.pos++ // opening quote
	var b strings.Builder
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		p.pos++
		switch {
		case c == '\\':
			if p.pos == len(p.s) || (p.s[p.pos] != '"' && p.s[p.pos] != '\\') {
				return sfValue{}, p.fail("bad escape")
			}
			b.WriteByte(p.s[p.pos])
			p.pos++
		case c == '"':
			return sfValue{kind: sfString, s: b.String()}, nil
		case c < 0x20 || c > 0x7e:
			return sfValue{}, p.fail("non-printable byte in string")
		default:
			b.WriteByte(c)
		}
	}
	return sfValue{}, p.fail("unterminated string")
}
