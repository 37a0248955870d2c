package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Idempotency case names, in the order they run.
const (
	CaseFirstExecutes  = "first-executes"
	CaseReplay         = "replay"
	CaseConcurrent     = "concurrent-duplicates"
	CaseInFlight       = "in-flight-duplicate"
	CaseBodyMismatch   = "same-key-other-body"
	CaseOtherPath      = "same-key-other-path"
	CaseOtherMethod    = "same-key-other-method"
	CaseMissingKey     = "missing-key"
	CaseKeyTooLong     = "malformed-key-too-long"
	CaseKeyControl     = "malformed-key-control-char"
	CaseKeyTwoFields   = "malformed-key-two-fields"
	CaseQuotedKey      = "quoted-key-equals-bare"
	CaseTenants        = "tenant-isolation"
	CaseRetention      = "retention"
	defaultConcurrency = 50
)

// ErrOptions is wrapped by the errors Idempotency and RateLimit return
// for unusable options; nothing has been sent then.
var ErrOptions = errors.New("verify: invalid options")

// IdempotencyOptions configures Idempotency. Zero fields take the
// defaults their docs state.
type IdempotencyOptions struct {
	// URL is the endpoint under test (required, http or https).
	URL string
	// Method is the request method; default POST.
	Method string
	// Body is the request body sent by every case (nil: none).
	Body []byte
	// Header is sent with every request (credentials, Content-Type).
	Header http.Header
	// KeyHeader is the key's field name; default Idempotency-Key.
	KeyHeader string
	// IDPath, when set, locates a resource id in successful response
	// bodies: every answer to one key must carry the same id, and the
	// concurrent case counts distinct ids as executions.
	IDPath *JSONPath
	// EffectURL, when set, is read with GET (with Header) before and
	// after the effect cases; its body is a count of executions (an
	// integer, or a JSON object with an integer "count").
	EffectURL string
	// ReplayedHeader is the field a replay carries with value "true";
	// default Idempotent-Replayed. "-" means the API does not claim one.
	ReplayedHeader string
	// ReplayHeaders are response fields that a replay must repeat
	// exactly; default Content-Type.
	ReplayHeaders []string
	// Concurrency is the number of simultaneous duplicates; default 50,
	// at most 500.
	Concurrency int
	// OtherURL is the URL for the same-key-other-path case; default URL
	// with "/levee-verify-other" appended to its path.
	OtherURL string
	// OtherMethod is the method for the same-key-other-method case;
	// default PATCH (POST when Method is PATCH).
	OtherMethod string
	// KeyOptional says the API accepts requests without a key: the
	// missing-key case is skipped instead of expecting 400.
	KeyOptional bool
	// TenantHeader names the credential field that scopes keys; empty
	// skips the tenant-isolation case. The first tenant's value is
	// Header's (or "levee-verify-tenant-a"), the second is TenantB.
	TenantHeader string
	// TenantB is the second tenant's credential; default
	// "levee-verify-tenant-b".
	TenantB string
	// Retention, when > 0, runs the retention case: a key must still
	// replay just before Retention and may be forgotten just after. At
	// most 10 minutes (the run waits that long).
	Retention time.Duration
	// RequestTimeout bounds each request; default 10s.
	RequestTimeout time.Duration
	// Client sends the requests; default a client with no redirects
	// followed and up to Concurrency connections.
	Client *http.Client
	// Now is the clock used for timestamps; default time.Now.
	Now func() time.Time
}

func (o *IdempotencyOptions) setDefaults() error {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: URL %q is not an absolute http(s) URL", ErrOptions, o.URL)
	}
	if o.Method == "" {
		o.Method = http.MethodPost
	}
	o.Method = strings.ToUpper(o.Method)
	if o.KeyHeader == "" {
		o.KeyHeader = "Idempotency-Key"
	}
	if o.ReplayedHeader == "" {
		o.ReplayedHeader = "Idempotent-Replayed"
	}
	if o.ReplayHeaders == nil {
		o.ReplayHeaders = []string{"Content-Type"}
	}
	if o.Concurrency == 0 {
		o.Concurrency = defaultConcurrency
	}
	if o.Concurrency < 2 || o.Concurrency > 500 {
		return fmt.Errorf("%w: Concurrency %d: want 2 to 500", ErrOptions, o.Concurrency)
	}
	if o.OtherURL == "" {
		v := *u
		v.Path = strings.TrimSuffix(v.Path, "/") + "/levee-verify-other"
		v.RawPath = ""
		o.OtherURL = v.String()
	}
	if o.OtherMethod == "" {
		o.OtherMethod = http.MethodPatch
		if o.Method == http.MethodPatch {
			o.OtherMethod = http.MethodPost
		}
	}
	if o.TenantB == "" {
		o.TenantB = "levee-verify-tenant-b"
	}
	if o.Retention < 0 || o.Retention > 10*time.Minute {
		return fmt.Errorf("%w: Retention %s: want 0 to 10m (use a staging config with a short retention)", ErrOptions, o.Retention)
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Client == nil {
		o.Client = newClient(o.Concurrency)
	}
	return nil
}

func newClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = conns
	tr.MaxConnsPerHost = conns
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type idemRun struct {
	o   IdempotencyOptions
	s   *sender
	rep *Report
}

// Idempotency runs the idempotency-key cases against o.URL and returns
// the report; the run fails when any case fails (Report.Failed). Each
// case uses a fresh random key. The error is non-nil only for unusable
// options (wrapping ErrOptions, nothing sent) or when ctx ends, in which
// case the partial report is returned with it.
//
// The requests sent: about 20 sequential ones, Concurrency simultaneous
// duplicates, and GETs of EffectURL; Retention adds one wait of about
// Retention.
func Idempotency(ctx context.Context, o IdempotencyOptions) (*Report, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	r := &idemRun{o: o, s: &sender{client: o.Client, header: o.Header, timeout: o.RequestTimeout, now: o.Now},
		rep: &Report{Suite: "idempotency", Target: o.URL, Started: o.Now()}}
	// Cases that report one result; firstAndReplay and concurrent
	// report two each.
	single := func(name string, fn func(context.Context) (Verdict, string)) func(context.Context) {
		return func(ctx context.Context) {
			start := o.Now()
			v, ev := fn(ctx)
			r.add(name, v, ev, start)
		}
	}
	steps := []func(context.Context){
		r.firstAndReplay,
		r.concurrent,
		single(CaseBodyMismatch, r.bodyMismatch),
		single(CaseOtherPath, func(ctx context.Context) (Verdict, string) { return r.otherTarget(ctx, o.Method, o.OtherURL) }),
		single(CaseOtherMethod, func(ctx context.Context) (Verdict, string) { return r.otherTarget(ctx, o.OtherMethod, o.URL) }),
		single(CaseMissingKey, r.missingKey),
		single(CaseKeyTooLong, func(ctx context.Context) (Verdict, string) {
			return r.malformed(ctx, []string{strings.Repeat("k", 256)}, "a 256-character key")
		}),
		single(CaseKeyControl, func(ctx context.Context) (Verdict, string) {
			return r.malformed(ctx, []string{newKey("ctl") + "\tx"}, "a key with a TAB control character")
		}),
		single(CaseKeyTwoFields, func(ctx context.Context) (Verdict, string) {
			return r.malformed(ctx, []string{newKey("two-a"), newKey("two-b")}, "two Idempotency-Key fields")
		}),
		single(CaseQuotedKey, r.quoted),
		single(CaseTenants, r.tenants),
		single(CaseRetention, r.retention),
	}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return r.rep, fmt.Errorf("verify: idempotency: %w", err)
		}
		step(ctx)
	}
	if err := ctx.Err(); err != nil {
		return r.rep, fmt.Errorf("verify: idempotency: %w", err)
	}
	return r.rep, nil
}

func (r *idemRun) add(name string, v Verdict, ev string, start time.Time) {
	r.rep.Results = append(r.rep.Results, Result{Case: name, Verdict: v, Evidence: ev, Duration: r.o.Now().Sub(start)})
}

func (r *idemRun) send(ctx context.Context, method, u string, body []byte, keys []string, over http.Header) exchange {
	return r.s.send(ctx, method, u, body, r.o.KeyHeader, keys, over)
}

func (r *idemRun) post(ctx context.Context, key string) exchange {
	return r.send(ctx, r.o.Method, r.o.URL, r.o.Body, []string{key}, nil)
}

// replayed reports whether e carries the replay marker.
func (r *idemRun) replayed(e exchange) bool {
	if r.o.ReplayedHeader == "-" || e.Header == nil {
		return false
	}
	return strings.EqualFold(strings.TrimSpace(e.Header.Get(r.o.ReplayedHeader)), "true")
}

func (r *idemRun) claimsReplayed() bool { return r.o.ReplayedHeader != "-" }

// id returns the resource id of a successful answer ("" without IDPath).
func (r *idemRun) id(e exchange) (string, error) {
	if r.o.IDPath == nil {
		return "", nil
	}
	return r.o.IDPath.Lookup(e.Body)
}

// effects reads EffectURL's count; ok is false without EffectURL.
func (r *idemRun) effects(ctx context.Context) (n int64, ok bool, err error) {
	if r.o.EffectURL == "" {
		return 0, false, nil
	}
	e := r.s.send(ctx, http.MethodGet, r.o.EffectURL, nil, "", nil, nil)
	if e.Err != nil {
		return 0, true, fmt.Errorf("effect-url: %w", e.Err)
	}
	if e.Status != 200 {
		return 0, true, fmt.Errorf("effect-url: status %d", e.Status)
	}
	s := strings.TrimSpace(string(e.Body))
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true, nil
	}
	p, _ := ParseJSONPath("$.count")
	v, err := p.Lookup(e.Body)
	if err != nil {
		return 0, true, fmt.Errorf("effect-url: body %s is neither an integer nor {\"count\": n}", snippet(e.Body))
	}
	n, err = strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("effect-url: count %s is not an integer", v)
	}
	return n, true, nil
}

// sameAnswer compares a replay with the original: status, body bytes and
// the documented headers. It returns "" when they agree.
func (r *idemRun) sameAnswer(orig, rep exchange) string {
	if rep.Err != nil {
		return "replay failed: " + rep.Err.Error()
	}
	if rep.Status != orig.Status {
		return fmt.Sprintf("status %d, original %d", rep.Status, orig.Status)
	}
	if !bytes.Equal(rep.Body, orig.Body) {
		return fmt.Sprintf("body %s differs from the original %s", snippet(rep.Body), snippet(orig.Body))
	}
	for _, h := range r.o.ReplayHeaders {
		if a, b := orig.Header.Values(h), rep.Header.Values(h); strings.Join(a, ", ") != strings.Join(b, ", ") {
			return fmt.Sprintf("header %s is %q, original %q", h, b, a)
		}
	}
	return ""
}

func (r *idemRun) firstAndReplay(ctx context.Context) {
	start := r.o.Now()
	before, hasEffect, effErr := r.effects(ctx)
	key := newKey("replay")
	first := r.post(ctx, key)
	if !first.ok() {
		r.add(CaseFirstExecutes, Fail, fmt.Sprintf("first request with a fresh key: %s %s, want 2xx", first, snippet(first.Body)), start)
		r.add(CaseReplay, Skip, "the first request did not succeed", r.o.Now())
		return
	}
	if r.replayed(first) {
		r.add(CaseFirstExecutes, Fail, fmt.Sprintf("%s: true on the first request with a fresh key", r.o.ReplayedHeader), start)
	} else if _, err := r.id(first); err != nil {
		r.add(CaseFirstExecutes, Fail, fmt.Sprintf("%d, but its body has no id: %v", first.Status, err), start)
	} else {
		r.add(CaseFirstExecutes, Pass, fmt.Sprintf("%d %s", first.Status, snippet(first.Body)), start)
	}
	start = r.o.Now()
	rep := r.post(ctx, key)
	var probs []string
	if d := r.sameAnswer(first, rep); d != "" {
		probs = append(probs, d)
	}
	if r.claimsReplayed() && !r.replayed(rep) {
		probs = append(probs, fmt.Sprintf("no %s: true on the replay", r.o.ReplayedHeader))
	}
	if hasEffect {
		after, _, err := r.effects(ctx)
		switch {
		case effErr != nil || err != nil:
			probs = append(probs, fmt.Sprint(errors.Join(effErr, err)))
		case after-before != 1:
			probs = append(probs, fmt.Sprintf("effect count went %d → %d for one key, want +1", before, after))
		}
	}
	if len(probs) > 0 {
		r.add(CaseReplay, Fail, strings.Join(probs, "; "), start)
		return
	}
	ev := fmt.Sprintf("%d, byte-identical body", rep.Status)
	if r.claimsReplayed() {
		ev += ", " + r.o.ReplayedHeader + ": true"
	}
	if hasEffect {
		ev += ", effect +1"
	}
	r.add(CaseReplay, Pass, ev, start)
}

func (r *idemRun) concurrent(ctx context.Context) {
	start := r.o.Now()
	n := r.o.Concurrency
	before, hasEffect, effErr := r.effects(ctx)
	key := newKey("concurrent")
	answers := make([]exchange, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-gate:
			case <-ctx.Done():
				answers[i] = exchange{Err: ctx.Err()}
				return
			}
			answers[i] = r.post(ctx, key)
		}()
	}
	close(gate)
	wg.Wait()

	byStatus := map[int]int{}
	var errs, conflicts, conflictsNoRA int
	var oks []exchange
	var other []string
	for _, a := range answers {
		switch {
		case a.Err != nil:
			errs++
		case a.ok():
			oks = append(oks, a)
		case a.Status == http.StatusConflict:
			conflicts++
			if _, ok := parseRetryAfter(a.Header.Get("Retry-After"), r.o.Now()); !ok {
				conflictsNoRA++
			}
		default:
			other = append(other, fmt.Sprintf("%d %s", a.Status, snippet(a.Body)))
		}
		if a.Err == nil {
			byStatus[a.Status]++
		}
	}
	// Wait for the winner to finish, then read the key's final answer.
	final := r.settle(ctx, key)
	ids := map[string]int{}
	bodies := map[string]int{}
	var idErr error
	for _, a := range append(append([]exchange(nil), oks...), final) {
		if !a.ok() {
			continue
		}
		bodies[string(a.Body)]++
		if id, err := r.id(a); err != nil {
			idErr = err
		} else if r.o.IDPath != nil {
			ids[id]++
		}
	}
	summary := fmt.Sprintf("%d duplicates: statuses %v, %d transport errors", n, byStatus, errs)
	var probs []string
	if len(oks) == 0 && !final.ok() {
		probs = append(probs, "no duplicate succeeded")
	}
	if r.o.IDPath != nil && len(ids) > 1 {
		probs = append(probs, fmt.Sprintf("%d distinct ids at %s (counting one follow-up request): executed %d times", len(ids), r.o.IDPath, len(ids)))
	}
	if idErr != nil {
		probs = append(probs, idErr.Error())
	}
	if len(bodies) > 1 {
		probs = append(probs, fmt.Sprintf("%d distinct successful bodies", len(bodies)))
	}
	if errs > 0 {
		probs = append(probs, fmt.Sprintf("%d requests failed at the transport", errs))
	}
	if hasEffect {
		after, _, err := r.effects(ctx)
		switch {
		case effErr != nil || err != nil:
			probs = append(probs, fmt.Sprint(errors.Join(effErr, err)))
		case after-before != 1:
			probs = append(probs, fmt.Sprintf("effect count went %d → %d, want +1", before, after))
		default:
			summary += ", effect +1"
		}
	}
	if r.o.IDPath == nil && !hasEffect {
		summary += " (observed through body equality only: give --id-jsonpath or --effect-url)"
	}
	if len(probs) > 0 {
		r.add(CaseConcurrent, Fail, strings.Join(probs, "; ")+"; "+summary, start)
	} else {
		r.add(CaseConcurrent, Pass, "exactly one execution; "+summary, start)
	}

	// The in-flight verdict looks at the duplicates that did not get the
	// winner's answer.
	start = r.o.Now()
	switch {
	case len(bodies) > 1 || len(ids) > 1:
		r.add(CaseInFlight, Skip, "the duplicates were executed (see "+CaseConcurrent+")", start)
	case len(other) > 0:
		r.add(CaseInFlight, Fail, fmt.Sprintf("duplicates while in flight got %s, want 409 or the replayed response", strings.Join(dedupe(other), ", ")), start)
	case conflicts > 0 && conflictsNoRA > 0:
		r.add(CaseInFlight, Warn, fmt.Sprintf("%d of %d 409 answers lack a valid Retry-After", conflictsNoRA, conflicts), start)
	case conflicts > 0:
		r.add(CaseInFlight, Pass, fmt.Sprintf("%d duplicates got 409 with Retry-After, %d the replayed response", conflicts, len(oks)), start)
	default:
		r.add(CaseInFlight, Pass, fmt.Sprintf("all %d duplicates received the one response (a documented wait, or the first finished before they arrived)", len(oks)), start)
	}
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// settle re-sends key until it is no longer in flight (409): at most 20
// tries, each wait the Retry-After capped at 1s.
func (r *idemRun) settle(ctx context.Context, key string) exchange {
	var e exchange
	for range 20 {
		e = r.post(ctx, key)
		if e.Err != nil || e.Status != http.StatusConflict {
			return e
		}
		d, ok := parseRetryAfter(e.Header.Get("Retry-After"), r.o.Now())
		if !ok || d > time.Second {
			d = time.Second
		}
		if sleep(ctx, max(d, 50*time.Millisecond)) != nil {
			return e
		}
	}
	return e
}

func (r *idemRun) bodyMismatch(ctx context.Context) (Verdict, string) {
	key := newKey("mismatch")
	first := r.post(ctx, key)
	if !first.ok() {
		return Skip, fmt.Sprintf("first request: %s, want 2xx", first)
	}
	before, hasEffect, effErr := r.effects(ctx)
	other := r.send(ctx, r.o.Method, r.o.URL, otherBody(r.o.Body), []string{key}, nil)
	after, _, err := r.effects(ctx)
	var probs []string
	switch {
	case other.Err != nil:
		probs = append(probs, "other body: "+other.Err.Error())
	case other.Status == http.StatusUnprocessableEntity:
	case other.ok() && (r.replayed(other) || bytes.Equal(other.Body, first.Body)):
		probs = append(probs, fmt.Sprintf("another body with the same key got %d and the first request's response (the body is ignored on a reused key), want 422", other.Status))
	case other.ok():
		probs = append(probs, fmt.Sprintf("another body with the same key got %d %s (executed), want 422", other.Status, snippet(other.Body)))
	default:
		probs = append(probs, fmt.Sprintf("another body with the same key got %d, want 422", other.Status))
	}
	if hasEffect {
		if effErr != nil || err != nil {
			probs = append(probs, fmt.Sprint(errors.Join(effErr, err)))
		} else if after != before {
			probs = append(probs, fmt.Sprintf("effect count went %d → %d on the refused request", before, after))
		}
	}
	again := r.post(ctx, key)
	if d := r.sameAnswer(first, again); d != "" {
		probs = append(probs, "original no longer replays: "+d)
	}
	if len(probs) > 0 {
		return Fail, strings.Join(probs, "; ")
	}
	return Pass, fmt.Sprintf("422 for another body; the original still replays (%d)", again.Status)
}

func (r *idemRun) otherTarget(ctx context.Context, method, u string) (Verdict, string) {
	key := newKey("target")
	first := r.post(ctx, key)
	if !first.ok() {
		return Skip, fmt.Sprintf("first request: %s, want 2xx", first)
	}
	other := r.send(ctx, method, u, r.o.Body, []string{key}, nil)
	where := method + " " + u
	switch {
	case other.Err != nil:
		return Fail, where + ": " + other.Err.Error()
	case other.Status == http.StatusUnprocessableEntity:
		return Pass, where + " with the same key: 422"
	case other.ok() && (r.replayed(other) || bytes.Equal(other.Body, first.Body)):
		return Fail, fmt.Sprintf("%s with the same key got %d and the first request's response, want 422", where, other.Status)
	case other.ok():
		return Fail, fmt.Sprintf("%s with the same key got %d (executed), want 422", where, other.Status)
	case other.Status >= 400 && other.Status < 500:
		return Warn, fmt.Sprintf("%s with the same key got %d, not 422: refused, but perhaps not for the key", where, other.Status)
	}
	return Fail, fmt.Sprintf("%s with the same key got %d, want 422", where, other.Status)
}

func (r *idemRun) missingKey(ctx context.Context) (Verdict, string) {
	if r.o.KeyOptional {
		return Skip, "the key is optional (--key-optional)"
	}
	e := r.send(ctx, r.o.Method, r.o.URL, r.o.Body, nil, nil)
	switch {
	case e.Err != nil:
		return Fail, e.Err.Error()
	case e.Status == http.StatusBadRequest:
		return Pass, "400 " + snippet(e.Body)
	case e.ok():
		return Fail, fmt.Sprintf("%d without a key (executed), want 400 (or pass --key-optional)", e.Status)
	}
	return Fail, fmt.Sprintf("%d without a key, want 400", e.Status)
}

func (r *idemRun) malformed(ctx context.Context, keys []string, what string) (Verdict, string) {
	e := r.send(ctx, r.o.Method, r.o.URL, r.o.Body, keys, nil)
	switch {
	case e.Err != nil:
		return Fail, what + ": " + e.Err.Error()
	case e.Status == http.StatusBadRequest:
		return Pass, what + ": 400"
	case e.ok():
		return Fail, fmt.Sprintf("%s: %d (executed), want 400", what, e.Status)
	}
	return Fail, fmt.Sprintf("%s: %d, want 400", what, e.Status)
}

func (r *idemRun) quoted(ctx context.Context) (Verdict, string) {
	key := newKey("quoted")
	first := r.post(ctx, key)
	if !first.ok() {
		return Skip, fmt.Sprintf("first request: %s, want 2xx", first)
	}
	q := r.post(ctx, `"`+key+`"`)
	if q.Err == nil && q.Status == http.StatusBadRequest {
		return Fail, "the RFC 8941 quoted form of the key got 400, want the replay"
	}
	if d := r.sameAnswer(first, q); d != "" {
		return Fail, "the quoted form is treated as another key: " + d
	}
	if r.claimsReplayed() && !r.replayed(q) {
		return Fail, fmt.Sprintf("the quoted form got the same answer without %s: true", r.o.ReplayedHeader)
	}
	return Pass, fmt.Sprintf("the quoted form \"%s\" replays the response of %s", key, key)
}

func (r *idemRun) tenants(ctx context.Context) (Verdict, string) {
	if r.o.TenantHeader == "" {
		return Skip, "no --tenant-header"
	}
	a := r.o.Header.Get(r.o.TenantHeader)
	over := http.Header{}
	if a == "" {
		a = "levee-verify-tenant-a"
		over.Set(r.o.TenantHeader, a)
	}
	key := newKey("tenant")
	first := r.send(ctx, r.o.Method, r.o.URL, r.o.Body, []string{key}, over)
	if !first.ok() {
		return Skip, fmt.Sprintf("first tenant's request: %s, want 2xx", first)
	}
	ob := http.Header{}
	ob.Set(r.o.TenantHeader, r.o.TenantB)
	second := r.send(ctx, r.o.Method, r.o.URL, r.o.Body, []string{key}, ob)
	if second.Err != nil {
		return Fail, "second tenant: " + second.Err.Error()
	}
	if r.replayed(second) {
		return Fail, fmt.Sprintf("the second tenant got %d with %s: true for the first tenant's key", second.Status, r.o.ReplayedHeader)
	}
	if second.ok() && r.o.IDPath != nil {
		ida, _ := r.id(first)
		idb, err := r.id(second)
		if err == nil && ida == idb {
			return Fail, fmt.Sprintf("the second tenant received the first tenant's resource %s", ida)
		}
	}
	if second.ok() && r.o.IDPath == nil && bytes.Equal(first.Body, second.Body) {
		return Warn, "the second tenant got a byte-identical body; cannot tell a leak from a deterministic response without --id-jsonpath"
	}
	return Pass, fmt.Sprintf("second tenant got its own answer (%d, not replayed)", second.Status)
}

func (r *idemRun) retention(ctx context.Context) (Verdict, string) {
	if r.o.Retention == 0 {
		return Skip, "no --retention"
	}
	margin := min(time.Second, r.o.Retention/5)
	key := newKey("retention")
	first := r.post(ctx, key)
	if !first.ok() {
		return Skip, fmt.Sprintf("first request: %s, want 2xx", first)
	}
	t0 := r.o.Now()
	if err := sleep(ctx, r.o.Retention-margin-r.o.Now().Sub(t0)); err != nil {
		return Skip, err.Error()
	}
	in := r.post(ctx, key)
	if d := r.sameAnswer(first, in); d != "" {
		return Fail, fmt.Sprintf("forgotten before the declared retention %s: %s", r.o.Retention, d)
	}
	if err := sleep(ctx, r.o.Retention+margin-r.o.Now().Sub(t0)); err != nil {
		return Skip, err.Error()
	}
	out := r.post(ctx, key)
	if out.Err == nil && r.replayed(out) {
		return Warn, fmt.Sprintf("still replayed %s after the declared retention %s (allowed, but the declaration is not exact)", margin, r.o.Retention)
	}
	return Pass, fmt.Sprintf("replayed %s before the retention; %s after it the key ran again (%s)", margin, margin, out)
}
