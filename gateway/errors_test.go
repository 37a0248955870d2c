package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v82"
)

func exampleTemplate(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "examples", "errors", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleErrorTemplatesRenderEveryProblem(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"stripe.json.tmpl", "google.json.tmpl"} {
		y := fmt.Sprintf("errors: {format: template, template_file: %q}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n    errors: {format: template, template_file: %q}\n",
			exampleTemplate(t, name), exampleTemplate(t, name))
		if _, err := parseString(y); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestErrorTemplateProblemsNameTheLine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.tmpl")
	if err := os.WriteFile(bad, []byte("{\n\"a\": {{json .Title}},\n\"b\": {{if}}\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, errors, want string }{
		{"parse error in an inline block", "errors:\n  format: template\n  template: |\n    {\"a\": {{json .Title}},\n     \"b\": {{end}}}\n",
			"x.yaml:5: errors.template: unexpected {{end}}"},
		{"parse error in a file", fmt.Sprintf("errors: {format: template, template_file: %q}\n", bad),
			"x.yaml:1: errors.template_file: " + bad + ":3: missing value for if"},
		{"invalid JSON", "errors:\n  format: template\n  template: '{\"title\": {{.Title}}}'\n",
			"x.yaml:3: errors.template: renders invalid JSON for a idempotency-key-missing problem (use {{json .Field}} to encode values)"},
		{"unknown field", "errors:\n  format: template\n  template: |\n    {\"a\": {{json .Nope}}}\n",
			"x.yaml:4: errors.template: executing \"template\" at <.Nope>: can't evaluate field Nope"},
		{"unknown format", "errors: {format: xml}\n", "x.yaml:1: errors.format: unknown format \"xml\""},
		{"template without format", "errors: {template: '{}'}\n", "errors.format: template, template_file and content_type need format: template"},
		{"missing file", "errors: {format: template, template_file: /nonexistent.tmpl}\n", "errors.template_file: open /nonexistent.tmpl"},
	} {
		_, err := parseString(tc.errors + "routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v\nwant %q", tc.name, err, tc.want)
		}
	}
}

// stripeUpstream answers POST /v1/charges like Stripe. A charge whose
// description is "slow" is held until release is closed; arrived is
// closed when one has arrived (GET /arrived answers "yes" from then on).
type stripeUpstream struct {
	srv     *httptest.Server
	release chan struct{}
	arrived chan struct{}
	once    sync.Once
	once2   sync.Once
	mu      sync.Mutex
	charges int
}

func newStripeUpstream(t *testing.T) *stripeUpstream {
	su := &stripeUpstream{release: make(chan struct{}), arrived: make(chan struct{})}
	su.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/release":
			su.once.Do(func() { close(su.release) })
			return
		case "/arrived":
			select {
			case <-su.arrived:
				fmt.Fprint(w, "yes")
			default:
				fmt.Fprint(w, "no")
			}
			return
		}
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		if r.PostForm.Get("description") == "slow" {
			su.once2.Do(func() { close(su.arrived) })
			select {
			case <-su.release:
			case <-time.After(10 * time.Second):
			}
		}
		su.mu.Lock()
		su.charges++
		n := su.charges
		su.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Request-Id", fmt.Sprintf("req_%d", n))
		fmt.Fprintf(w, `{"id":"ch_%d","object":"charge","amount":%s,"currency":"usd","status":"succeeded"}`, n, r.PostForm.Get("amount"))
	}))
	t.Cleanup(func() { su.once.Do(func() { close(su.release) }); su.srv.Close() })
	return su
}

func stripeGatewayConfig(t *testing.T, upstream string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
store: {type: memory}
routes:
  - name: charges
    match: {path_prefix: /v1/charges}
    upstream: %s
    idempotency: {required: true, tenant_header: Authorization}
    rate_limit:
      - {name: charges-per-key, limit: 4/hour burst 4, key: "header:Authorization"}
    errors: {format: template, template_file: %q}
  - name: other
    match: {path_prefix: /}
    upstream: %s
    idempotency: {required: true}
`, upstream, exampleTemplate(t, "stripe.json.tmpl"), upstream)
}

func TestStripeEnvelopeWithStripeGo(t *testing.T) {
	t.Parallel()
	su := newStripeUpstream(t)
	g := startGateway(t, stripeGatewayConfig(t, su.srv.URL))
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL: stripe.String(g.base), MaxNetworkRetries: stripe.Int64(0), LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}})
	sc := stripe.NewClient("sk_test_levee", stripe.WithBackends(&stripe.Backends{API: backend, Connect: backend, Uploads: backend, MeterEvents: backend}))
	ctx := context.Background()
	create := func(key string, amount int64, desc string) (*stripe.Charge, error) {
		p := &stripe.ChargeCreateParams{Amount: stripe.Int64(amount), Currency: stripe.String("usd")}
		if desc != "" {
			p.Description = stripe.String(desc)
		}
		p.SetIdempotencyKey(key)
		return sc.V1Charges.Create(ctx, p)
	}
	stripeErr := func(err error) *stripe.Error {
		t.Helper()
		var se *stripe.Error
		if !errors.As(err, &se) {
			t.Fatalf("err = %v (%T), want *stripe.Error", err, err)
		}
		return se
	}

	ch, err := create("order-1", 100, "")
	if err != nil || ch.ID != "ch_1" {
		t.Fatalf("first charge: %+v %v", ch, err)
	}
	// The same key with another amount: 422, Stripe's idempotency error.
	_, err = create("order-1", 200, "")
	if se := stripeErr(err); se.HTTPStatusCode != 422 || se.Type != stripe.ErrorTypeIdempotency || !strings.Contains(se.DocURL, "#idempotency-key-mismatch") {
		t.Fatalf("key reuse: %+v", se)
	}
	// A duplicate while the first is in flight: 409 idempotency_key_in_use.
	done := make(chan error, 1)
	go func() { _, err := create("order-2", 300, "slow"); done <- err }()
	<-su.arrived // the first holds its claim and is at the upstream
	_, err = create("order-2", 300, "slow")
	se := stripeErr(err)
	if se.HTTPStatusCode != 409 || se.Code != "idempotency_key_in_use" || se.Type != stripe.ErrorTypeInvalidRequest {
		t.Fatalf("in flight: %+v", se)
	}
	su.once.Do(func() { close(su.release) })
	if err := <-done; err != nil {
		t.Fatalf("slow charge: %v", err)
	}
	// The fifth request of the hour: 429 with Retry-After.
	_, err = create("order-3", 400, "")
	se = stripeErr(err)
	if se.HTTPStatusCode != 429 || se.Code != "rate_limit" || se.LastResponse == nil || se.LastResponse.Header.Get("Retry-After") == "" || se.LastResponse.Header.Get("X-Request-Id") == "" {
		t.Fatalf("rate limited: %+v", se)
	}
	if ct := se.LastResponse.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	if su.charges != 2 { // the slow one finished: no data race

		t.Fatalf("%d charges reached the upstream, want 2", su.charges)
	}
	// Routes without an errors block keep problem+json.
	resp, body := send(t, "POST", g.base+"/v1/other", "{}")
	if typ, _ := problemOf(t, resp, body); typ != "idempotency-key-missing" {
		t.Fatalf("other route: %s", typ)
	}
}

// TestStripeEnvelopeWithStripeNode runs the official stripe npm package
// against the gateway (installed by scripts/test into .cache/stripe-node).
func TestStripeEnvelopeWithStripeNode(t *testing.T) {
	t.Parallel()
	mods := os.Getenv("LEVEE_STRIPE_NODE")
	if mods == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("LEVEE_STRIPE_NODE is not set: scripts/test installs the stripe npm package into .cache/stripe-node")
		}
		t.Skip("LEVEE_STRIPE_NODE not set (run ./scripts/test, which installs the stripe npm package)")
	}
	su := newStripeUpstream(t)
	g := startGateway(t, stripeGatewayConfig(t, su.srv.URL))
	u, _ := url.Parse(g.base)
	script := filepath.Join(t.TempDir(), "stripe.js")
	if err := os.WriteFile(script, []byte(stripeNodeScript), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Env = append(os.Environ(), "NODE_PATH="+mods, "GW_HOST="+u.Hostname(), "GW_PORT="+u.Port(), "UPSTREAM="+su.srv.URL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got map[string]struct {
		OK         bool   `json:"ok"`
		Class      string `json:"class"`
		StatusCode int    `json:"statusCode"`
		Code       string `json:"code"`
		ID         string `json:"id"`
	}
	if err := json.Unmarshal(out[strings.LastIndexByte(strings.TrimSpace(string(out)), '\n')+1:], &got); err != nil {
		t.Fatalf("node output: %v\n%s", err, out)
	}
	for step, want := range map[string]struct {
		ok         bool
		class      string
		statusCode int
	}{
		"first":    {true, "", 0},
		"reuse":    {false, "StripeIdempotencyError", 422},
		"inflight": {false, "StripeInvalidRequestError", 409},
		"slow":     {true, "", 0},
		"limited":  {false, "StripeRateLimitError", 429},
	} {
		r := got[step]
		if r.OK != want.ok || r.Class != want.class || r.StatusCode != want.statusCode {
			t.Errorf("%s: %+v, want %+v", step, r, want)
		}
	}
	if got["first"].ID != "ch_1" || got["inflight"].Code != "idempotency_key_in_use" {
		t.Errorf("results: %+v", got)
	}
}

const stripeNodeScript = `
const Stripe = require('stripe');
const http = require('http');
const stripe = new Stripe('sk_test_levee', {host: process.env.GW_HOST, port: +process.env.GW_PORT, protocol: 'http', maxNetworkRetries: 0});
const out = {};
async function step(name, fn) {
  try { const r = await fn(); out[name] = {ok: true, id: r.id}; }
  catch (e) { out[name] = {ok: false, class: e.constructor.name, statusCode: e.statusCode, code: e.code || ''}; }
}
const charge = (key, amount, description) => stripe.charges.create({amount, currency: 'usd', description}, {idempotencyKey: key});
const get = (u) => new Promise((res, rej) => http.get(u, r => { let b = ''; r.on('data', d => b += d); r.on('end', () => res(b)); }).on('error', rej));
(async () => {
  await step('first', () => charge('order-1', 100));
  await step('reuse', () => charge('order-1', 200));
  const slow = step('slow', () => charge('order-2', 300, 'slow'));
  while (await get(process.env.UPSTREAM + '/arrived') !== 'yes') await new Promise(r => setTimeout(r, 10));
  await step('inflight', () => charge('order-2', 300, 'slow'));
  await get(process.env.UPSTREAM + '/release');
  await slow;
  await step('limited', () => charge('order-3', 400));
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
`

// TestEdgeErrorsTakeTheGlobalEnvelope: a request refused by the HTTP layer
// (no route applies yet) is rendered with the global errors template.
func TestEdgeErrorsTakeTheGlobalEnvelope(t *testing.T) {
	t.Parallel()
	for _, engine := range []string{"levee", "net/http"} {
		u := newUpstream(t)
		g := startGateway(t, fmt.Sprintf("listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nstore: {type: memory}\nserver: {engine: %s}\nerrors: {format: template, template_file: %q}\nroutes:\n  - name: a\n    match: {path_prefix: /}\n    upstream: %s\n",
			engine, exampleTemplate(t, "google.json.tmpl"), u.srv.URL))
		c, err := net.Dial("tcp", g.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", engine, err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		var doc struct {
			Error struct {
				Code   int    `json:"code"`
				Status string `json:"status"`
			} `json:"error"`
		}
		if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &doc) != nil ||
			doc.Error.Code != 400 || doc.Error.Status != "INVALID_ARGUMENT" || resp.Header.Get("X-Request-Id") == "" {
			t.Fatalf("%s: %d %v %s", engine, resp.StatusCode, resp.Header, b)
		}
	}
}
