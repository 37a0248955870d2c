package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/leveehq/levee/internal/config"
)

// ErrConfig is wrapped by every error of ParseConfig and Validate.
var ErrConfig = errors.New("chaos: invalid config")

// Config is a fault plan: the faults, tried in order for each request,
// and the seed of their random draws. Its YAML form:
//
//	seed: 42
//	faults:
//	  - name: slow-payments
//	    match: {methods: [POST], path_prefix: /v1/pay}
//	    probability: 0.2
//	    latency: 200ms
//	    jitter: 100ms
//	  - name: outage
//	    from: 10s
//	    until: 40s
//	    status: 503
//	    retry_after: 5s
type Config struct {
	// Seed makes the random draws reproducible: the n-th request the
	// injector sees gets the same draws under the same seed. Default 1.
	Seed int64 `yaml:"seed" json:"seed"`
	// Faults are tried in order; the first that matches a request and
	// fires is applied, alone.
	Faults []Fault `yaml:"faults" json:"faults"`
}

// Fault is one kind of misbehaviour and the requests it applies to.
// Effects combine: latency, then one of status, hang or a reset before
// sending; then, on the upstream's response, a reset during or after it,
// a truncated or a slow body; duplicate delivery sends the request to the
// upstream more than once.
type Fault struct {
	// Name identifies the fault in logs, counters and the control API
	// (required, unique).
	Name string `yaml:"name" json:"name"`
	// Match selects requests; the zero Match selects all.
	Match Match `yaml:"match,omitempty" json:"match,omitempty"`
	// Probability that a matching request gets the fault: 0 to 1, default
	// 1. Drawn from the seed.
	Probability *float64 `yaml:"probability,omitempty" json:"probability,omitempty"`
	// Header, when set, limits the fault to requests carrying that
	// header: "X-Chaos" (present) or "X-Chaos: outage" (with that value).
	// The header is removed before the request is forwarded.
	Header string `yaml:"header,omitempty" json:"header,omitempty"`
	// From and Until schedule the fault, as offsets from the start of
	// the run (or the last config change through the control API); zero
	// Until means no end.
	From  config.Duration `yaml:"from,omitempty" json:"from,omitempty"`
	Until config.Duration `yaml:"until,omitempty" json:"until,omitempty"`
	// Latency delays the request before it is forwarded, plus a uniform
	// random extra of up to Jitter.
	Latency config.Duration `yaml:"latency,omitempty" json:"latency,omitempty"`
	Jitter  config.Duration `yaml:"jitter,omitempty" json:"jitter,omitempty"`
	// Status answers with this status instead of forwarding (e.g. 503,
	// or 429 for a storm), with Body (default a short text).
	Status int    `yaml:"status,omitempty" json:"status,omitempty"`
	Body   string `yaml:"body,omitempty" json:"body,omitempty"`
	// RetryAfter adds Retry-After to a Status answer, as delay-seconds
	// (rounded up), or as an HTTP-date when RetryAfterDate is set.
	RetryAfter     config.Duration `yaml:"retry_after,omitempty" json:"retry_after,omitempty"`
	RetryAfterDate bool            `yaml:"retry_after_date,omitempty" json:"retry_after_date,omitempty"`
	// Hang holds the request this long without forwarding it, then drops
	// the connection (the caller's timeout usually fires first).
	Hang config.Duration `yaml:"hang,omitempty" json:"hang,omitempty"`
	// Reset drops the connection with a TCP reset: "before" the request
	// is forwarded (the upstream never sees it), "during" the response
	// (after the headers and half the body), or "after" the upstream
	// answered (it acted, the caller never learns the outcome).
	Reset string `yaml:"reset,omitempty" json:"reset,omitempty"`
	// Truncate cuts the response body after this many bytes, keeping
	// the original Content-Length, then closes the connection.
	Truncate config.ByteSize `yaml:"truncate,omitempty" json:"truncate,omitempty"`
	// SlowBody sends the response body at this many bytes per second.
	SlowBody config.ByteSize `yaml:"slow_body,omitempty" json:"slow_body,omitempty"`
	// Duplicate delivers the request to the upstream this many extra
	// times (at-least-once delivery); the caller gets the first answer.
	// DuplicateConcurrent sends the copies at the same time as the
	// original instead of after it.
	Duplicate           int  `yaml:"duplicate,omitempty" json:"duplicate,omitempty"`
	DuplicateConcurrent bool `yaml:"duplicate_concurrent,omitempty" json:"duplicate_concurrent,omitempty"`
}

// Match selects requests by method and path.
type Match struct {
	// Methods lists the methods (any when empty).
	Methods []string `yaml:"methods,omitempty" json:"methods,omitempty"`
	// Path matches this path exactly.
	Path string `yaml:"path,omitempty" json:"path,omitempty"`
	// PathPrefix matches this path and those below it on a segment
	// boundary.
	PathPrefix string `yaml:"path_prefix,omitempty" json:"path_prefix,omitempty"`
}

func (m Match) matches(r *http.Request) bool {
	if len(m.Methods) > 0 {
		ok := false
		for _, v := range m.Methods {
			ok = ok || strings.EqualFold(v, r.Method)
		}
		if !ok {
			return false
		}
	}
	p := r.URL.Path
	if m.Path != "" && p != m.Path {
		return false
	}
	if pre := m.PathPrefix; pre != "" {
		if !strings.HasPrefix(p, pre) {
			return false
		}
		if !strings.HasSuffix(pre, "/") && len(p) > len(pre) && p[len(pre)] != '/' {
			return false
		}
	}
	return true
}

// Defaults implements config.Section: Seed 1.
func (c *Config) Defaults() {
	if c.Seed == 0 {
		c.Seed = 1
	}
}

// Validate implements config.Section, naming every bad field.
func (c *Config) Validate(r *config.Report, path string) {
	seen := map[string]bool{}
	for i := range c.Faults {
		f := &c.Faults[i]
		p := config.Join(path, fmt.Sprintf("faults[%d]", i))
		switch {
		case f.Name == "":
			r.Bad(config.Join(p, "name"), "required")
		case seen[f.Name]:
			r.Bad(config.Join(p, "name"), "duplicate fault name %q", f.Name)
		}
		seen[f.Name] = true
		if f.Probability != nil && (*f.Probability < 0 || *f.Probability > 1) {
			r.Bad(config.Join(p, "probability"), "%v is not between 0 and 1", *f.Probability)
		}
		if f.Header != "" {
			name, _, _ := strings.Cut(f.Header, ":")
			if strings.TrimSpace(name) == "" || strings.ContainsAny(strings.TrimSpace(name), " \t") {
				r.Bad(config.Join(p, "header"), "want \"Name\" or \"Name: value\", got %q", f.Header)
			}
		}
		if f.Until != 0 && f.Until <= f.From {
			r.Bad(config.Join(p, "until"), "%s is not after from (%s)", f.Until.D(), f.From.D())
		}
		if f.Status != 0 && (f.Status < 100 || f.Status > 599) {
			r.Bad(config.Join(p, "status"), "%d is not an HTTP status", f.Status)
		}
		if f.RetryAfter != 0 && f.Status == 0 {
			r.Bad(config.Join(p, "retry_after"), "needs a status")
		}
		switch f.Reset {
		case "", "before", "during", "after":
		default:
			r.Bad(config.Join(p, "reset"), "%q: want before, during or after", f.Reset)
		}
		terminal := 0
		for _, on := range []bool{f.Status != 0, f.Hang != 0, f.Reset == "before"} {
			if on {
				terminal++
			}
		}
		if terminal > 1 {
			r.Bad(p, "status, hang and reset: before exclude each other")
		}
		if terminal > 0 && (f.Reset == "during" || f.Reset == "after" || f.Truncate != 0 || f.SlowBody != 0 || f.Duplicate != 0) {
			r.Bad(p, "a fault that never forwards (status, hang, reset: before) cannot also change the upstream's response or duplicate the request")
		}
		if f.Duplicate < 0 || f.Duplicate > 10 {
			r.Bad(config.Join(p, "duplicate"), "%d: want 0 to 10", f.Duplicate)
		}
		if f.Hang > config.Duration(10*time.Minute) {
			r.Bad(config.Join(p, "hang"), "at most 10m")
		}
		for _, m := range f.Match.Methods {
			if m == "" || strings.ContainsAny(m, " \t/") {
				r.Bad(config.Join(p, "match.methods"), "%q is not a method", m)
			}
		}
		for k, v := range map[string]string{"path": f.Match.Path, "path_prefix": f.Match.PathPrefix} {
			if v != "" && !strings.HasPrefix(v, "/") {
				r.Bad(config.Join(p, "match."+k), "%q does not start with /", v)
			}
		}
	}
}

// ParseConfig parses a fault plan from YAML (name is the file name used
// in errors). Decoding is strict: unknown fields and wrong types are
// refused; ${VAR} is expanded from the environment. An empty document is
// the empty plan. The error wraps ErrConfig and lists every problem as
// file:line: field: message.
func ParseConfig(name string, data []byte) (*Config, error) {
	c := &Config{}
	if len(bytes.TrimSpace(data)) == 0 {
		c.Defaults()
		return c, nil
	}
	if err := config.Load(name, data, os.LookupEnv, c); err != nil {
		return nil, fmt.Errorf("%w:\n%w", ErrConfig, err)
	}
	return c, nil
}

// validate checks a Config built in code, as ParseConfig checks a file.
// The error wraps ErrConfig.
func (c *Config) validate() error {
	r := config.NewReport(nil)
	c.Validate(r, "")
	if ps := r.Problems(); len(ps) > 0 {
		return fmt.Errorf("%w:\n%w", ErrConfig, &config.Error{File: "config", Problems: ps})
	}
	return nil
}
