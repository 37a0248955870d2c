package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/ratelimit"
	rlredis "github.com/leveehq/levee/store/redis/redislimit"
)

// RateLimitConfig is the rate_limit section: the limit store and the
// policies applied to every route.
type RateLimitConfig struct {
	// Store is memory (default: limits per replica) or redis (shared by
	// every replica, exact).
	Store string `yaml:"store" reload:"restart"`
	// Redis is the connection when Store is redis. Default: store.redis's
	// address and credentials, with prefix "levee:rl:".
	Redis RedisConfig `yaml:"redis" reload:"restart"`
	// Timeout is how long a decision waits for a store that answers
	// nothing at all (a frozen or cut Redis); past it the policy's
	// on_store_error applies. A store that keeps answering other
	// decisions is slow, not down, and is waited for up to max_wait.
	// Default 250ms.
	Timeout Duration `yaml:"timeout"`
	// MaxWait bounds every decision however busy the store; past it that
	// one request gets its on_store_error. Default 1s, or timeout if
	// longer.
	MaxWait Duration `yaml:"max_wait"`
	// StoreBackoff is how long the store is skipped once it is seen down
	// (a refused or reset connection, a stall, or 3 consecutive
	// failures), so an outage does not add Timeout to every request; then
	// one probe at a time tries it again. Default 1s.
	StoreBackoff Duration `yaml:"store_backoff"`
	// Replicas estimates how many gateways share the store: a fail_open
	// policy without a fallback enforces its limit divided by Replicas
	// on each replica during an outage. Default 1.
	Replicas int `yaml:"replicas"`
	// Connections is the Redis connection pool of the rate limiter, all
	// opened at start: size it for the concurrent requests one replica
	// serves, so a burst does not wait for dials. Default 256.
	Connections int `yaml:"connections" reload:"restart"`
	// UnavailableRetryAfter is the Retry-After of fail_closed 503s.
	// Default 1s.
	UnavailableRetryAfter Duration `yaml:"unavailable_retry_after"`
	// ConcurrencyLease bounds how long a concurrency slot of a crashed
	// replica counts (Redis). Default 1m.
	ConcurrencyLease Duration `yaml:"concurrency_lease" reload:"restart"`
	// Policies apply to every route.
	Policies PolicyList `yaml:"policies"`
}

// Defaults implements config.Section. The Redis connection's defaults
// come from store.redis (see inheritRedis, run by the root).
func (rl *RateLimitConfig) Defaults() {
	config.Default(&rl.Store, "memory")
	config.Default(&rl.Redis.Prefix, rlredis.DefaultPrefix)
	config.Default(&rl.Timeout, Duration(ratelimit.DefaultTimeout))
	config.Default(&rl.MaxWait, max(Duration(time.Second), rl.Timeout))
	config.Default(&rl.StoreBackoff, Duration(time.Second))
	config.Default(&rl.Replicas, 1)
	config.Default(&rl.Connections, 256)
	config.Default(&rl.UnavailableRetryAfter, Duration(time.Second))
	config.Default(&rl.ConcurrencyLease, Duration(rlredis.DefaultConcurrencyLease))
}

// inheritRedis fills the connection left empty from store.redis.
func (rl *RateLimitConfig) inheritRedis(st RedisConfig) {
	if rl.Redis.Addr == "" {
		rl.Redis.Addr = st.Addr
		if rl.Redis.Username == "" && rl.Redis.Password == "" {
			rl.Redis.Username, rl.Redis.Password = st.Username, st.Password
		}
	}
}

// Validate implements config.Section.
func (rl *RateLimitConfig) Validate(r *config.Report, path string) {
	switch rl.Store {
	case "memory", "redis":
	default:
		r.Bad(config.Join(path, "store"), "unknown rate-limit store %q (want memory or redis)", rl.Store)
	}
	if rl.Redis.FlushDelay != nil {
		r.Bad(config.Join(path, "redis.flush_delay"), "applies to store.redis only (the rate limiter sends one command per decision)")
	}
	if rl.Replicas < 1 {
		r.Bad(config.Join(path, "replicas"), "must be at least 1")
	}
	if n := rl.Connections; n < 1 || n > 10000 {
		r.Bad(config.Join(path, "connections"), "must be between 1 and 10000, got %d", n)
	}
	if rl.MaxWait < rl.Timeout {
		r.Bad(config.Join(path, "max_wait"), "must be at least rate_limit.timeout (%v)", rl.Timeout.D())
	}
}

// PolicyList is a list of rate-limit policies (rate_limit.policies, or a
// route's rate_limit).
type PolicyList []PolicyConfig

// PolicyConfig is one rate-limit policy.
type PolicyConfig struct {
	// Name identifies the policy in headers, problems and metrics, and
	// keys its state: unique across the whole file. Required.
	Name string `yaml:"name"`
	// Limit: "100/s burst 200", "1000/hour", "5000/day", "concurrency 50".
	// Required.
	Limit string `yaml:"limit"`
	// Key: ip, header:NAME, route, const, or a + combination. Default ip.
	Key string `yaml:"key"`
	// Cost is the units each request consumes. Default 1.
	Cost int64 `yaml:"cost"`
	// Shadow decides and counts but never denies. Default false.
	Shadow bool `yaml:"shadow"`
	// OnStoreError is fail_open (default: an in-process limit takes over)
	// or fail_closed (503).
	OnStoreError string `yaml:"on_store_error"`
	// Fallback is the per-replica limit used under fail_open. Default:
	// the policy divided by rate_limit.replicas.
	Fallback string `yaml:"fallback"`
	// TimeZone is the IANA time zone (e.g. Europe/Paris) whose calendar a
	// calendar quota ("10000/month", "500/week", "100/day calendar")
	// resets by. Default UTC; only for calendar quotas.
	TimeZone string `yaml:"time_zone"`

	policy   ratelimit.Policy
	fallback ratelimit.Policy
	mode     ratelimit.FailureMode
}

// Defaults implements config.Section.
func (pc *PolicyConfig) Defaults() {
	config.Default(&pc.Key, "ip")
	config.Default(&pc.Cost, 1)
	config.Default(&pc.OnStoreError, "fail_open")
}

// Validate implements config.Section: it parses the policy. Name
// uniqueness spans the file and is the root's (validatePolicyNames).
func (pc *PolicyConfig) Validate(r *config.Report, path string) {
	if pc.Name == "" {
		r.Bad(path+".name", "required")
	}
	if pc.Limit == "" {
		r.Bad(path+".limit", "required, e.g. \"100/s burst 200\", \"1000/hour\" or \"concurrency 50\"")
	} else if pol, err := ratelimit.ParsePolicy(pc.Limit); err != nil {
		r.Bad(path+".limit", "%v", err)
	} else {
		pol.Name = pc.Name
		pc.policy = pol
	}
	if pc.TimeZone != "" {
		if loc, err := time.LoadLocation(pc.TimeZone); err != nil {
			r.Bad(path+".time_zone", "unknown time zone %q: %v", pc.TimeZone, err)
		} else if pc.policy.Name != "" && pc.policy.Kind != ratelimit.KindCalendar {
			r.Bad(path+".time_zone", "applies to calendar quotas only (e.g. \"10000/month\", \"100/day calendar\"), not %q", pc.Limit)
		} else {
			pc.policy.Location = loc
		}
	}
	if _, err := ratelimit.ParseKey(pc.Key, ratelimit.KeyEnv{Route: "x"}); err != nil {
		r.Bad(path+".key", "%v", err)
	}
	if pc.Cost < 0 {
		r.Bad(path+".cost", "must not be negative")
	}
	if m, err := ratelimit.ParseFailureMode(pc.OnStoreError); err != nil {
		r.Bad(path+".on_store_error", "%v", err)
	} else {
		pc.mode = m
	}
	if pc.Fallback != "" {
		if fb, err := ratelimit.ParsePolicy(pc.Fallback); err != nil {
			r.Bad(path+".fallback", "%v", err)
		} else if pc.policy.Name != "" && fb.Kind != pc.policy.Kind {
			r.Bad(path+".fallback", "must be the same kind of limit as %q", pc.Limit)
		} else {
			fb.Location = pc.policy.Location
			pc.fallback = fb
		}
	}
}

// validatePolicyNames checks that policy names are unique across the
// file: a policy's state is keyed by its name.
func (c *Config) validatePolicyNames(r *config.Report) {
	seen := map[string]string{}
	check := func(list PolicyList, base string) {
		for i := range list {
			name, path := list[i].Name, fmt.Sprintf("%s[%d]", base, i)
			if name == "" {
				continue
			}
			if prev, dup := seen[name]; dup {
				r.Bad(path+".name", "duplicate policy name %q (also %s): names key the limit's state and must be unique", name, prev)
				continue
			}
			seen[name] = path
		}
	}
	check(c.RateLimit.Policies, "rate_limit.policies")
	for i := range c.Routes {
		check(c.Routes[i].RateLimit, fmt.Sprintf("routes[%d].rate_limit", i))
	}
}

// rule turns a validated policy into a ratelimit.Rule for one route.
func (pc *PolicyConfig) rule(trusted []netip.Prefix, route string) (ratelimit.Rule, error) {
	key, err := ratelimit.ParseKey(pc.Key, ratelimit.KeyEnv{TrustedProxies: trusted, Route: route})
	if err != nil {
		return ratelimit.Rule{}, err
	}
	r := ratelimit.Rule{Policy: pc.policy, Key: key, Shadow: pc.Shadow, OnStoreError: pc.mode, Fallback: pc.fallback}
	if pc.Cost > 1 {
		cost := pc.Cost
		r.Cost = func(*http.Request) int64 { return cost }
	}
	return r, nil
}

// rateLimitMiddleware builds the middleware deciding a route's policies
// (the global ones, then the route's), or nil when there are none.
func (g *Gateway) rateLimitMiddleware(cfg *Config, rc *RouteConfig) (func(http.Handler) http.Handler, error) {
	rules := make([]ratelimit.Rule, 0, len(cfg.RateLimit.Policies)+len(rc.RateLimit))
	for _, list := range []PolicyList{cfg.RateLimit.Policies, rc.RateLimit} {
		for i := range list {
			rule, err := list[i].rule(cfg.trusted, rc.Name)
			if err != nil {
				return nil, err
			}
			rules = append(rules, rule)
		}
	}
	if len(rules) == 0 {
		return nil, nil
	}
	rl := cfg.RateLimit
	g.breaker.Configure(ratelimit.BreakerOptions{OpenFor: rl.StoreBackoff.D()}) // a reload's store_backoff applies
	return ratelimit.Middleware(ratelimit.Options{
		Rules:                 rules,
		Store:                 g.limits,
		Fallback:              g.fallback,
		Timeout:               rl.Timeout.D(),
		MaxWait:               rl.MaxWait.D(),
		Breaker:               g.breaker,
		Replicas:              rl.Replicas,
		UnavailableRetryAfter: rl.UnavailableRetryAfter.D(),
		OnDecision:            g.rateLimitEvent,
	})
}

func (g *Gateway) rateLimitEvent(ev ratelimit.Event) {
	m := g.metrics
	m.rlDecisions.WithLabelValues(ev.Policy, ev.Outcome.String()).Inc()
	m.rlLatency.Observe(ev.Latency.Seconds())
	if ev.Err != nil {
		m.rlStoreErrors.WithLabelValues(ev.Policy).Inc()
	}
	if ev.Fallback {
		m.rlFallbacks.WithLabelValues(ev.Policy).Inc()
	}
	if ev.Outcome == ratelimit.OutcomeDenied && ev.Request != nil {
		if ri := infoFrom(ev.Request.Context()); ri != nil {
			if ri.limited != "" {
				ri.limited += ","
			}
			ri.limited += ev.Policy
		}
	}
}

// OpenRateLimitStore opens the rate-limit store a config names: an
// in-process ratelimit.Local (memory) or Redis, checked within 10 s.
func OpenRateLimitStore(ctx context.Context, c RateLimitConfig) (ratelimit.Store, func() error, error) {
	if c.Store != "redis" {
		return ratelimit.NewLocal(ratelimit.LocalOptions{}), func() error { return nil }, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client := goredis.NewClient(&goredis.Options{
		Addr: c.Redis.Addr, Username: c.Redis.Username, Password: c.Redis.Password, DB: c.Redis.DB,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second,
		ContextTimeoutEnabled: true, // decisions are bounded by rate_limit.timeout
		// Every connection is opened at start and kept (Warm below,
		// MinIdleConns refills): a burst never waits for dials.
		PoolSize: c.Connections, MinIdleConns: c.Connections, ConnMaxIdleTime: -1,
		Protocol: redisProtocol,
	})
	st, err := rlredis.New(client, rlredis.Options{Prefix: c.Redis.Prefix, ConcurrencyLease: c.ConcurrencyLease.D()})
	if err == nil {
		err = st.Load(ctx)
	}
	if err == nil {
		err = st.Warm(ctx, c.Connections)
	}
	if err != nil {
		_ = client.Close()
		return nil, nil, fmt.Errorf("gateway: rate-limit store redis %s: %w", c.Redis.Addr, err)
	}
	return st, client.Close, nil
}
