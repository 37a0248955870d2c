package verify

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dunglas/httpsfv"
	"github.com/leveehq/levee/ratelimit"
)

// Rate-limit case names, in the order they are reported.
const (
	CaseBurst            = "burst-exact"
	CaseThrottleStatus   = "throttle-status-429"
	CaseRetryAfter       = "retry-after-present"
	CaseRetryAfterHonest = "retry-after-honest"
	CaseRateLimitFields  = "ratelimit-fields"
	CaseProblemJSON      = "problem-json"
)

// RateLimitOptions configures RateLimit. Zero fields take the defaults
// their docs state.
type RateLimitOptions struct {
	// URL is the endpoint under test (required). The run assumes the
	// limit's bucket is idle (full) when it starts.
	URL string
	// Method is the request method; default GET.
	Method string
	// Body is the request body (nil: none).
	Body []byte
	// Header is sent with every request (the credential the limit is
	// keyed by).
	Header http.Header
	// Limit is the declared rate policy, e.g. from
	// ratelimit.ParsePolicy("10/s burst 20"): Limit per Period, Burst at
	// once (required, a rate policy).
	Limit ratelimit.Policy
	// ExpectProblem says the API documents problem+json (RFC 9457)
	// bodies on 429: their absence fails. Otherwise they are checked
	// when present.
	ExpectProblem bool
	// MaxWait bounds the Retry-After the honesty case waits; a longer
	// one skips it. Default 10s.
	MaxWait time.Duration
	// RequestTimeout bounds each request; default 10s.
	RequestTimeout time.Duration
	// Client sends the requests; default a client that follows no
	// redirects.
	Client *http.Client
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (o *RateLimitOptions) setDefaults() error {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: URL %q is not an absolute http(s) URL", ErrOptions, o.URL)
	}
	if o.Limit.Name == "" {
		o.Limit.Name = "declared"
	}
	if err := o.Limit.Validate(); err != nil || o.Limit.Kind != ratelimit.KindRate {
		return fmt.Errorf("%w: Limit: want a rate policy such as \"10/s burst 20\" (%v)", ErrOptions, err)
	}
	if o.Limit.EffectiveBurst() > 10000 {
		return fmt.Errorf("%w: Limit: burst %d: at most 10000 requests are sent to find it", ErrOptions, o.Limit.EffectiveBurst())
	}
	if o.Method == "" {
		o.Method = http.MethodGet
	}
	if o.MaxWait == 0 {
		o.MaxWait = 10 * time.Second
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Client == nil {
		o.Client = newClient(4)
	}
	return nil
}

type rlRun struct {
	o   RateLimitOptions
	s   *sender
	rep *Report
}

// RateLimit checks o.URL against the declared o.Limit: that exactly the
// burst is admitted from idle (give or take what refills while the
// requests are sent), that throttling answers 429 (never 500/503), that
// each 429 carries a Retry-After (delay-seconds or an HTTP-date) that is
// honest (one second less is still refused, waiting it is admitted),
// that RateLimit-Policy and RateLimit parse as RFC 9651 lists and agree
// with what happened, and that problem+json bodies are well formed.
//
// It sends at most about 2×burst+20 requests. The error is non-nil only
// for unusable options (wrapping ErrOptions, nothing sent) or when ctx
// ends (the partial report is returned with it).
func RateLimit(ctx context.Context, o RateLimitOptions) (*Report, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	r := &rlRun{o: o, s: &sender{client: o.Client, header: o.Header, timeout: o.RequestTimeout, now: o.Now},
		rep: &Report{Suite: "ratelimit", Target: o.URL, Started: o.Now()}}
	r.run(ctx)
	if err := ctx.Err(); err != nil {
		return r.rep, fmt.Errorf("verify: ratelimit: %w", err)
	}
	return r.rep, nil
}

func (r *rlRun) add(name string, v Verdict, ev string, start time.Time) {
	r.rep.Results = append(r.rep.Results, Result{Case: name, Verdict: v, Evidence: ev, Duration: r.o.Now().Sub(start)})
}

func (r *rlRun) send(ctx context.Context) exchange {
	return r.s.send(ctx, r.o.Method, r.o.URL, r.o.Body, "", nil, nil)
}

func (r *rlRun) run(ctx context.Context) {
	p := r.o.Limit
	burst := p.EffectiveBurst()
	iv := p.Interval()
	start := r.o.Now()

	// 1. From idle, as fast as one connection goes, until refused.
	var admitted []exchange
	var refused exchange
	hardCap := 2*burst + 20
	for i := int64(0); i < hardCap && ctx.Err() == nil; i++ {
		e := r.send(ctx)
		if e.Err != nil {
			r.add(CaseBurst, Fail, fmt.Sprintf("request %d: %v", i+1, e.Err), start)
			return
		}
		if e.ok() {
			admitted = append(admitted, e)
			if allow := burst + refill(r.o.Now().Sub(start), iv) + 1; int64(len(admitted)) > allow {
				break
			}
			continue
		}
		refused = e
		break
	}
	elapsed := r.o.Now().Sub(start)
	slack := refill(elapsed, iv)
	n := int64(len(admitted))
	switch {
	case refused.Status == 0:
		r.add(CaseBurst, Fail, fmt.Sprintf("%d requests in a row admitted in %s without a refusal (stopped there): declared burst %d", n, elapsed.Round(time.Millisecond), burst), start)
	case n < burst:
		r.add(CaseBurst, Fail, fmt.Sprintf("refused (%d) after %d admitted, declared burst %d (was the limit idle?)", refused.Status, n, burst), start)
	case n > burst+slack:
		r.add(CaseBurst, Fail, fmt.Sprintf("%d admitted before the first refusal, declared burst %d (+%d refilled in %s)", n, burst, slack, elapsed.Round(time.Millisecond)), start)
	default:
		r.add(CaseBurst, Pass, fmt.Sprintf("%d admitted then %d; declared burst %d (+%d refilled in %s)", n, refused.Status, burst, slack, elapsed.Round(time.Millisecond)), start)
	}
	if refused.Status == 0 {
		for _, c := range []string{CaseThrottleStatus, CaseRetryAfter, CaseRetryAfterHonest, CaseProblemJSON} {
			r.add(c, Skip, "never throttled", r.o.Now())
		}
		r.fields(admitted, nil, start)
		return
	}

	// 2. A few more while throttled: every refusal must be a 429.
	t := r.o.Now()
	refusals := []exchange{refused}
	for range 3 {
		e := r.send(ctx)
		if e.Err == nil && !e.ok() {
			refusals = append(refusals, e)
		}
	}
	statuses := map[int]int{}
	for _, e := range refusals {
		statuses[e.Status]++
	}
	if len(statuses) == 1 && statuses[http.StatusTooManyRequests] > 0 {
		r.add(CaseThrottleStatus, Pass, fmt.Sprintf("throttled requests got 429 (%d of %d)", len(refusals), len(refusals)), t)
	} else {
		r.add(CaseThrottleStatus, Fail, fmt.Sprintf("throttled requests got %v, want 429 only (5xx says the API is broken, not busy)", statuses), t)
	}

	// 3. Retry-After on every 429.
	t = r.o.Now()
	var ra time.Duration
	var raAt time.Time
	var bad []string
	for _, e := range refusals {
		v := e.Header.Get("Retry-After")
		d, ok := parseRetryAfter(v, e.At)
		if !ok {
			bad = append(bad, fmt.Sprintf("%d with Retry-After %q", e.Status, v))
			continue
		}
		ra, raAt = d, e.At
	}
	switch {
	case len(bad) > 0:
		r.add(CaseRetryAfter, Fail, strings.Join(dedupe(bad), ", ")+": want delay-seconds or an HTTP-date", t)
	default:
		r.add(CaseRetryAfter, Pass, fmt.Sprintf("Retry-After: %s on every refusal", refused.Header.Get("Retry-After")), t)
	}

	// 4. Honesty: one second less is refused, waiting it is admitted.
	t = r.o.Now()
	switch {
	case raAt.IsZero():
		r.add(CaseRetryAfterHonest, Skip, "no valid Retry-After", t)
	case ra > r.o.MaxWait:
		r.add(CaseRetryAfterHonest, Skip, fmt.Sprintf("Retry-After %s exceeds --max-wait %s", ra, r.o.MaxWait), t)
	default:
		r.honest(ctx, ra, raAt, t)
	}
	r.fields(admitted, refusals, start)
	r.problems(refusals, r.o.Now())
}

// refill is how many units come back in d, rounded up.
func refill(d, iv time.Duration) int64 {
	if iv <= 0 {
		return 0
	}
	return int64((d + iv - 1) / iv)
}

// honest checks one Retry-After of ra received at at: waiting it is
// admitted, and (when ra is 2s or more, so that one second less is a
// shorter whole-second answer the API could have given) a request sent
// 1.1s before it elapses is still refused. The early probe is sent
// first; a refused request is assumed to charge nothing (RFC 6585 leaves
// this open; levee charges nothing for a denial).
func (r *rlRun) honest(ctx context.Context, ra time.Duration, at, t time.Time) {
	early := "Retry-After 1s: no shorter whole-second answer to check"
	if ra >= 2*time.Second {
		d := ra - time.Second - 100*time.Millisecond
		if err := sleep(ctx, at.Add(d).Sub(r.o.Now())); err != nil {
			return
		}
		e := r.send(ctx)
		if e.Err != nil {
			r.add(CaseRetryAfterHonest, Fail, "early probe: "+e.Err.Error(), t)
			return
		}
		if e.ok() {
			r.add(CaseRetryAfterHonest, Fail, fmt.Sprintf("admitted %s after a Retry-After of %s: the API asks clients to wait longer than needed", d.Round(time.Millisecond), ra), t)
			return
		}
		early = fmt.Sprintf("refused %s after it", d.Round(time.Millisecond))
	}
	if err := sleep(ctx, at.Add(ra+50*time.Millisecond).Sub(r.o.Now())); err != nil {
		return
	}
	e := r.send(ctx)
	if e.Err != nil {
		r.add(CaseRetryAfterHonest, Fail, "probe after Retry-After: "+e.Err.Error(), t)
		return
	}
	if !e.ok() {
		r.add(CaseRetryAfterHonest, Fail, fmt.Sprintf("still %d after waiting the Retry-After of %s (Retry-After now %q)", e.Status, ra, e.Header.Get("Retry-After")), t)
		return
	}
	r.add(CaseRetryAfterHonest, Pass, fmt.Sprintf("admitted after waiting the Retry-After of %s; %s", ra, early), t)
}

type sfMember struct {
	name   string
	params map[string]int64
}

// parseSF parses a RateLimit or RateLimit-Policy field as an RFC 9651
// List of Items with String or Token values and Integer parameters.
func parseSF(vals []string) ([]sfMember, error) {
	l, err := httpsfv.UnmarshalList(vals)
	if err != nil {
		return nil, err
	}
	var out []sfMember
	for _, m := range l {
		it, ok := m.(httpsfv.Item)
		if !ok {
			return nil, fmt.Errorf("inner list where an item is expected")
		}
		var name string
		switch v := it.Value.(type) {
		case string:
			name = v
		case httpsfv.Token:
			name = string(v)
		default:
			return nil, fmt.Errorf("member %v is not a String or Token", it.Value)
		}
		sm := sfMember{name: name, params: map[string]int64{}}
		for _, k := range it.Params.Names() {
			v, _ := it.Params.Get(k)
			if i, ok := v.(int64); ok {
				sm.params[k] = i
			}
		}
		out = append(out, sm)
	}
	return out, nil
}

func (r *rlRun) fields(admitted, refusals []exchange, t time.Time) {
	p := r.o.Limit
	burst := p.EffectiveBurst()
	all := append(append([]exchange(nil), admitted...), refusals...)
	var probs []string
	var name string
	seen := false
	for _, e := range all {
		vals := e.Header.Values(ratelimit.HeaderPolicy)
		if len(vals) == 0 {
			continue
		}
		seen = true
		ms, err := parseSF(vals)
		if err != nil {
			probs = append(probs, fmt.Sprintf("RateLimit-Policy %q is not an RFC 9651 list: %v", strings.Join(vals, ", "), err))
			break
		}
		found := false
		for _, m := range ms {
			q, hasQ := m.params["q"]
			w, hasW := m.params["w"]
			if !hasQ {
				probs = append(probs, fmt.Sprintf("RateLimit-Policy member %q has no integer q", m.name))
			}
			// Either the window form (q = limit per period), or the GCRA
			// form levee and others use: q = burst, w = the time the burst
			// takes to refill, in whole seconds rounded up.
			refill := (time.Duration(burst)*p.Interval() + time.Second - 1) / time.Second
			if q == p.Limit && (!hasW || time.Duration(w)*time.Second == p.Period) || q == burst && hasW && w == int64(refill) {
				found, name = true, m.name
			}
		}
		if !found {
			probs = append(probs, fmt.Sprintf("RateLimit-Policy %q advertises no policy matching the declared %d/%s", strings.Join(vals, ", "), p.Limit, p.Period))
		}
		break
	}
	iv := p.Interval()
	for i, e := range all {
		vals := e.Header.Values(ratelimit.HeaderState)
		if len(vals) == 0 {
			continue
		}
		seen = true
		ms, err := parseSF(vals)
		if err != nil {
			probs = append(probs, fmt.Sprintf("RateLimit %q is not an RFC 9651 list: %v", strings.Join(vals, ", "), err))
			break
		}
		var m *sfMember
		for j := range ms {
			if ms[j].name == name || (name == "" && len(ms) == 1) {
				m = &ms[j]
			}
		}
		if m == nil {
			continue
		}
		rem, ok := m.params["r"]
		if !ok {
			probs = append(probs, fmt.Sprintf("RateLimit member %q has no integer r", m.name))
			break
		}
		if i < len(admitted) {
			// After the k-th admitted request from idle, r is burst-k
			// plus what refilled since the start.
			k := int64(i + 1)
			hi := burst - k + refill(e.At.Sub(r.rep.Started), iv)
			if rem < burst-k || rem > hi {
				probs = append(probs, fmt.Sprintf("RateLimit r=%d after %d admitted requests, want %d..%d for burst %d", rem, k, burst-k, hi, burst))
				break
			}
		} else if rem != 0 {
			probs = append(probs, fmt.Sprintf("RateLimit r=%d on a %d, want 0", rem, e.Status))
			break
		}
	}
	switch {
	case len(probs) > 0:
		r.add(CaseRateLimitFields, Fail, strings.Join(probs, "; "), t)
	case !seen:
		r.add(CaseRateLimitFields, Skip, "no RateLimit or RateLimit-Policy fields (optional in the draft)", t)
	default:
		r.add(CaseRateLimitFields, Pass, fmt.Sprintf("RateLimit-Policy: %s and RateLimit: %s … %s agree with the declared limit and the answers",
			first(all, ratelimit.HeaderPolicy), first(all, ratelimit.HeaderState), last(all, ratelimit.HeaderState)), t)
	}
}

func first(es []exchange, h string) string {
	for _, e := range es {
		if v := e.Header.Get(h); v != "" {
			return v
		}
	}
	return ""
}

func last(es []exchange, h string) string {
	for i := len(es) - 1; i >= 0; i-- {
		if v := es[i].Header.Get(h); v != "" {
			return v
		}
	}
	return ""
}

func (r *rlRun) problems(refusals []exchange, t time.Time) {
	var probs []string
	checked := 0
	for _, e := range refusals {
		mt, _, _ := mime.ParseMediaType(e.Header.Get("Content-Type"))
		if mt != "application/problem+json" {
			if r.o.ExpectProblem {
				probs = append(probs, fmt.Sprintf("%d with Content-Type %q, want application/problem+json", e.Status, e.Header.Get("Content-Type")))
			}
			continue
		}
		checked++
		var doc map[string]any
		if err := json.Unmarshal(e.Body, &doc); err != nil {
			probs = append(probs, fmt.Sprintf("problem+json body is not a JSON object: %v", err))
			continue
		}
		if s, ok := doc["status"]; ok {
			if f, ok := s.(float64); !ok || int(f) != e.Status {
				probs = append(probs, fmt.Sprintf("problem status %v on a %d response", s, e.Status))
			}
		}
		if ty, ok := doc["type"]; ok {
			if s, ok := ty.(string); !ok || s == "" {
				probs = append(probs, fmt.Sprintf("problem type %v is not a URI reference", ty))
			}
		}
		if ti, ok := doc["title"]; ok {
			if _, ok := ti.(string); !ok {
				probs = append(probs, "problem title is not a string")
			}
		}
	}
	switch {
	case len(probs) > 0:
		r.add(CaseProblemJSON, Fail, strings.Join(dedupe(probs), "; "), t)
	case checked == 0:
		r.add(CaseProblemJSON, Skip, "the refusals are not problem+json (pass --expect-problem if the API documents it)", t)
	default:
		r.add(CaseProblemJSON, Pass, fmt.Sprintf("%d problem+json bodies with matching status", checked), t)
	}
}
