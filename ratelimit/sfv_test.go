package ratelimit_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dunglas/httpsfv"

	"github.com/leveehq/levee/ratelimit"
)

// emitted is one response's rate-limit fields.
type emitted struct {
	Status     int    `json:"status"`
	Policy     string `json:"policy"`
	State      string `json:"state"`
	RetryAfter string `json:"retry_after"`
}

// emittedHeaders drives the middleware through every kind of response
// levee sends (allowed, denied, a cost above the burst, concurrency,
// calendar quotas, the fail-open fallback) and SetHeaders through random
// policies and states, and returns every set of fields produced.
func emittedHeaders(t *testing.T) []emitted {
	t.Helper()
	var out []emitted
	nyc, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	monthly := mustPolicy(t, "monthly", "3/month")
	monthly.Location = nyc
	rules := []ratelimit.Rule{
		{Policy: mustPolicy(t, "big", "1000/s burst 2000"), Key: ratelimit.Header("X-Big")},
		{Policy: mustPolicy(t, "slow", "1/m burst 5"), Key: ratelimit.Header("X-Slow"), Cost: func(r *http.Request) int64 {
			n, _ := strconv.ParseInt(r.Header.Get("X-Cost"), 10, 64)
			return max(n, 1)
		}},
		{Policy: mustPolicy(t, "daily", "5000/day"), Key: ratelimit.Header("X-Daily")},
		{Policy: monthly, Key: ratelimit.Header("X-Monthly")},
		{Policy: mustPolicy(t, "inflight", "concurrency 2"), Key: ratelimit.Header("X-Conc")},
	}
	for _, store := range []ratelimit.Store{nil, failingStore{errors.New("connection refused")}} {
		f := newFixture(t, ratelimit.Options{Rules: rules, Store: store, Replicas: 3})
		for _, hdr := range []string{"X-Big", "X-Slow", "X-Daily", "X-Monthly", "X-Conc"} {
			for i := range 8 {
				mods := []func(*http.Request){withHeader(hdr, "k")}
				if i == 7 {
					mods = append(mods, withHeader("X-Cost", "9")) // above every burst but big's
				}
				w := f.do(mods...)
				out = append(out, emitted{w.Code, w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"), w.Header().Get("Retry-After")})
				f.clock.Advance(700 * time.Millisecond)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	specs := []string{"1/s", "7/m burst 1", "100/s burst 200", "1000/hour", "5000/day", "3/10s burst 40", "10000/month", "5/week", "9/day calendar", "concurrency 9"}
	for range 300 {
		p := mustPolicy(t, "p"+strconv.Itoa(rng.IntN(100)), specs[rng.IntN(len(specs))])
		b := p.EffectiveBurst()
		if p.Kind == ratelimit.KindConcurrency {
			b = p.Limit
		}
		r := ratelimit.Result{Allowed: rng.IntN(2) == 0, Remaining: rng.Int64N(b + 1)}
		if p.Kind == ratelimit.KindCalendar {
			r.Window = time.Duration(28+rng.IntN(4)) * 24 * time.Hour
			r.ResetAfter = time.Duration(rng.Int64N(int64(r.Window)))
		} else if p.Kind == ratelimit.KindRate {
			// A consistent GCRA state: Remaining units left means the TAT
			// is at most (b − Remaining) intervals ahead.
			owed := time.Duration(b-r.Remaining) * p.Interval()
			r.ResetAfter = owed - time.Duration(rng.Int64N(int64(p.Interval())))
		}
		h := http.Header{}
		ratelimit.SetHeaders(h, p, r)
		out = append(out, emitted{200, h.Get("RateLimit-Policy"), h.Get("RateLimit"), ""})
	}
	return out
}

// Every field levee emits parses with github.com/dunglas/httpsfv as an
// RFC 9651 List of one Item with a String name, Integer q, w, r, t, and
// is consistent: r ≤ q, t ≤ w, and on a 429 Retry-After ≥ t.
func TestFieldsParseWithHTTPSFV(t *testing.T) {
	t.Parallel()
	for _, e := range emittedHeaders(t) {
		if e.Policy == "" {
			if e.Status != http.StatusServiceUnavailable {
				t.Fatalf("a decided response without fields: %+v", e)
			}
			continue
		}
		pol, err := httpsfv.UnmarshalList([]string{e.Policy})
		if err != nil || len(pol) != 1 {
			t.Fatalf("RateLimit-Policy %q: %v", e.Policy, err)
		}
		st, err := httpsfv.UnmarshalList([]string{e.State})
		if err != nil || len(st) != 1 {
			t.Fatalf("RateLimit %q: %v", e.State, err)
		}
		pi, si := pol[0].(httpsfv.Item), st[0].(httpsfv.Item)
		if pi.Value.(string) != si.Value.(string) {
			t.Fatalf("names differ: %q / %q", e.Policy, e.State)
		}
		q, _ := pi.Params.Get("q")
		r, _ := si.Params.Get("r")
		if q.(int64) < 0 || r.(int64) < 0 || r.(int64) > q.(int64) {
			t.Fatalf("r > q or negative: %q / %q", e.Policy, e.State)
		}
		w, hasW := pi.Params.Get("w")
		tt, hasT := si.Params.Get("t")
		if hasW != hasT {
			t.Fatalf("w without t or t without w: %q / %q", e.Policy, e.State)
		}
		if hasT && (tt.(int64) < 0 || w.(int64) < 1 || tt.(int64) > w.(int64)) {
			t.Fatalf("t > w: %q / %q", e.Policy, e.State)
		}
		if e.Status == http.StatusTooManyRequests && e.RetryAfter != "" {
			ra, err := strconv.ParseInt(e.RetryAfter, 10, 64)
			if err != nil || (hasT && ra < tt.(int64)) {
				t.Fatalf("Retry-After %q earlier than t: %q", e.RetryAfter, e.State)
			}
		}
	}
}

const nodeParse = `
const sf = require(process.env.SFV_MODULE);
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = input.map(v => {
  try {
    return sf.parseList(v).map(([name, params]) => ({name: String(name), params: Object.fromEntries(params)}));
  } catch (e) { return {error: String(e), value: v}; }
});
process.stdout.write(JSON.stringify(out));
`

// The same fields parse with the npm structured-headers package (a second,
// independent RFC 9651 implementation) to the same names and numbers. It
// needs node; scripts/test installs the package into .cache/.
func TestFieldsParseWithNodeStructuredHeaders(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	mod := os.Getenv("LEVEE_STRUCTURED_HEADERS")
	if mod == "" {
		mod, _ = filepath.Abs("../.cache/structured-headers/node_modules/structured-headers/cjs/index.cjs")
	}
	if _, err := os.Stat(mod); err != nil {
		msg := "the npm structured-headers package is not installed (scripts/test installs it into .cache/structured-headers): " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var values []string
	for _, e := range emittedHeaders(t) {
		if e.Policy != "" {
			values = append(values, e.Policy, e.State)
		}
	}
	in, _ := json.Marshal(values)
	cmd := exec.Command(node, "-e", nodeParse)
	cmd.Env = append(os.Environ(), "SFV_MODULE="+mod)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v: %s", err, stderr.String())
	}
	var parsed []json.RawMessage
	if err := json.Unmarshal(outb, &parsed); err != nil || len(parsed) != len(values) {
		t.Fatalf("node output (%d for %d values): %v %s", len(parsed), len(values), err, outb)
	}
	for i, raw := range parsed {
		var items []struct {
			Name   string           `json:"name"`
			Params map[string]any   `json:"params"`
			Error  *json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(raw, &items); err != nil || len(items) != 1 {
			t.Fatalf("structured-headers refused %q: %s", values[i], raw)
		}
		goItems, err := httpsfv.UnmarshalList([]string{values[i]})
		if err != nil {
			t.Fatal(err)
		}
		gi := goItems[0].(httpsfv.Item)
		if items[0].Name != gi.Value.(string) {
			t.Fatalf("%q: names differ: node %q, httpsfv %q", values[i], items[0].Name, gi.Value)
		}
		for _, k := range gi.Params.Names() {
			v, _ := gi.Params.Get(k)
			nv, ok := items[0].Params[k]
			switch v := v.(type) {
			case int64:
				if f, isNum := nv.(float64); !ok || !isNum || int64(f) != v {
					t.Fatalf("%q: %s = %v in node, %v in httpsfv", values[i], k, nv, v)
				}
			case string:
				if s, isStr := nv.(string); !ok || !isStr || s != v {
					t.Fatalf("%q: %s = %v in node, %v in httpsfv", values[i], k, nv, v)
				}
			}
		}
	}
}
