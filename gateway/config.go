package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/leveehq/levee/ratelimit"
)

// Config is the whole levee.yaml. Every field's default is stated in its
// comment and in docs/configuration.md; the zero value of a field means
// its default.
type Config struct {
	// Listen is the address of the proxy listener. Default ":8080".
	Listen string `yaml:"listen"`
	// Admin configures the admin listener (metrics, health, config).
	Admin AdminConfig `yaml:"admin"`
	// Store is where idempotency records live. Default: sqlite, levee.db.
	Store StoreConfig `yaml:"store"`
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
	// Routes map requests to upstreams. First the exact `path` matches,
	// then the longest `path_prefix`; ties go to the earlier route.
	Routes []RouteConfig `yaml:"routes"`

	trusted []netip.Prefix
}

// AdminConfig configures the admin listener.
type AdminConfig struct {
	// Listen is the admin address. Default "127.0.0.1:9090" (loopback
	// only); "off" disables the admin listener.
	Listen string `yaml:"listen"`
	// Pprof serves Go's profiler under /debug/pprof/ on the admin
	// listener. Default false.
	Pprof bool `yaml:"pprof"`
}

// StoreConfig selects and configures the idempotency store.
type StoreConfig struct {
	// Type is sqlite (default), memory, redis, postgres or dynamodb.
	Type     string         `yaml:"type"`
	SQLite   SQLiteConfig   `yaml:"sqlite"`
	Redis    RedisConfig    `yaml:"redis"`
	Postgres PostgresConfig `yaml:"postgres"`
	DynamoDB DynamoDBConfig `yaml:"dynamodb"`
	Memory   MemoryConfig   `yaml:"memory"`
}

// SQLiteConfig configures the embedded default store.
type SQLiteConfig struct {
	// Path of the database file. Default "levee.db". Several levee
	// processes on one host may share it.
	Path string `yaml:"path"`
}

// MemoryConfig configures the in-process store (single replica, no
// durability: for trials and tests).
type MemoryConfig struct {
	// MaxEntries caps the records held. Default 1,000,000.
	MaxEntries int `yaml:"max_entries"`
}

// RedisConfig configures the Redis store.
type RedisConfig struct {
	// Addr is host:port. Default "127.0.0.1:6379".
	Addr string `yaml:"addr"`
	// Username and Password authenticate (ACL). Default none.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// DB is the database number. Default 0.
	DB int `yaml:"db"`
	// Prefix starts every key. Default "levee:idem:".
	Prefix string `yaml:"prefix"`
	// FlushDelay (store.redis only) is how long a Redis command may wait
	// for those of concurrent requests, to share one write and one read
	// with them. It applies only while other commands are outstanding (a
	// lone request never waits). Default 500µs; 0 writes every command at
	// once; at most 10ms.
	FlushDelay *Duration `yaml:"flush_delay"`
}

// DefaultRedisFlushDelay is store.redis.flush_delay's default: at 100
// concurrent requests on one core, 0 → 200µs → 500µs took an idempotent
// request from 139 to 107 to 92 µs of CPU (1ms: no better), at most
// 0.5 ms more per Redis call, and only under concurrency
// (docs/benchmarks.md).
const DefaultRedisFlushDelay = 500 * time.Microsecond

// PostgresConfig configures the PostgreSQL store.
type PostgresConfig struct {
	// URL is a libpq connection URL; use ${ENV} for the password.
	// Required when type is postgres.
	URL string `yaml:"url"`
	// Schema holds levee's tables. Default "levee".
	Schema string `yaml:"schema"`
}

// DynamoDBConfig configures the DynamoDB store.
type DynamoDBConfig struct {
	// Table is the table name. Required when type is dynamodb.
	Table string `yaml:"table"`
	// Region is the AWS region. Default: from the AWS environment.
	Region string `yaml:"region"`
	// Endpoint overrides the service URL (local emulators). Default none.
	Endpoint string `yaml:"endpoint"`
	// CreateTable creates the table at start if it is missing. Default false.
	CreateTable bool `yaml:"create_table"`
}

// ServerConfig bounds what clients can make levee do.
type ServerConfig struct {
	// ReadHeaderTimeout bounds reading request headers. Default 10s.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	// ReadTimeout bounds reading a whole request. Default 60s.
	ReadTimeout Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing a response. Default 120s.
	WriteTimeout Duration `yaml:"write_timeout"`
	// IdleTimeout closes idle keep-alive connections. Default 120s.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds request headers (431 above). Default 64KiB.
	MaxHeaderBytes ByteSize `yaml:"max_header_bytes"`
	// MaxBodyBytes bounds request bodies (413 above). Default 10MiB.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes"`
	// ShutdownTimeout bounds draining on SIGTERM. Default: the longest
	// route timeout + in_flight_wait + store_timeout, plus 5s, and at
	// least 30s. A smaller value is refused: a request cut off mid-flight
	// could leave its claim unrecorded, and its retry would run again.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// Engine serves the proxy listener: "levee" (default) is levee's own
	// HTTP/1.1 server, which serves common requests itself and hands any
	// connection it does not (HTTP/1.0, chunked or 100-continue uploads,
	// WebSocket upgrades, heads over 4 KiB, malformed requests) to Go's
	// net/http server; "net/http" serves every connection with net/http.
	Engine string `yaml:"engine"`
}

// The values of server.engine.
const (
	EngineLevee   = "levee"
	EngineNetHTTP = "net/http"
)

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// AccessLog writes one JSON line per request. Default true.
	AccessLog *bool `yaml:"access_log"`
}

// RouteConfig is one route.
type RouteConfig struct {
	// Name identifies the route in metrics, logs and idempotency scopes.
	// Required, unique.
	Name string `yaml:"name"`
	// Match selects requests.
	Match MatchConfig `yaml:"match"`
	// Upstream is the absolute http(s) URL requests are forwarded to; its
	// path, if any, prefixes the request path. Required.
	Upstream string `yaml:"upstream"`
	// Timeout bounds the whole upstream exchange. Default 30s.
	Timeout Duration `yaml:"timeout"`
	// Idempotency, when present, applies the idempotency contract.
	Idempotency *IdempotencyConfig `yaml:"idempotency"`
	// RateLimit lists policies applied to this route only, after the
	// global rate_limit.policies. Default none.
	RateLimit []PolicyConfig `yaml:"rate_limit"`

	upstream *url.URL
}

// RateLimitConfig configures rate limiting.
type RateLimitConfig struct {
	// Store is memory (default: limits per replica) or redis (shared by
	// every replica, exact).
	Store string `yaml:"store"`
	// Redis is the connection when Store is redis. Default: store.redis's
	// address and credentials, with prefix "levee:rl:".
	Redis RedisConfig `yaml:"redis"`
	// Timeout is how long a decision waits for a store that answers
	// nothing at all (a frozen or cut Redis); past it the policy's
	// on_store_error applies. A store that keeps answering other
	// decisions is slow, not down, and is waited for up to max_wait.
	// Default 250ms.
	Timeout Duration `yaml:"timeout"`
	// MaxWait bounds every decision however busy the store; past it that
	// one request gets its on_store_error. Default 1s, or Timeout if
	// longer.
	MaxWait Duration `yaml:"max_wait"`
	// StoreBackoff skips the store for this long once it is seen down (a
	// refused or reset connection, a silence of timeout, or 3 consecutive
	// failures), so an outage does not add Timeout to every request; then
	// one request at a time probes it. Default 1s.
	StoreBackoff Duration `yaml:"store_backoff"`
	// Replicas estimates how many gateways share the store: a fail_open
	// policy without a fallback enforces its limit divided by Replicas
	// on each replica during an outage. Default 1.
	Replicas int `yaml:"replicas"`
	// Connections is the Redis connection pool of the rate limiter, all
	// opened at start: size it for the concurrent requests one replica
	// serves, so a burst does not wait for dials. Default 256.
	Connections int `yaml:"connections"`
	// UnavailableRetryAfter is the Retry-After of fail_closed 503s.
	// Default 1s.
	UnavailableRetryAfter Duration `yaml:"unavailable_retry_after"`
	// ConcurrencyLease bounds how long a concurrency slot of a crashed
	// replica counts (Redis). Default 1m.
	ConcurrencyLease Duration `yaml:"concurrency_lease"`
	// Policies apply to every route.
	Policies []PolicyConfig `yaml:"policies"`
}

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

// IdempotencyConfig exposes the idempotency middleware's options. Each
// default is the library's (see idempotency.Options, HTTPOptions).
type IdempotencyConfig struct {
	// Enabled turns the block off without deleting it. Default true.
	Enabled *bool `yaml:"enabled"`
	// Header carrying the key. Default "Idempotency-Key".
	Header string `yaml:"header"`
	// Methods covered. Default [POST, PATCH].
	Methods []string `yaml:"methods"`
	// Required answers 400 to covered requests without a key. Default false.
	Required bool `yaml:"required"`
	// TenantHeader identifies the tenant (hashed, never stored in clear).
	TenantHeader string `yaml:"tenant_header"`
	// FingerprintHeaders also distinguish requests. Default none.
	FingerprintHeaders []string `yaml:"fingerprint_headers"`
	// Lease before a crashed holder's claim can be taken over. Default 30s.
	Lease Duration `yaml:"lease"`
	// Retention of stored responses. Default 24h.
	Retention Duration `yaml:"retention"`
	// InFlightWait makes duplicates wait and replay instead of 409.
	// Default 0 (answer 409 at once).
	InFlightWait Duration `yaml:"in_flight_wait"`
	// RetryAfter sent with 409 and 503. Default 1s.
	RetryAfter Duration `yaml:"retry_after"`
	// StoreTimeout bounds each store call. Default 5s.
	StoreTimeout Duration `yaml:"store_timeout"`
	// MaxRequestBody buffered for fingerprinting (413 above). Default 1MiB.
	MaxRequestBody ByteSize `yaml:"max_request_body"`
	// MaxStoredBody of responses stored for replay. Default 1MiB.
	MaxStoredBody ByteSize `yaml:"max_stored_body"`
	// StoredHeaders replayed. Default: idempotency.DefaultStoredHeaders.
	StoredHeaders []string `yaml:"stored_headers"`
	// FailOpen proxies unprotected when the store is down. Default false
	// (503 + Retry-After).
	FailOpen bool `yaml:"fail_open"`
	// StoreServerErrors stores 5xx responses too instead of releasing the
	// key. Default false.
	StoreServerErrors bool `yaml:"store_server_errors"`
}

func (c *IdempotencyConfig) enabled() bool {
	return c != nil && (c.Enabled == nil || *c.Enabled)
}

// Duration is a time.Duration written as "30s", "5m", "24h".
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q: want a number with a unit such as 500ms, 30s, 5m, 24h", n.Line, n.Value)
	}
	if v < 0 {
		return fmt.Errorf("line %d: negative duration %q", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in its text form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ByteSize is a size written as 1048576, "64KiB", "10MiB", "1MB", "2GiB".
type ByteSize int64

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = ByteSize(v)
	return nil
}

// MarshalYAML writes the size as a number of bytes.
func (b ByteSize) MarshalYAML() (any, error) { return int64(b), nil }

var byteUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1000, "mb": 1000 * 1000, "gb": 1000 * 1000 * 1000,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
	"k": 1 << 10, "m": 1 << 20, "g": 1 << 30,
}

// ParseByteSize parses a byte size: a non-negative integer with an
// optional unit B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB, K, M, G
// (powers of 1024).
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("invalid size %q: want a number of bytes with an optional unit (KiB, MiB, GiB, KB, MB, GB)", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q: %w", s, err)
	}
	mult, ok := byteUnits[strings.ToLower(strings.TrimSpace(t[i:]))]
	if !ok {
		return 0, fmt.Errorf("invalid size %q: unknown unit %q (use KiB, MiB, GiB, KB, MB or GB)", s, strings.TrimSpace(t[i:]))
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mult, nil
}

// ConfigError lists every problem found in a config file, each with the
// line and field it concerns.
type ConfigError struct {
	File     string
	Problems []Problem
}

// Problem is one config problem.
type Problem struct {
	Line  int    // 0 when unknown
	Field string // e.g. routes[0].upstream
	Msg   string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		if p.Field != "" {
			b.WriteString(p.Field)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

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
// config has every default filled in.
func Parse(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	cerr := &ConfigError{File: name}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		cerr.Problems = append(cerr.Problems, yamlProblem(err))
		return nil, cerr
	}
	if root.Kind == 0 || len(root.Content) == 0 || (len(bytes.TrimSpace(data)) == 0) {
		cerr.Problems = append(cerr.Problems, Problem{Msg: "the config is empty: it needs at least one route (see examples/levee.yaml)"})
		return nil, cerr
	}
	doc := root.Content[0]
	expandEnv(doc, lookupEnv, cerr)
	checkKnown(doc, reflect.TypeFor[Config](), "", cerr)
	if len(cerr.Problems) > 0 {
		return nil, cerr
	}
	var cfg Config
	if err := doc.Decode(&cfg); err != nil {
		cerr.Problems = append(cerr.Problems, yamlProblem(err))
		return nil, cerr
	}
	cfg.setDefaults()
	cfg.validate(doc, cerr)
	if len(cerr.Problems) > 0 {
		return nil, cerr
	}
	return &cfg, nil
}

// yamlProblem turns a yaml error ("yaml: line 3: ...") into Problems.
func yamlProblem(err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = strings.Join(te.Errors, "; ")
	}
	line := 0
	if strings.HasPrefix(msg, "line ") {
		rest := msg[5:]
		if j := strings.IndexByte(rest, ':'); j > 0 {
			if n, err := strconv.Atoi(rest[:j]); err == nil {
				line = n
				msg = strings.TrimSpace(rest[j+1:])
			}
		}
	}
	return Problem{Line: line, Msg: msg}
}

// expandEnv replaces ${VAR} and ${VAR:-default} in every scalar value.
func expandEnv(n *yaml.Node, lookup func(string) (string, bool), cerr *ConfigError) {
	switch n.Kind {
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		v, err := ExpandEnv(n.Value, lookup)
		if err != nil {
			cerr.Problems = append(cerr.Problems, Problem{Line: n.Line, Msg: err.Error()})
			return
		}
		n.Value = v
		if n.Style == 0 { // plain scalar: let YAML resolve the new value's type
			n.Tag = ""
		}
	default:
		for i, c := range n.Content {
			if n.Kind == yaml.MappingNode && i%2 == 0 {
				continue // keys are not expanded
			}
			expandEnv(c, lookup, cerr)
		}
	}
}

// ExpandEnv expands ${VAR} and ${VAR:-default} in s; $$ is a literal $.
// A variable that is unset and has no default is an error naming it.
func ExpandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 >= len(s) || s[i+1] != '{' {
			b.WriteByte('$')
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s)
		}
		expr := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			return "", fmt.Errorf("invalid environment variable name %q in ${%s}", name, expr)
		}
		v, ok := lookup(name)
		if !ok || (hasDef && v == "") {
			if !hasDef {
				return "", fmt.Errorf("environment variable %s is not set (use ${%s:-default} for a default)", name, name)
			}
			v = def
		}
		b.WriteString(v)
		i += 2 + end
	}
	return b.String(), nil
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// checkKnown reports mapping keys that match no field, with their lines.
func checkKnown(n *yaml.Node, t reflect.Type, path string, cerr *ConfigError) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return // Decode reports the type mismatch
		}
		fields := map[string]reflect.StructField{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" || !f.IsExported() {
				continue
			}
			fields[tag] = f
			names = append(names, tag)
		}
		sort.Strings(names)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			f, ok := fields[k.Value]
			if !ok {
				cerr.Problems = append(cerr.Problems, Problem{Line: k.Line, Field: joinPath(path, k.Value),
					Msg: fmt.Sprintf("unknown field (known fields here: %s)", strings.Join(names, ", "))})
				continue
			}
			checkKnown(n.Content[i+1], f.Type, joinPath(path, k.Value), cerr)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range n.Content {
			checkKnown(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), cerr)
		}
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// lineOf finds the line of a field path like routes[0].match.path in the
// document, falling back to the nearest existing parent.
func lineOf(doc *yaml.Node, path string) int {
	n := doc
	line := doc.Line
	for _, part := range strings.Split(path, ".") {
		name, idx := part, -1
		if j := strings.IndexByte(part, '['); j >= 0 {
			name = part[:j]
			idx, _ = strconv.Atoi(strings.TrimSuffix(part[j+1:], "]"))
		}
		next := (*yaml.Node)(nil)
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == name {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
		}
		if next == nil {
			return line
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = "127.0.0.1:9090"
	}
	if c.Store.Type == "" {
		c.Store.Type = "sqlite"
	}
	if c.Store.SQLite.Path == "" {
		c.Store.SQLite.Path = "levee.db"
	}
	if c.Store.Redis.Addr == "" {
		c.Store.Redis.Addr = "127.0.0.1:6379"
	}
	if c.Store.Redis.FlushDelay == nil {
		d := Duration(DefaultRedisFlushDelay)
		c.Store.Redis.FlushDelay = &d
	}
	if c.Store.Postgres.Schema == "" {
		c.Store.Postgres.Schema = "levee"
	}
	s := &c.Server
	def := func(d *Duration, v time.Duration) {
		if *d == 0 {
			*d = Duration(v)
		}
	}
	def(&s.ReadHeaderTimeout, 10*time.Second)
	def(&s.ReadTimeout, 60*time.Second)
	def(&s.WriteTimeout, 120*time.Second)
	def(&s.IdleTimeout, 120*time.Second)
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = 64 << 10
	}
	if s.MaxBodyBytes == 0 {
		s.MaxBodyBytes = 10 << 20
	}
	if s.Engine == "" {
		s.Engine = EngineLevee
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.AccessLog == nil {
		t := true
		c.Log.AccessLog = &t
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		def(&r.Timeout, 30*time.Second)
	}
	if s.ShutdownTimeout == 0 {
		s.ShutdownTimeout = Duration(max(c.drainNeeded()+5*time.Second, 30*time.Second))
	}
	rl := &c.RateLimit
	if rl.Store == "" {
		rl.Store = "memory"
	}
	if rl.Redis.Addr == "" {
		rl.Redis.Addr = c.Store.Redis.Addr
		if rl.Redis.Username == "" && rl.Redis.Password == "" {
			rl.Redis.Username, rl.Redis.Password = c.Store.Redis.Username, c.Store.Redis.Password
		}
	}
	if rl.Redis.Prefix == "" {
		rl.Redis.Prefix = "levee:rl:"
	}
	def(&rl.Timeout, ratelimit.DefaultTimeout)
	def(&rl.MaxWait, max(time.Second, rl.Timeout.D()))
	def(&rl.StoreBackoff, time.Second)
	if rl.Replicas == 0 {
		rl.Replicas = 1
	}
	if rl.Connections == 0 {
		rl.Connections = 256
	}
	def(&rl.UnavailableRetryAfter, time.Second)
	def(&rl.ConcurrencyLease, time.Minute)
}

var validMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}

func (c *Config) validate(doc *yaml.Node, cerr *ConfigError) {
	bad := func(field, format string, args ...any) {
		cerr.Problems = append(cerr.Problems, Problem{Line: lineOf(doc, field), Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Admin.Listen != "off" {
		if _, _, err := splitHostPort(c.Admin.Listen); err != nil {
			bad("admin.listen", "%v (or \"off\")", err)
		}
	}
	if _, _, err := splitHostPort(c.Listen); err != nil {
		bad("listen", "%v", err)
	}
	switch c.Store.Type {
	case "sqlite", "memory", "redis":
	case "postgres":
		if c.Store.Postgres.URL == "" {
			bad("store.postgres.url", "required when store.type is postgres")
		}
	case "dynamodb":
		if c.Store.DynamoDB.Table == "" {
			bad("store.dynamodb.table", "required when store.type is dynamodb")
		}
	default:
		bad("store.type", "unknown store %q (want sqlite, memory, redis, postgres or dynamodb)", c.Store.Type)
	}
	if d := c.Store.Redis.FlushDelay; d != nil && (*d < 0 || d.D() > 10*time.Millisecond) {
		bad("store.redis.flush_delay", "must be between 0 and 10ms, got %v", d.D())
	}
	if c.RateLimit.Redis.FlushDelay != nil {
		bad("rate_limit.redis.flush_delay", "applies to store.redis only (the rate limiter sends one command per decision)")
	}
	for i, cidr := range c.TrustedProxies {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			if a, aerr := netip.ParseAddr(cidr); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				bad(fmt.Sprintf("trusted_proxies[%d]", i), "invalid CIDR or address %q", cidr)
				continue
			}
		}
		c.trusted = append(c.trusted, p.Masked())
	}
	if e := c.Server.Engine; e != EngineLevee && e != EngineNetHTTP {
		bad("server.engine", "unknown engine %q (want %s or %s)", e, EngineLevee, EngineNetHTTP)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "unknown level %q (want debug, info, warn or error)", c.Log.Level)
	}
	if len(c.Routes) == 0 {
		bad("routes", "at least one route is required")
	}
	if need := c.drainNeeded(); c.Server.ShutdownTimeout.D() < need {
		bad("server.shutdown_timeout", "%v is shorter than the longest request can take (%v: route timeout + in_flight_wait + store_timeout); a request cut off at shutdown could run again on retry", c.Server.ShutdownTimeout.D(), need)
	}
	switch c.RateLimit.Store {
	case "memory", "redis":
	default:
		bad("rate_limit.store", "unknown rate-limit store %q (want memory or redis)", c.RateLimit.Store)
	}
	policyNames := map[string]string{}
	if c.RateLimit.Replicas < 1 {
		bad("rate_limit.replicas", "must be at least 1")
	}
	if n := c.RateLimit.Connections; n < 1 || n > 10000 {
		bad("rate_limit.connections", "must be between 1 and 10000, got %d", n)
	}
	if c.RateLimit.MaxWait < c.RateLimit.Timeout {
		bad("rate_limit.max_wait", "must be at least rate_limit.timeout (%v)", c.RateLimit.Timeout.D())
	}
	for i := range c.RateLimit.Policies {
		c.validatePolicy(&c.RateLimit.Policies[i], fmt.Sprintf("rate_limit.policies[%d]", i), "", policyNames, bad)
	}
	names := map[string]int{}
	for i := range c.Routes {
		r := &c.Routes[i]
		p := fmt.Sprintf("routes[%d]", i)
		if r.Name == "" {
			bad(p+".name", "required")
		} else if j, dup := names[r.Name]; dup {
			bad(p+".name", "duplicate route name %q (also routes[%d])", r.Name, j)
		} else {
			names[r.Name] = i
		}
		m := r.Match
		switch {
		case m.Path == "" && m.PathPrefix == "":
			bad(p+".match", "one of path or path_prefix is required")
		case m.Path != "" && m.PathPrefix != "":
			bad(p+".match", "path and path_prefix are exclusive")
		case m.Path != "" && !strings.HasPrefix(m.Path, "/"):
			bad(p+".match.path", "must start with /, got %q", m.Path)
		case m.PathPrefix != "" && !strings.HasPrefix(m.PathPrefix, "/"):
			bad(p+".match.path_prefix", "must start with /, got %q", m.PathPrefix)
		case m.Path != "" && cleanPath(m.Path) != m.Path:
			bad(p+".match.path", "%q is not a clean path (requests are matched after removing dot segments and duplicate slashes): use %q", m.Path, cleanPath(m.Path))
		case m.PathPrefix != "" && cleanPath(m.PathPrefix) != m.PathPrefix:
			bad(p+".match.path_prefix", "%q is not a clean path (requests are matched after removing dot segments and duplicate slashes): use %q", m.PathPrefix, cleanPath(m.PathPrefix))
		}
		if strings.Contains(m.Host, ":") {
			bad(p+".match.host", "%q: give the host without a port (the request's port is ignored when matching)", m.Host)
		}
		for j, meth := range m.Methods {
			if !slices.Contains(validMethods, strings.ToUpper(meth)) {
				bad(fmt.Sprintf("%s.match.methods[%d]", p, j), "unknown method %q", meth)
			}
			r.Match.Methods[j] = strings.ToUpper(meth)
		}
		u, err := url.Parse(r.Upstream)
		switch {
		case r.Upstream == "":
			bad(p+".upstream", "required: the URL requests are forwarded to, e.g. http://127.0.0.1:3000")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad(p+".upstream", "must be an absolute http or https URL, got %q", r.Upstream)
		case u.RawQuery != "" || u.Fragment != "":
			bad(p+".upstream", "must not have a query or fragment, got %q", r.Upstream)
		case u.User != nil:
			bad(p+".upstream", "must not carry credentials (user:password@): they would not be sent; set an Authorization header upstream-side instead")
		default:
			r.upstream = u
		}
		for j := range r.RateLimit {
			c.validatePolicy(&r.RateLimit[j], fmt.Sprintf("%s.rate_limit[%d]", p, j), r.Name, policyNames, bad)
		}
		if idc := r.Idempotency; idc != nil {
			for j, meth := range idc.Methods {
				up := strings.ToUpper(meth)
				if up == "GET" || up == "HEAD" || up == "OPTIONS" {
					bad(fmt.Sprintf("%s.idempotency.methods[%d]", p, j), "%s is safe and never stored", up)
				} else if !slices.Contains(validMethods, up) {
					bad(fmt.Sprintf("%s.idempotency.methods[%d]", p, j), "unknown method %q", meth)
				}
				idc.Methods[j] = up
			}
			if idc.Lease > 0 && idc.Retention > 0 && idc.Retention < idc.Lease {
				bad(p+".idempotency.retention", "must be at least the lease (%v)", idc.Lease.D())
			}
		}
	}
}

// drainNeeded is the longest a request can take once accepted: its route
// timeout, the in-flight wait, and a store call to record its outcome.
func (c *Config) drainNeeded() time.Duration {
	var need time.Duration
	for i := range c.Routes {
		r := &c.Routes[i]
		d := r.Timeout.D()
		if idc := r.Idempotency; idc.enabled() {
			st := idc.StoreTimeout.D()
			if st == 0 {
				st = 5 * time.Second
			}
			d += idc.InFlightWait.D() + st
		}
		need = max(need, d)
	}
	return need
}

// validatePolicy parses one policy, recording problems with bad. Names
// are unique across the file because state is keyed by name.
func (c *Config) validatePolicy(pc *PolicyConfig, path, route string, seen map[string]string, bad func(string, string, ...any)) {
	if pc.Name == "" {
		bad(path+".name", "required")
	} else if prev, dup := seen[pc.Name]; dup {
		bad(path+".name", "duplicate policy name %q (also %s): names key the limit's state and must be unique", pc.Name, prev)
	} else {
		seen[pc.Name] = path
	}
	if pc.Limit == "" {
		bad(path+".limit", "required, e.g. \"100/s burst 200\", \"1000/hour\" or \"concurrency 50\"")
	} else if pol, err := ratelimit.ParsePolicy(pc.Limit); err != nil {
		bad(path+".limit", "%v", err)
	} else {
		pol.Name = pc.Name
		pc.policy = pol
	}
	if pc.TimeZone != "" {
		if loc, err := time.LoadLocation(pc.TimeZone); err != nil {
			bad(path+".time_zone", "unknown time zone %q: %v", pc.TimeZone, err)
		} else if pc.policy.Name != "" && pc.policy.Kind != ratelimit.KindCalendar {
			bad(path+".time_zone", "applies to calendar quotas only (e.g. \"10000/month\", \"100/day calendar\"), not %q", pc.Limit)
		} else {
			pc.policy.Location = loc
		}
	}
	if pc.Key == "" {
		pc.Key = "ip"
	}
	if _, err := ratelimit.ParseKey(pc.Key, ratelimit.KeyEnv{Route: "x"}); err != nil {
		bad(path+".key", "%v", err)
	}
	if pc.Cost < 0 {
		bad(path+".cost", "must not be negative")
	}
	mode := pc.OnStoreError
	if mode == "" {
		mode = "fail_open"
	}
	if m, err := ratelimit.ParseFailureMode(mode); err != nil {
		bad(path+".on_store_error", "%v", err)
	} else {
		pc.mode = m
	}
	if pc.Fallback != "" {
		if fb, err := ratelimit.ParsePolicy(pc.Fallback); err != nil {
			bad(path+".fallback", "%v", err)
		} else if pc.policy.Name != "" && fb.Kind != pc.policy.Kind {
			bad(path+".fallback", "must be the same kind of limit as %q", pc.Limit)
		} else {
			fb.Location = pc.policy.Location
			pc.fallback = fb
		}
	}
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

// redactDSN masks the password of a PostgreSQL URL (user:pass@ and
// ?password=) or keyword/value DSN (password=...).
func redactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	if !strings.Contains(dsn, "://") {
		return dsnPassword.ReplaceAllString(dsn, "${1}REDACTED")
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "REDACTED (unparseable URL)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "REDACTED")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Redacted returns a copy of c safe to show: secrets are replaced by
// "REDACTED" and passwords in URLs are masked.
func (c *Config) Redacted() Config {
	out := *c
	if out.Store.Redis.Password != "" {
		out.Store.Redis.Password = "REDACTED"
	}
	if out.RateLimit.Redis.Password != "" {
		out.RateLimit.Redis.Password = "REDACTED"
	}
	out.Store.Postgres.URL = redactDSN(out.Store.Postgres.URL)
	return out
}
