package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/idempotency"
)

// Options configure Run.
type Options struct {
	// Out receives the tour. Required.
	Out io.Writer
	// Serve keeps the gateway running after the tour until ctx ends
	// (levee demo); false returns after the tour (tests).
	Serve bool
	// Version is shown by the gateway's metrics.
	Version string
}

// Result summarises a tour, for tests.
type Result struct {
	Executed int // charges the upstream executed
	Steps    []StepResult
	// WebhookDeliveries is how many times the internal service received
	// the webhook sent three times; LedgerDeliveries how many times the
	// ledger received the replayed message.
	WebhookDeliveries, LedgerDeliveries int
}

// StepResult is what one tour step observed.
type StepResult struct {
	Name     string
	Statuses []int
}

// Run starts the sample upstream and the gateway on free loopback ports
// with a SQLite store in a temporary directory, runs the tour, and (with
// Serve) keeps serving until ctx ends.
func Run(ctx context.Context, o Options) (*Result, error) {
	// The sample services log from their own goroutines while the tour
	// prints: one lock keeps the lines whole and the writer race-free.
	out := &lockedWriter{w: o.Out}
	pay := &Payments{Delay: 300 * time.Millisecond, Log: out}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: upstream listener: %w", err)
	}
	up := &http.Server{Handler: pay, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = up.Serve(upLn) }()
	defer up.Close()
	partner := &Partner{Log: out}
	partnerLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: partner listener: %w", err)
	}
	ps := &http.Server{Handler: partner, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = ps.Serve(partnerLn) }()
	defer ps.Close()

	events := newEvents()
	evLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: events listener: %w", err)
	}
	evSrv := &http.Server{Handler: events, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = evSrv.Serve(evLn) }()
	defer evSrv.Close()
	evBase := "http://" + evLn.Addr().String()

	dir, err := os.MkdirTemp("", "levee-demo-")
	if err != nil {
		return nil, fmt.Errorf("demo: temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "levee.yaml")
	token := demoToken()
	yaml := fmt.Sprintf(demoConfig, token, filepath.Join(dir, "levee.db"), "http://"+upLn.Addr().String()) +
		fmt.Sprintf(egressConfig, "http://"+partnerLn.Addr().String()) +
		fmt.Sprintf(asyncConfig, evBase+"/events", evBase+"/ledger")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		return nil, fmt.Errorf("demo: writing config: %w", err)
	}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	srv, err := gateway.NewServer(ctx, cfgPath, gateway.ServerOptions{Version: o.Version, Logger: logger})
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	base := "http://" + srv.Addr()
	fmt.Fprintf(out, "levee demo\n")
	fmt.Fprintf(out, "  sample payments API (upstream): http://%s   (it records every charge it executes)\n", upLn.Addr())
	fmt.Fprintf(out, "  levee gateway in front of it:   %s   (SQLite store: %s)\n", base, filepath.Join(dir, "levee.db"))
	fmt.Fprintf(out, "  levee admin (metrics, health):  http://%s/metrics\n\n", srv.AdminAddr())

	t := &tour{out: out, base: base, admin: "http://" + srv.AdminAddr(), token: token, client: &http.Client{Timeout: 10 * time.Second},
		pay: pay, partner: partner, events: events, res: &Result{}}
	if err := t.run(ctx); err != nil {
		return t.res, err
	}
	if err := t.runAsync(ctx); err != nil {
		return t.res, err
	}
	t.res.Executed = pay.Executed()
	if !o.Serve {
		return t.res, nil
	}
	fmt.Fprintf(out, "\nlevee keeps serving. Try it by hand (Ctrl-C to stop):\n\n")
	fmt.Fprintf(out, "  curl -i -X POST %s/v1/charges -H 'Idempotency-Key: my-key-1' -H 'Content-Type: application/json' -d '{\"amount\":42}'\n", base)
	fmt.Fprintf(out, "  # run it twice: the second answer carries Idempotent-Replayed: true and nothing is charged again\n")
	fmt.Fprintf(out, "  curl -i -X POST %s/v1/charges -H 'Idempotency-Key: my-key-1' -H 'Content-Type: application/json' -d '{\"amount\":43}'   # 422\n", base)
	fmt.Fprintf(out, "  curl -s %s/v1/charges            # what the upstream really executed\n", base)
	fmt.Fprintf(out, "  curl -s -X POST 'http://%s/admin/flaky?fail=2'   # make the upstream fail the next 2 charges\n", upLn.Addr())
	fmt.Fprintf(out, "  curl -s http://%s/metrics | grep levee_idempotency\n", srv.AdminAddr())
	fmt.Fprintf(out, "  export LEVEE_ADMIN_TOKEN=%s\n", token)
	fmt.Fprintf(out, "  go run ./cmd/levee keys list --admin http://%s --route charges --state unknown   # keys held after a lost answer\n", srv.AdminAddr())
	fmt.Fprintf(out, "  curl -s -X POST %s/async/ledger -d '{\"entry\":\"x\"}'   # 202 + id; the ledger is up again\n", base)
	fmt.Fprintf(out, "  go run ./cmd/levee dlq list --admin http://%s   # the dead-letter queues\n", srv.AdminAddr())
	fmt.Fprintf(out, "  open http://%s/dlq/ui                        # the same in a browser (sign in with the token)\n", srv.AdminAddr())
	<-ctx.Done()
	fmt.Fprintf(out, "\nstopping\n")
	return t.res, nil
}

const demoConfig = `# levee demo config (generated)
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token: %q
store:
  type: sqlite
  sqlite:
    path: %q
log:
  level: warn
  access_log: false
routes:
  - name: charges
    match:
      path_prefix: /v1/charges
    upstream: %q
    timeout: 10s
    idempotency:
      required: true
      tenant_header: Authorization
      lease: 30s
      retention: 24h
`

type tour struct {
	out     io.Writer
	base    string
	admin   string // the admin listener, for the key tools and the DLQ API
	token   string // its admin token
	client  *http.Client
	pay     *Payments
	partner *Partner
	events  *Events // the internal service the queues deliver to
	res     *Result
	step    int
}

type exchange struct {
	status  int
	body    string
	headers http.Header
}

func (t *tour) post(ctx context.Context, key, body string) (exchange, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/v1/charges", strings.NewReader(body))
	if err != nil {
		return exchange{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer demo-merchant")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return exchange{}, fmt.Errorf("demo: POST /v1/charges: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return exchange{resp.StatusCode, strings.TrimSpace(string(b)), resp.Header}, nil
}

func (t *tour) header(title, explain string) {
	t.step++
	fmt.Fprintf(t.out, "── step %d: %s\n", t.step, title)
	if explain != "" {
		fmt.Fprintf(t.out, "   %s\n", explain)
	}
}

func (t *tour) request(times int, key, body string) {
	k := "(no Idempotency-Key)"
	if key != "" {
		k = "Idempotency-Key: " + key
	}
	n := ""
	if times > 1 {
		n = fmt.Sprintf("%d× ", times)
	}
	fmt.Fprintf(t.out, "  → %sPOST /v1/charges  %s  %s\n", n, k, body)
}

func (t *tour) show(x exchange) {
	extra := ""
	if v := x.headers.Get("Idempotent-Replayed"); v != "" {
		extra += "  Idempotent-Replayed: " + v
	}
	if v := x.headers.Get("Retry-After"); v != "" {
		extra += "  Retry-After: " + v
	}
	fmt.Fprintf(t.out, "  ← %d %s%s\n    %s\n", x.status, http.StatusText(x.status), extra, x.body)
}

func (t *tour) executed(what string) {
	fmt.Fprintf(t.out, "  ✔ upstream has executed %d charge(s) so far%s\n\n", t.pay.Executed(), what)
}

func (t *tour) record(name string, statuses ...int) {
	t.res.Steps = append(t.res.Steps, StepResult{Name: name, Statuses: statuses})
}

func (t *tour) run(ctx context.Context) error {
	one := func(name, key, body string) (exchange, error) {
		t.request(1, key, body)
		x, err := t.post(ctx, key, body)
		if err != nil {
			return x, err
		}
		t.show(x)
		t.record(name, x.status)
		return x, nil
	}

	t.header("a new payment", "The first request with a key runs once and its response is stored.")
	if _, err := one("first", "order-1001", `{"amount":100}`); err != nil {
		return err
	}
	t.executed("")

	t.header("the client retries (a timeout, a double click)", "Same key, same body: the stored response comes back byte for byte; nothing runs again.")
	if _, err := one("retry", "order-1001", `{"amount":100}`); err != nil {
		return err
	}
	t.executed(" — still one: the retry was replayed, not charged")

	t.header("five identical requests at the same moment", "One wins the claim; the others get 409 + Retry-After while it runs.")
	t.request(5, "order-1002", `{"amount":250}`)
	var wg sync.WaitGroup
	xs := make([]exchange, 5)
	errs := make([]error, 5)
	for i := range xs {
		wg.Add(1)
		go func() { defer wg.Done(); xs[i], errs[i] = t.post(ctx, "order-1002", `{"amount":250}`) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i].status < xs[j].status })
	var sts []int
	for _, x := range xs {
		t.show(x)
		sts = append(sts, x.status)
	}
	t.record("concurrent", sts...)
	t.executed(" — five requests, one charge")

	t.header("the same key reused for a different payment", "The key is bound to the first request's body: 422, and nothing runs.")
	if _, err := one("mismatch", "order-1001", `{"amount":999}`); err != nil {
		return err
	}
	t.executed("")

	t.header("a payment without a key", "This route requires Idempotency-Key: 400 with a problem+json explaining why.")
	if _, err := one("missing", "", `{"amount":100}`); err != nil {
		return err
	}
	t.executed("")

	t.header("the upstream fails (503)", "Failures are not stored: the key is released so the client's retry really runs.")
	t.pay.FailNext(1)
	if _, err := one("failure", "order-1003", `{"amount":75}`); err != nil {
		return err
	}
	if _, err := one("failure-retry", "order-1003", `{"amount":75}`); err != nil {
		return err
	}
	t.executed(" — the failed attempt charged nothing, the retry charged once")
	if err := t.lostAnswer(ctx, one); err != nil {
		return err
	}
	fmt.Fprintf(t.out, "Inbound tour complete: 15 requests reached levee; the upstream executed %d charges, each exactly once.\n\n", t.pay.Executed())
	return t.egress(ctx)
}

// lostAnswer is the unknown-outcome step: the upstream charges and the
// connection drops before its answer. levee cannot know whether the
// charge happened, so it holds the key instead of letting the retry charge
// again; an operator reconciles with the upstream and stores what it did.
func (t *tour) lostAnswer(ctx context.Context, one func(name, key, body string) (exchange, error)) error {
	t.header("the upstream charges, then the connection drops",
		"The whole request reached the upstream and its answer was lost: levee holds the key (never a blind re-run).")
	t.pay.DropNext(1)
	if _, err := one("lost", "order-1004", `{"amount":60}`); err != nil {
		return err
	}
	if _, err := one("held", "order-1004", `{"amount":60}`); err != nil {
		return err
	}
	t.executed(" — the retry was refused: the first attempt may have charged")

	t.header("an operator reconciles with the upstream", "levee keys resolve --response stores what the upstream did; the client's retry then replays it.")
	key, err := idempotency.KeyFor("charges", "Bearer demo-merchant", "order-1004")
	if err != nil {
		return err
	}
	last := t.pay.Last()
	found, _ := json.Marshal(map[string]any{"response": map[string]any{"status": 201,
		"header": map[string][]string{"Content-Type": {"application/json"}}, "body": append(last, '\n')}})
	fmt.Fprintf(t.out, "  $ levee keys resolve --route charges --key order-1004 --tenant-credential 'Bearer demo-merchant' --response found.http\n")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.admin+"/keys/"+key+"/resolve?route=charges", bytes.NewReader(found))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+t.token)
	req.Header.Set("X-Levee-Operator", "demo")
	resp, err := t.client.Do(req)
	if err != nil {
		return fmt.Errorf("demo: resolve: %w", err)
	}
	resp.Body.Close()
	fmt.Fprintf(t.out, "  ← %d %s: stored the charge found upstream (%s)\n", resp.StatusCode, http.StatusText(resp.StatusCode), last)
	t.record("resolve", resp.StatusCode)
	if _, err := one("replayed", "order-1004", `{"amount":60}`); err != nil {
		return err
	}
	t.executed(" — the lost answer was recovered without a second charge")
	return nil
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
