package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/resilience"
	resmetrics "github.com/leveehq/levee/resilience/metrics"
)

// UpstreamConfig is one named upstream (`upstreams:`): its URL and the
// resilience policies every request to it runs through (package
// resilience; the zero value of every field is the library's default).
// A route uses it by giving its name as `upstream`. An ordinary route's
// backend gets timeouts, retries, a breaker and a bulkhead this way; an
// egress route (route `egress: true`) forwards local callers to a third
// party with them.
type UpstreamConfig struct {
	// Name identifies the upstream in routes, metrics and errors: letters,
	// digits, '-', '_' and '.'. Required, unique.
	Name string `yaml:"name"`
	// URL is the absolute http(s) URL requests are forwarded to; its path,
	// if any, prefixes the request path. Required.
	URL string `yaml:"url"`
	// Timeout bounds one request to the upstream, every attempt and wait
	// included. Default 30s. A route using the upstream needs a timeout at
	// least as long.
	Timeout Duration `yaml:"timeout"`
	// AttemptTimeout bounds each attempt, reading the response body
	// included. Default 5s; at most Timeout.
	AttemptTimeout Duration `yaml:"attempt_timeout"`
	// Retry configures retries.
	Retry UpstreamRetry `yaml:"retry"`
	// Budget caps retries at a share of requests.
	Budget UpstreamBudget `yaml:"budget"`
	// Throttle, when present, turns on client-side adaptive throttling.
	Throttle *UpstreamThrottle `yaml:"throttle"`
	// Breaker, when present, puts a circuit breaker on the upstream.
	Breaker *UpstreamBreaker `yaml:"breaker"`
	// Bulkhead, when present, bounds the requests in flight to it.
	Bulkhead *UpstreamBulkhead `yaml:"bulkhead"`
	// Pace, when present, pauses every caller after a 429 with
	// Retry-After and paces to the upstream's announced RateLimit fields.
	Pace *UpstreamPace `yaml:"pace"`
	// Limit, when present, is a client-side rate limit on the upstream's
	// quota.
	Limit *UpstreamLimit `yaml:"limit"`
	// Fallback, when present, answers for the upstream when it fails:
	// the last good response of a GET or HEAD (stale_if_error), the same
	// request sent to a secondary upstream (secondary), and/or a write
	// accepted for later delivery through a queue (queue).
	Fallback *UpstreamFallback `yaml:"fallback"`
	// Shared keeps the breaker, pauses and quota in upstream_store (Redis),
	// so that every replica shares them. Default false: per process.
	Shared bool `yaml:"shared"`

	url      *url.URL
	settings resilience.Settings
	hash     string // the YAML form, to keep an executor across reloads
}

// UpstreamRetry configures retries (resilience.RetrySettings).
type UpstreamRetry struct {
	// MaxAttempts per request, the first included. Default 3; 1: no
	// retries; at most 100.
	MaxAttempts int `yaml:"max_attempts"`
	// BaseDelay and MaxDelay shape the full-jitter backoff. Defaults
	// 100ms and 5s.
	BaseDelay Duration `yaml:"base_delay"`
	MaxDelay  Duration `yaml:"max_delay"`
	// MaxRetryAfter caps the upstream's Retry-After: above it the request
	// fails fast (upstream-retry-after-too-long). Default 20s.
	MaxRetryAfter Duration `yaml:"max_retry_after"`
	// Statuses are the retried statuses. Default 408, 429, 502, 503, 504.
	Statuses []int `yaml:"statuses"`
	// IdempotentMethods are retried without an idempotency key. Default
	// GET HEAD OPTIONS TRACE PUT DELETE.
	IdempotentMethods []string `yaml:"idempotent_methods"`
	// DedupesKeys declares that the upstream deduplicates requests by the
	// KeyHeader value (Stripe, Adyen...): a POST carrying a key may then
	// be retried after it was sent. Default false: levee retries an
	// unsafe method only when it certainly never left (connect errors).
	DedupesKeys bool `yaml:"dedupes_keys"`
	// AutoKey generates a key for a request of an unsafe method that has
	// none and sends the same key on every attempt (as stripe-go). It
	// requires dedupes_keys. Default false.
	AutoKey bool `yaml:"auto_key"`
	// KeyHeader is the idempotency header. Default Idempotency-Key.
	KeyHeader string `yaml:"key_header"`
}

// UpstreamBudget configures the retry budget (resilience.BudgetSettings).
type UpstreamBudget struct {
	// Ratio of retries to requests in the window. Default 0.1; negative:
	// no budget.
	Ratio float64 `yaml:"ratio"`
	// MinPerSecond retries per second of window are always allowed.
	// Default 1.
	MinPerSecond float64 `yaml:"min_per_second"`
	// Window, whole seconds from 1s to 1h. Default 10s.
	Window Duration `yaml:"window"`
}

// UpstreamThrottle configures adaptive throttling
// (resilience.ThrottleSettings).
type UpstreamThrottle struct {
	// K, the accept multiplier. Default 2.
	K float64 `yaml:"k"`
	// Window, whole seconds from 1s to 1h. Default 2m.
	Window Duration `yaml:"window"`
}

// UpstreamBreaker configures the circuit breaker
// (resilience.BreakerSettings).
type UpstreamBreaker struct {
	// ConsecutiveFailures trips it. Default 5; -1: off.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// FailureRatio over Window (at least MinCalls attempts) also trips
	// it. Default off.
	FailureRatio float64 `yaml:"failure_ratio"`
	// Window of FailureRatio. Default 10s.
	Window Duration `yaml:"window"`
	// MinCalls for FailureRatio. Default 20.
	MinCalls int `yaml:"min_calls"`
	// Cooldown, open before probing. Default 30s.
	Cooldown Duration `yaml:"cooldown"`
	// HalfOpenProbes admitted at a time when half-open. Default 1.
	HalfOpenProbes int `yaml:"half_open_probes"`
}

// UpstreamBulkhead bounds the requests in flight
// (resilience.BulkheadSettings).
type UpstreamBulkhead struct {
	// MaxInFlight attempts at once. Default 64.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxWait for a free slot. Default 0: reject at once.
	MaxWait Duration `yaml:"max_wait"`
}

// UpstreamPace configures pauses and pacing (resilience.PaceSettings).
type UpstreamPace struct {
	// MaxWait a request may wait for a pause to end. Default 1s.
	MaxWait Duration `yaml:"max_wait"`
	// MaxPause caps a pause. Default 5m.
	MaxPause Duration `yaml:"max_pause"`
	// IgnoreQuotaHeaders: only a 429 with Retry-After pauses. Default
	// false.
	IgnoreQuotaHeaders bool `yaml:"ignore_quota_headers"`
}

// UpstreamLimit is a client-side rate limit on the upstream's quota
// (resilience.LimitSettings), in this process.
type UpstreamLimit struct {
	// Policies: "100/s burst 100", "5000/day", "concurrency 10".
	// Required.
	Policies []string `yaml:"policies"`
	// MaxWait for a slot before upstream-quota-exhausted. Default 1s.
	MaxWait Duration `yaml:"max_wait"`
}

// UpstreamFallback configures an upstream's fallbacks
// (resilience.StaleSettings and resilience.SecondarySettings). With both,
// the stale response is tried first, then the secondary.
type UpstreamFallback struct {
	// StaleIfError, when set, keeps the last 200 response of every GET
	// and HEAD target (in this process, up to 1000 targets of up to
	// 1 MiB) and serves it, with Age and Levee-Stale: true, when the
	// upstream fails (an error, a local rejection such as an open
	// breaker, or a 500, 502, 503 or 504) for this long past the
	// response's max-age (RFC 5861; the response's own stale-if-error=N
	// wins). Unsafe methods are never served stale.
	StaleIfError Duration `yaml:"stale_if_error"`
	// Secondary names another upstream (one of upstreams:, itself
	// without a secondary) the request is sent to, through that
	// upstream's own policies, when this one fails: same method, path,
	// headers and body; only the scheme and host change. An unsafe
	// method without an idempotency key falls back only when the
	// primary certainly did not get it (a local rejection or a connect
	// error). A route using an upstream with a secondary always takes
	// the ReverseProxy path (the secondary is sent from the outbound
	// *http.Request).
	Secondary string `yaml:"secondary"`
	// Queue names one of queues: whose target is this upstream (its
	// name, optionally with a path): a POST, PUT, PATCH or DELETE that
	// failed where the write certainly did not happen upstream (a local
	// rejection: open breaker, full bulkhead, spent budget, no quota slot
	// or a pause beyond its wait bound; a connect error; an answer of
	// 408, 425 or 429) is stored in that queue, with its method, path,
	// body, the queue's headers and its idempotency key, and answered
	// 202 Accepted with the message id, a Location to the queue's status
	// path (when it has one) and Levee-Queued: true. A request that was
	// sent and whose outcome is unknown (timeout, connection lost) or
	// that was answered 502, 503 or 504 is queued only when it carries
	// an idempotency key the upstream deduplicates (retry.dedupes_keys,
	// or the route's idempotency.on_unknown_outcome: release). Tried
	// after stale_if_error and secondary; the queue delivers later
	// through this upstream's own policies (upstream_queue.go).
	Queue string `yaml:"queue"`
}

var upstreamName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Defaults implements config.Section (the library supplies every
// default; nothing to fill here).
func (u *UpstreamConfig) Defaults() {}

// Validate implements config.Section: the URL, the name, and every
// resilience setting (through resilience.Settings.Validate, whose field
// names are mapped back to the YAML ones).
func (u *UpstreamConfig) Validate(r *config.Report, p string) {
	if !upstreamName.MatchString(u.Name) {
		r.Bad(p+".name", "required: letters, digits, '.', '_' and '-' (at most 64), got %q", u.Name)
	}
	pu, err := url.Parse(u.URL)
	switch {
	case u.URL == "":
		r.Bad(p+".url", "required: the URL requests are forwarded to, e.g. https://api.stripe.com")
	case err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "":
		r.Bad(p+".url", "must be an absolute http or https URL, got %q", u.URL)
	case pu.RawQuery != "" || pu.Fragment != "" || pu.User != nil:
		r.Bad(p+".url", "must not have a query, fragment or credentials, got %q", u.URL)
	default:
		u.url = pu
	}
	if u.Retry.AutoKey && !u.Retry.DedupesKeys {
		r.Bad(p+".retry.auto_key", "needs retry.dedupes_keys: true (a generated key only helps an upstream that deduplicates by it)")
	}
	s, field, err := u.build()
	if err != nil {
		r.Bad(config.Join(p, field), "%v", err)
		return
	}
	if err := s.Validate(); err != nil {
		f, msg := yamlField(err.Error())
		r.Bad(config.Join(p, f), "%s", msg)
		return
	}
	u.settings = s
	y, _ := yaml.Marshal(u)
	u.hash = string(y)
}

// build turns the YAML into resilience.Settings (no Observer yet). A
// policy that does not parse is returned with its field.
func (u *UpstreamConfig) build() (resilience.Settings, string, error) {
	s := resilience.Settings{
		Name:           u.Name,
		Timeout:        u.Timeout.D(),
		AttemptTimeout: u.AttemptTimeout.D(),
		Retry: resilience.RetrySettings{
			MaxAttempts: u.Retry.MaxAttempts, BaseDelay: u.Retry.BaseDelay.D(), MaxDelay: u.Retry.MaxDelay.D(),
			MaxRetryAfter: u.Retry.MaxRetryAfter.D(), Statuses: u.Retry.Statuses, AutoKey: u.Retry.AutoKey,
			KeyHeader: u.Retry.KeyHeader,
		},
		Budget: resilience.BudgetSettings{Ratio: u.Budget.Ratio, MinPerSecond: u.Budget.MinPerSecond, Window: u.Budget.Window.D()},
	}
	for _, m := range u.Retry.IdempotentMethods {
		s.Retry.IdempotentMethods = append(s.Retry.IdempotentMethods, strings.ToUpper(m))
	}
	if t := u.Throttle; t != nil {
		s.Throttle = &resilience.ThrottleSettings{K: t.K, Window: t.Window.D()}
	}
	if b := u.Breaker; b != nil {
		s.Breaker = &resilience.BreakerSettings{ConsecutiveFailures: b.ConsecutiveFailures, FailureRatio: b.FailureRatio,
			Window: b.Window.D(), MinCalls: b.MinCalls, Cooldown: b.Cooldown.D(), HalfOpenProbes: b.HalfOpenProbes}
	}
	if b := u.Bulkhead; b != nil {
		s.Bulkhead = &resilience.BulkheadSettings{MaxInFlight: b.MaxInFlight, MaxWait: b.MaxWait.D()}
	}
	if pc := u.Pace; pc != nil {
		s.Pace = &resilience.PaceSettings{MaxWait: pc.MaxWait.D(), MaxPause: pc.MaxPause.D(), IgnoreQuotaHeaders: pc.IgnoreQuotaHeaders}
	}
	if l := u.Limit; l != nil {
		ls := &resilience.LimitSettings{MaxWait: l.MaxWait.D()}
		for i, spec := range l.Policies {
			pol, err := ratelimit.ParsePolicy(spec)
			if err != nil {
				return s, fmt.Sprintf("limit.policies[%d]", i), err
			}
			pol.Name = spec // names the policy in upstream-quota-exhausted; the state is keyed by the upstream
			ls.Policies = append(ls.Policies, pol)
		}
		s.Limit = ls
	}
	if f := u.Fallback; f != nil {
		if f.StaleIfError.D() < 0 {
			return s, "fallback.stale_if_error", fmt.Errorf("must not be negative, got %v", f.StaleIfError.D())
		}
		if f.StaleIfError.D() > 0 {
			s.Stale = &resilience.StaleSettings{MaxStale: f.StaleIfError.D()}
		}
	}
	return s, "", nil
}

// settingFields maps the field names of resilience's errors to the YAML
// ones, longest first.
var settingFields = [][2]string{
	{"Retry.MaxAttempts", "retry.max_attempts"}, {"Retry.BaseDelay", "retry.base_delay"},
	{"Retry.MaxDelay", "retry.max_delay"}, {"Retry.MaxRetryAfter", "retry.max_retry_after"},
	{"Retry.Statuses", "retry.statuses"}, {"Retry.IdempotentMethods", "retry.idempotent_methods"},
	{"Retry.KeyHeader", "retry.key_header"},
	{"Budget.Ratio", "budget.ratio"}, {"Budget.MinPerSecond", "budget.min_per_second"}, {"Budget.Window", "budget.window"},
	{"Throttle.K", "throttle.k"}, {"Throttle.Window", "throttle.window"},
	{"Breaker.ConsecutiveFailures", "breaker.consecutive_failures"}, {"Breaker.FailureRatio", "breaker.failure_ratio"},
	{"Breaker.Window", "breaker.window"}, {"Breaker.MinCalls", "breaker.min_calls"}, {"Breaker.Cooldown", "breaker.cooldown"},
	{"Breaker.HalfOpenProbes", "breaker.half_open_probes"},
	{"Bulkhead.MaxInFlight", "bulkhead.max_in_flight"}, {"Bulkhead.MaxWait", "bulkhead.max_wait"},
	{"Pace.MaxPause", "pace.max_pause"}, {"Pace.MaxWait", "pace.max_wait"},
	{"Limit.Policies", "limit.policies"},
	{"AttemptTimeout", "attempt_timeout"}, {"Timeout", "timeout"},
}

// yamlField returns the YAML field a resilience validation message is
// about (the first one it names) and the message with every Go field
// name replaced by its YAML name.
func yamlField(msg string) (field, out string) {
	out = strings.TrimPrefix(msg, "resilience: ")
	first := len(out) + 1
	for _, f := range settingFields {
		if i := indexWord(out, f[0]); i >= 0 && i < first {
			first, field = i, f[1]
		}
	}
	for _, f := range settingFields {
		out = replaceWord(out, f[0], f[1])
	}
	return field, out
}

// indexWord finds w in s not preceded by a letter or a dot (so that
// "Timeout" does not match inside "AttemptTimeout" or "Retry.Timeout").
func indexWord(s, w string) int {
	for off := 0; ; {
		i := strings.Index(s[off:], w)
		if i < 0 {
			return -1
		}
		i += off
		if i == 0 || !isWordByte(s[i-1]) {
			if j := i + len(w); j == len(s) || !isWordByte(s[j]) {
				return i
			}
		}
		off = i + 1
	}
}

func isWordByte(c byte) bool {
	return c == '.' || c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

func replaceWord(s, w, with string) string {
	for {
		i := indexWord(s, w)
		if i < 0 {
			return s
		}
		s = s[:i] + with + s[i+len(w):]
	}
}

// validateUpstreams checks the names are unique and resolves every
// route's upstream name, reporting unknown names and a route timeout
// shorter than its upstream's (which would cut its retries short).
func (c *Config) validateUpstreams(r *config.Report) {
	byName := map[string]int{}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if j, dup := byName[u.Name]; dup && u.Name != "" {
			r.Bad(fmt.Sprintf("upstreams[%d].name", i), "duplicate upstream name %q (also upstreams[%d])", u.Name, j)
			continue
		}
		byName[u.Name] = i
	}
	for i := range c.Upstreams {
		f := c.Upstreams[i].Fallback
		if f == nil || f.Secondary == "" {
			continue
		}
		field := fmt.Sprintf("upstreams[%d].fallback.secondary", i)
		j, ok := byName[f.Secondary]
		switch {
		case !ok:
			r.Bad(field, "unknown upstream %q (upstreams: %s)", f.Secondary, strings.Join(upstreamNames(byName), ", "))
		case j == i || f.Secondary == c.Upstreams[i].Name:
			r.Bad(field, "upstream %q cannot be its own secondary", f.Secondary)
		case c.Upstreams[j].Fallback != nil && c.Upstreams[j].Fallback.Secondary != "":
			r.Bad(field, "upstream %q has a secondary of its own (%q): chains of secondaries are not supported", f.Secondary, c.Upstreams[j].Fallback.Secondary)
		}
	}
	c.validateFallbackQueues(r)
	for i := range c.Upstreams {
		if c.Upstreams[i].Shared && c.UpstreamStore.Type != "redis" {
			r.Bad(fmt.Sprintf("upstreams[%d].shared", i), "needs upstream_store.type: redis (the store replicas share)")
		}
	}
	for i := range c.Routes {
		rc := &c.Routes[i]
		field := fmt.Sprintf("routes[%d].upstream", i)
		if rc.upstreamRef == "" {
			if rc.Egress {
				r.Bad(field, "an egress route needs a named upstream (one of upstreams:), not a URL")
			}
			continue
		}
		j, ok := byName[rc.upstreamRef]
		if !ok {
			r.Bad(field, "unknown upstream %q (upstreams: %s)", rc.upstreamRef, strings.Join(upstreamNames(byName), ", "))
			continue
		}
		u := &c.Upstreams[j]
		rc.upstream, rc.named = u.url, u
		if u.url == nil {
			continue // reported at upstreams[j].url
		}
		t := u.Timeout.D()
		if t == 0 {
			t = 30 * time.Second
		}
		if rc.Timeout.D() < t {
			r.Bad(fmt.Sprintf("routes[%d].timeout", i), "%v is shorter than upstream %q's timeout %v: its retries would be cut short; set the route's timeout to at least %v (or lower the upstream's)", rc.Timeout.D(), u.Name, t, t)
		}
	}
}

func upstreamNames(byName map[string]int) []string {
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// upstreamSet holds the executors of the named upstreams, kept across
// reloads while an upstream's settings do not change (they hold breaker,
// budget and bulkhead state).
type upstreamSet struct {
	mu     sync.Mutex
	execs  map[string]*upstreamExec
	obs    *resmetrics.Observer
	obsErr error
	once   sync.Once
	shared *sharedStores // opened for the first shared upstream
}

type upstreamExec struct {
	hash      string
	exec      *resilience.Executor
	url       *url.URL
	secondary bool     // a secondary fallback: routes take the ReverseProxy path
	queue     *gwQueue // the queue fallback, or nil
	dedupes   bool     // retry.dedupes_keys: the upstream deduplicates by the key header
}

// secondary returns the name of u's secondary upstream, or "".
func (u *UpstreamConfig) secondary() string {
	if u.Fallback == nil {
		return ""
	}
	return u.Fallback.Secondary
}

// upstream returns the named upstream of c, or nil.
func (c *Config) upstream(name string) *UpstreamConfig {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// executors builds (or keeps) one executor per upstream of cfg and
// returns them by name; the set is committed only by commit, so a failed
// Apply changes nothing.
func (g *Gateway) executors(cfg *Config) (map[string]*upstreamExec, error) {
	us := &g.upstreams
	if len(cfg.Upstreams) == 0 {
		return nil, nil // no collectors registered for nothing
	}
	us.once.Do(func() { us.obs, us.obsErr = resmetrics.New(g.metrics.Registry) })
	if us.obsErr != nil {
		return nil, fmt.Errorf("gateway: upstream metrics: %w", us.obsErr)
	}
	us.mu.Lock()
	defer us.mu.Unlock()
	out := make(map[string]*upstreamExec, len(cfg.Upstreams))
	// Upstreams with a secondary last: their Settings hold the
	// secondary's executor (validation refuses chains of secondaries).
	order := make([]int, 0, len(cfg.Upstreams))
	for pass := 0; pass < 2; pass++ {
		for i := range cfg.Upstreams {
			if (cfg.Upstreams[i].secondary() != "") == (pass == 1) {
				order = append(order, i)
			}
		}
	}
	for _, i := range order {
		u := &cfg.Upstreams[i]
		hash := u.hash
		var sec *upstreamExec
		if n := u.secondary(); n != "" {
			if sec = out[n]; sec == nil {
				return nil, fmt.Errorf("gateway: upstreams[%d] (%s): unknown secondary %q", i, u.Name, n)
			}
			hash += "\x00secondary:" + sec.hash // a new secondary executor rebuilds this one
		}
		var fq *gwQueue
		if u.Fallback != nil && u.Fallback.Queue != "" {
			if fq = g.queues.byName[u.Fallback.Queue]; fq == nil {
				return nil, fmt.Errorf("gateway: upstreams[%d] (%s): fallback queue %q is not open (Options.Queues)", i, u.Name, u.Fallback.Queue)
			}
		}
		if old := us.execs[u.Name]; old != nil && old.hash == hash {
			out[u.Name] = old
			continue
		}
		s := u.settings
		s.Observer = us.obs
		if sec != nil {
			su := cfg.upstream(u.secondary())
			kh := sec.exec.KeyHeader()
			s.Secondary = &resilience.SecondarySettings{Executor: sec.exec,
				Send: resilience.RoundTripTo(attemptTransport{base: g.transport, keyHeader: http.CanonicalHeaderKey(kh)}, su.url, kh)}
		}
		if u.Shared {
			if us.shared == nil {
				st, err := openShared(cfg.UpstreamStore)
				if err != nil {
					return nil, err
				}
				us.shared = st
			}
			us.shared.share(&s)
		}
		e, err := resilience.New(s)
		if err != nil {
			return nil, fmt.Errorf("gateway: upstreams[%d] (%s): %w", i, u.Name, err)
		}
		out[u.Name] = &upstreamExec{hash: hash, exec: e, url: u.url, secondary: sec != nil, queue: fq, dedupes: u.Retry.DedupesKeys}
	}
	return out, nil
}

// commitExecutors makes execs the current set (after a successful Apply).
func (g *Gateway) commitExecutors(execs map[string]*upstreamExec) {
	g.upstreams.mu.Lock()
	g.upstreams.execs = execs
	g.upstreams.mu.Unlock()
}

// upstreamFor returns the executor and URL of the named upstream in the
// running config (queues delivering to it), and whether it deduplicates by
// the key header; nils when there is none.
func (g *Gateway) upstreamFor(name string) (*resilience.Executor, *url.URL, bool) {
	g.upstreams.mu.Lock()
	defer g.upstreams.mu.Unlock()
	if e := g.upstreams.execs[name]; e != nil {
		return e.exec, e.url, e.dedupes
	}
	return nil, nil, false
}

// Executor returns the resilience executor of the named upstream in the
// running config, or nil (for inspection: its breaker's state).
func (g *Gateway) Executor(name string) *resilience.Executor {
	g.upstreams.mu.Lock()
	defer g.upstreams.mu.Unlock()
	if e := g.upstreams.execs[name]; e != nil {
		return e.exec
	}
	return nil
}
