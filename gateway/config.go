package gateway

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/leveehq/levee/internal/config"
)

// Config is the whole levee.yaml: one typed field per capability's
// section, each section's type living next to the code it configures
// (store.go, idempotency.go, ratelimit.go, serverconfig.go). The generic
// loader (internal/config) decodes it strictly, expands ${ENV}, then calls
// every section's Defaults and Validate; this file holds only the root's
// own fields and the rules that span sections. Every field's default is
// stated in its comment and in docs/configuration.md; the zero value of a
// field means its default. Fields tagged reload:"restart" cannot change on
// reload.
type Config struct {
	// Listen is the address of the proxy listener. Default ":8080".
	Listen string `yaml:"listen" reload:"restart"`
	// Admin configures the admin listener (metrics, health, config).
	Admin AdminConfig `yaml:"admin"`
	// Store is where idempotency records live. Default: sqlite, levee.db.
	Store StoreConfig `yaml:"store" reload:"restart"`
	// Server holds the limits that protect levee from slow or huge clients.
	Server ServerConfig `yaml:"server"`
	// TrustedProxies are the CIDRs whose X-Forwarded-For chain levee keeps
	// and extends; from anyone else the header is replaced. Default none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Log configures the structured JSON log.
	Log LogConfig `yaml:"log"`
	// RateLimit holds the rate-limit store and the policies applied to
	// every route.
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// Errors is how levee renders the errors it produces: problem+json
	// (default) or an API's own envelope. A route's errors block wins.
	Errors ErrorsConfig `yaml:"errors"`
	// Routes map requests to upstreams. First the exact `path` matches,
	// then the longest `path_prefix`; ties go to the earlier route.
	Routes []RouteConfig `yaml:"routes"`
	// Upstreams are named upstreams with resilience policies (timeouts,
	// retries, breaker, bulkhead, quotas) that routes use by name
	// (upstreams.go). Default none.
	Upstreams []UpstreamConfig `yaml:"upstreams"`
	// UpstreamStore is where shared upstreams keep their state
	// (upstream_store.go). Default memory.
	UpstreamStore UpstreamStoreConfig `yaml:"upstream_store"`
	// QueueStore is where the queues keep messages and dead letters.
	// Default: sqlite, in store.sqlite.path (queues.go).
	QueueStore QueueStoreConfig `yaml:"queue_store" reload:"restart"`
	// Queues are durable queues delivered to internal upstreams, with a
	// DLQ; a queue with a path also accepts async work. Default none.
	Queues []QueueConfig `yaml:"queues" reload:"restart"`
	// Webhooks are signed-event ingest routes feeding the queues
	// (webhooks.go). Default none.
	Webhooks []WebhookConfig `yaml:"webhooks"`

	trusted []netip.Prefix
	file    string // the file Parse read, for paths relative to it
}

// Duration is a time.Duration written as "500ms", "30s", "5m", "24h".
type Duration = config.Duration

// ByteSize is a size written as 1048576, "64KiB", "10MiB", "1MB", "2GiB".
type ByteSize = config.ByteSize

// ConfigError lists every problem found in a config file, each with the
// line and field it concerns.
type ConfigError = config.Error

// Problem is one config problem.
type Problem = config.Problem

// ParseByteSize parses a byte size: a non-negative integer with an
// optional unit B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB, K, M, G
// (powers of 1024).
func ParseByteSize(s string) (int64, error) { return config.ParseByteSize(s) }

// ExpandEnv expands ${VAR} and ${VAR:-default} in s; $$ is a literal $.
// A variable that is unset and has no default is an error naming it.
func ExpandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	return config.ExpandEnv(s, lookup)
}

// AdminConfig configures the admin listener.
type AdminConfig struct {
	// Listen is the admin address. Default "127.0.0.1:9090" (loopback
	// only); "off" disables the admin listener.
	Listen string `yaml:"listen" reload:"restart"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin
	// listener. Default false.
	Pprof bool `yaml:"pprof" reload:"restart"`
	// Token is the bearer token the admin endpoints that read records or
	// change state (idempotency keys, the DLQ) require, compared in
	// constant time; use ${ENV}. Default none: those endpoints are off.
	// It may change on reload (rotation).
	Token string `yaml:"token" redact:"secret"`
}

// Defaults implements config.Section.
func (a *AdminConfig) Defaults() {
	config.Default(&a.Listen, "127.0.0.1:9090")
}

// Validate implements config.Section.
func (a *AdminConfig) Validate(r *config.Report, path string) {
	if a.Listen != "off" {
		if _, _, err := splitHostPort(a.Listen); err != nil {
			r.Bad(config.Join(path, "listen"), "%v (or \"off\")", err)
		}
	}
	if a.Token != "" && len(a.Token) < 16 {
		r.Bad(config.Join(path, "token"), "too short (%d characters): use at least 16 random characters, e.g. openssl rand -hex 32", len(a.Token))
	}
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// AccessLog writes one JSON line per request. Default true.
	AccessLog *bool `yaml:"access_log"`
}

// Defaults implements config.Section.
func (l *LogConfig) Defaults() {
	config.Default(&l.Level, "info")
	if l.AccessLog == nil {
		t := true
		l.AccessLog = &t
	}
}

// Validate implements config.Section.
func (l *LogConfig) Validate(r *config.Report, path string) {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		r.Bad(config.Join(path, "level"), "unknown level %q (want debug, info, warn or error)", l.Level)
	}
}

// RouteConfig is one route. Its capability blocks (idempotency,
// rate_limit) are sections of their own; the order in which they wrap the
// upstream is the gateway's (buildRoute).
type RouteConfig struct {
	// Name identifies the route in metrics, logs and idempotency scopes.
	// Required, unique.
	Name string `yaml:"name"`
	// Match selects requests.
	Match MatchConfig `yaml:"match"`
	// Upstream is the absolute http(s) URL requests are forwarded to (its
	// path, if any, prefixes the request path), or the name of an entry
	// of upstreams, whose URL and policies then apply. Required.
	Upstream string `yaml:"upstream"`
	// Egress makes this an egress route: local callers reach a third
	// party through it (upstreams.go). The matched path_prefix is removed
	// before forwarding and no X-Forwarded-* headers are sent. Needs a
	// named upstream and a path_prefix. Default false.
	Egress bool `yaml:"egress"`
	// Timeout bounds the whole upstream exchange. Default 30s.
	Timeout Duration `yaml:"timeout"`
	// Idempotency, when present, applies the idempotency contract.
	Idempotency *IdempotencyConfig `yaml:"idempotency"`
	// RateLimit lists policies applied to this route only, after the
	// global rate_limit.policies. Default none.
	RateLimit PolicyList `yaml:"rate_limit"`
	// Errors renders this route's errors in another format than the
	// global errors block. Default: the global block.
	Errors *ErrorsConfig `yaml:"errors"`

	upstream    *url.URL
	upstreamRef string          // Upstream when it names an upstreams entry
	named       *UpstreamConfig // that entry, resolved by Config.Validate
}

// Defaults implements config.Section.
func (rc *RouteConfig) Defaults() {
	config.Default(&rc.Timeout, Duration(30*time.Second))
}

// Validate implements config.Section.
func (rc *RouteConfig) Validate(r *config.Report, p string) {
	if rc.Name == "" {
		r.Bad(p+".name", "required")
	}
	if rc.Egress && rc.Match.PathPrefix == "" {
		r.Bad(p+".match.path_prefix", "an egress route needs a path_prefix (removed before forwarding)")
	}
	if !strings.Contains(rc.Upstream, "://") && upstreamName.MatchString(rc.Upstream) {
		rc.upstreamRef = rc.Upstream // resolved by Config.Validate
		return
	}
	u, err := url.Parse(rc.Upstream)
	switch {
	case rc.Upstream == "":
		r.Bad(p+".upstream", "required: the URL requests are forwarded to, e.g. http://127.0.0.1:3000")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		r.Bad(p+".upstream", "must be an absolute http or https URL, got %q", rc.Upstream)
	case u.RawQuery != "" || u.Fragment != "":
		r.Bad(p+".upstream", "must not have a query or fragment, got %q", rc.Upstream)
	case u.User != nil:
		r.Bad(p+".upstream", "must not carry credentials (user:password@): they would not be sent; set an Authorization header upstream-side instead")
	default:
		rc.upstream = u
	}
}

// MatchConfig selects requests for a route. Path and PathPrefix are
// exclusive; one is required.
type MatchConfig struct {
	// Path matches exactly this path.
	Path string `yaml:"path"`
	// PathPrefix matches this path and everything below it on a segment
	// boundary: /v1/pay matches /v1/pay and /v1/pay/x, not /v1/payments.
	PathPrefix string `yaml:"path_prefix"`
	// Methods restricts the route to these methods. Default: all.
	Methods []string `yaml:"methods"`
	// Host restricts the route to this Host header (port ignored).
	// Default: any.
	Host string `yaml:"host"`
}

// Defaults implements config.Section.
func (m *MatchConfig) Defaults() {
	for j, meth := range m.Methods {
		m.Methods[j] = strings.ToUpper(meth)
	}
}

// Validate implements config.Section.
func (m *MatchConfig) Validate(r *config.Report, p string) {
	switch {
	case m.Path == "" && m.PathPrefix == "":
		r.Bad(p, "one of path or path_prefix is required")
	case m.Path != "" && m.PathPrefix != "":
		r.Bad(p, "path and path_prefix are exclusive")
	case m.Path != "":
		validMatchPath(r, p+".path", m.Path)
	default:
		validMatchPath(r, p+".path_prefix", m.PathPrefix)
	}
	if strings.Contains(m.Host, ":") {
		r.Bad(p+".host", "%q: give the host without a port (the request's port is ignored when matching)", m.Host)
	}
	for j, meth := range m.Methods {
		if !slices.Contains(validMethods, meth) {
			r.Bad(fmt.Sprintf("%s.methods[%d]", p, j), "unknown method %q", meth)
		}
	}
}

func validMatchPath(r *config.Report, field, v string) {
	switch {
	case !strings.HasPrefix(v, "/"):
		r.Bad(field, "must start with /, got %q", v)
	case cleanPath(v) != v:
		r.Bad(field, "%q is not a clean path (requests are matched after removing dot segments and duplicate slashes): use %q", v, cleanPath(v))
	}
}

var validMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}

// LoadFile reads, expands and validates a config file.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gateway: reading config: %w", err)
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse decodes and validates a config. name labels errors (the file
// name); lookupEnv resolves ${VAR} and ${VAR:-default} in values ($$ is a
// literal $). Decoding is strict: unknown fields are errors. The returned
// config has every default filled in. The error is a *ConfigError listing
// every problem of the file, each with its line and field path.
func Parse(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	cfg := Config{file: name}
	if err := config.Load(name, data, lookupEnv, &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Defaults implements config.Section for the rules that span sections:
// it runs after every section has its defaults.
func (c *Config) Defaults() {
	config.Default(&c.Listen, ":8080")
	c.RateLimit.inheritRedis(c.Store.Redis)
	c.UpstreamStore.inheritRedis(c.Store.Redis)
	c.QueueStore.inherit(c.Store)
	base := filepath.Dir(c.file)
	c.Errors.base = base
	for i := range c.Routes {
		if e := c.Routes[i].Errors; e != nil {
			e.base = base
		}
	}
	if c.Server.ShutdownTimeout == 0 {
		c.Server.ShutdownTimeout = Duration(max(c.drainNeeded()+5*time.Second, 30*time.Second))
	}
}

// Validate implements config.Section for the rules that span sections.
func (c *Config) Validate(r *config.Report, _ string) {
	if _, _, err := splitHostPort(c.Listen); err != nil {
		r.Bad("listen", "%v", err)
	}
	c.trusted = c.trusted[:0]
	for i, cidr := range c.TrustedProxies {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			a, aerr := netip.ParseAddr(cidr)
			if aerr != nil {
				r.Bad(fmt.Sprintf("trusted_proxies[%d]", i), "invalid CIDR or address %q", cidr)
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		c.trusted = append(c.trusted, p.Masked())
	}
	if len(c.Routes) == 0 && len(c.Webhooks) == 0 && len(c.Queues) == 0 {
		r.Bad("routes", "at least one route is required")
	}
	if need := c.drainNeeded(); c.Server.ShutdownTimeout.D() < need {
		r.Bad("server.shutdown_timeout", "%v is shorter than the longest request can take (%v: route timeout + in_flight_wait + store_timeout); a request cut off at shutdown could run again on retry", c.Server.ShutdownTimeout.D(), need)
	}
	names := map[string]int{}
	for i := range c.Routes {
		rc := &c.Routes[i]
		if j, dup := names[rc.Name]; dup && rc.Name != "" {
			r.Bad(fmt.Sprintf("routes[%d].name", i), "duplicate route name %q (also routes[%d])", rc.Name, j)
		} else {
			names[rc.Name] = i
		}
	}
	c.validatePolicyNames(r)
	c.validateUpstreams(r)
	c.validateQueues(r)
}

// drainNeeded is the longest a request can take once accepted: its route
// timeout, the in-flight wait, and a store call to record its outcome.
func (c *Config) drainNeeded() time.Duration {
	var need time.Duration
	for i := range c.Routes {
		rc := &c.Routes[i]
		d := rc.Timeout.D()
		if idc := rc.Idempotency; idc.enabled() {
			d += idc.InFlightWait.D() + idc.StoreTimeout.D()
		}
		need = max(need, d)
	}
	return need
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("address %q needs a port, e.g. :8080 or 127.0.0.1:8080", addr)
	}
	port, err := strconv.Atoi(addr[i+1:])
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("address %q has an invalid port", addr)
	}
	return addr[:i], port, nil
}

// Redacted returns a copy of c safe to show: fields tagged redact are
// replaced by "REDACTED" or have their passwords masked. The copy is made
// through the YAML form (field names and durations as written).
func (c *Config) Redacted() Config {
	out, err := config.Redact(c)
	if err != nil { // cannot happen for a config that Parse returned
		return Config{Listen: config.Redacted}
	}
	return out
}

// RestartChanges lists the fields that differ between c and next and
// cannot change on reload.
func (c *Config) RestartChanges(next *Config) []string { return config.RestartChanges(c, next) }
