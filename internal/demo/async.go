package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/leveehq/levee/webhook"
)

// demoWebhookSecret signs the tour's webhooks (Standard Webhooks form).
const demoWebhookSecret = "whsec_ZGVtby1vbmx5LXNlY3JldC1mb3ItbGV2ZWUtdG91cg=="

// asyncConfig is appended to demoConfig: a webhook route feeding a queue
// delivered to the sample service's /events, and an async queue to its
// /ledger. Arguments: the admin token, the events URL, the ledger URL.
const asyncConfig = `queues:
  - name: events
    target: %q
    backoff_base: 10ms
    backoff_max: 100ms
  - name: ledger
    target: %q
    path: /async/ledger
    max_attempts: 3
    backoff_base: 10ms
    backoff_max: 50ms
webhooks:
  - name: provider
    path: /webhooks/provider
    scheme: standard-webhooks
    secrets: [` + demoWebhookSecret + `]
    queue: events
`

// Events is the sample internal service the queues deliver to: /events
// counts webhook deliveries by event id; /ledger counts messages by id and
// answers 503 while Offline is set.
type Events struct {
	mu      sync.Mutex
	events  map[string]int
	ledger  map[string]int
	offline bool
}

func newEvents() *Events { return &Events{events: map[string]int{}, ledger: map[string]int{}} }

// SetOffline makes /ledger fail (503) or recover.
func (e *Events) SetOffline(v bool) { e.mu.Lock(); e.offline = v; e.mu.Unlock() }

func (e *Events) counts(id string) (events, ledger int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.events[id], e.ledger[id]
}

func (e *Events) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	e.mu.Lock()
	defer e.mu.Unlock()
	switch r.URL.Path {
	case "/events":
		e.events[r.Header.Get("X-Levee-Webhook-Id")]++
	case "/ledger":
		if e.offline {
			http.Error(w, "ledger offline for maintenance", http.StatusServiceUnavailable)
			return
		}
		e.ledger[r.Header.Get("X-Levee-Message-Id")]++
	default:
		http.NotFound(w, r)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func demoToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (t *tour) do(ctx context.Context, req *http.Request) (exchange, error) {
	resp, err := t.client.Do(req.WithContext(ctx))
	if err != nil {
		return exchange{}, fmt.Errorf("demo: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return exchange{resp.StatusCode, strings.TrimSpace(string(b)), resp.Header}, nil
}

// waitUntil polls cond every 20ms for up to 10s.
func waitUntil(ctx context.Context, cond func() bool) bool {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
	return true
}

func (t *tour) webhook(body string, tamper bool) (*http.Request, error) {
	s, err := webhook.NewStandardWebhooks(webhook.Config{Secrets: []string{demoWebhookSecret}})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, t.base+"/webhooks/provider", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := s.Sign(req.Header, "evt_demo_1", []byte(body), time.Now()); err != nil {
		return nil, err
	}
	if tamper {
		req.Body = io.NopCloser(strings.NewReader(strings.Replace(body, "100", "900", 1)))
	}
	return req, nil
}

// runAsync is the webhook and DLQ part of the tour.
func (t *tour) runAsync(ctx context.Context) error {
	body := `{"type":"payment.succeeded","amount":100}`
	t.header("a signed webhook, sent three times by its provider", "Verified, stored durably, answered 202 at once; the copies are duplicates and never stored again.")
	fmt.Fprintf(t.out, "  → 3× POST /webhooks/provider  webhook-id: evt_demo_1  %s\n", body)
	var sts []int
	for range 3 {
		req, err := t.webhook(body, false)
		if err != nil {
			return err
		}
		x, err := t.do(ctx, req)
		if err != nil {
			return err
		}
		t.show(x)
		sts = append(sts, x.status)
	}
	t.record("webhook", sts...)
	if !waitUntil(ctx, func() bool { n, _ := t.events.counts("evt_demo_1"); return n >= 1 }) {
		return fmt.Errorf("demo: the webhook was never delivered to the internal service")
	}
	n, _ := t.events.counts("evt_demo_1")
	t.res.WebhookDeliveries = n
	fmt.Fprintf(t.out, "  ✔ the internal service received evt_demo_1 %d time(s)\n\n", n)

	t.header("a tampered webhook", "One byte changed after signing: 403 problem+json, never stored, never delivered.")
	fmt.Fprintf(t.out, "  → POST /webhooks/provider  (amount 100 → 900 after signing)\n")
	req, err := t.webhook(body, true)
	if err != nil {
		return err
	}
	x, err := t.do(ctx, req)
	if err != nil {
		return err
	}
	t.show(x)
	t.record("webhook-tampered", x.status)
	fmt.Fprintln(t.out)

	t.header("async work whose target keeps failing", "POST /async/ledger answers 202 with a message id; the ledger is offline, so after 3 attempts the message lands in the dead-letter queue with every attempt's error.")
	t.events.SetOffline(true)
	req, _ = http.NewRequest(http.MethodPost, t.base+"/async/ledger", strings.NewReader(`{"entry":"refund","amount":25}`))
	req.Header.Set("Content-Type", "application/json")
	fmt.Fprintf(t.out, "  → POST /async/ledger  {\"entry\":\"refund\",\"amount\":25}\n")
	x, err = t.do(ctx, req)
	if err != nil {
		return err
	}
	t.show(x)
	t.record("enqueue", x.status)
	var enq struct{ ID string }
	if err := json.Unmarshal([]byte(x.body), &enq); err != nil || enq.ID == "" {
		return fmt.Errorf("demo: enqueue answered %d %s", x.status, x.body)
	}
	var dead struct {
		Reason  string
		History []struct {
			N      int
			Error  string
			Status int
			Body   []byte
		}
	}
	ok := waitUntil(ctx, func() bool {
		req, _ := http.NewRequest(http.MethodGet, t.admin+"/dlq/ledger/"+enq.ID, nil)
		req.Header.Set("Authorization", "Bearer "+t.token)
		x, err := t.do(ctx, req)
		return err == nil && x.status == http.StatusOK && json.Unmarshal([]byte(x.body), &dead) == nil
	})
	if !ok {
		return fmt.Errorf("demo: the failing message never reached the DLQ")
	}
	fmt.Fprintf(t.out, "  ✔ in the DLQ (%s) — levee dlq show --queue ledger --id %s:\n", dead.Reason, enq.ID)
	for _, a := range dead.History {
		fmt.Fprintf(t.out, "      attempt %d: %s [%d] %s\n", a.N, a.Error, a.Status, strings.TrimSpace(string(a.Body)))
	}
	fmt.Fprintln(t.out)

	t.header("the ledger is back: levee dlq replay", "The replay keeps the message id, so it is delivered once even if replayed twice.")
	t.events.SetOffline(false)
	fmt.Fprintf(t.out, "  → levee dlq replay --queue ledger --id %s\n", enq.ID)
	req, _ = http.NewRequest(http.MethodPost, t.admin+"/dlq/ledger/replay?id="+enq.ID, nil)
	req.Header.Set("Authorization", "Bearer "+t.token)
	req.Header.Set("X-Levee-Operator", "levee demo")
	x, err = t.do(ctx, req)
	if err != nil {
		return err
	}
	t.show(x)
	t.record("replay", x.status)
	if !waitUntil(ctx, func() bool { _, n := t.events.counts(enq.ID); return n >= 1 }) {
		return fmt.Errorf("demo: the replayed message was never delivered")
	}
	_, n = t.events.counts(enq.ID)
	t.res.LedgerDeliveries = n
	fmt.Fprintf(t.out, "  ✔ the ledger received message %s %d time(s)\n\n", enq.ID, n)
	return nil
}
