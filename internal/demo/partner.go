package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Partner is a sample third-party API behind levee's egress route: it
// deduplicates charges by Idempotency-Key (as Stripe does: the same key
// gets the stored answer and is charged once) and misbehaves on cue.
type Partner struct {
	// Log, if set, receives one line per request the partner receives.
	Log io.Writer

	mu       sync.Mutex
	byKey    map[string][]byte
	executed int
	received int
	faults   []fault
}

type fault struct {
	status     int
	retryAfter string
	execute    bool // charge first, then lose the answer
}

// Executed returns how many charges the partner executed.
func (p *Partner) Executed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.executed
}

// Received returns how many requests reached the partner.
func (p *Partner) Received() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.received
}

// Fail queues n answers of status (with Retry-After when set); execute
// charges before answering, as if the answer was lost on the way back.
func (p *Partner) Fail(n, status int, retryAfter string, execute bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 0; i < n; i++ {
		p.faults = append(p.faults, fault{status, retryAfter, execute})
	}
}

// ServeHTTP implements POST /v1/charges.
func (p *Partner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	key := r.Header.Get("Idempotency-Key")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.received++
	if p.byKey == nil {
		p.byKey = map[string][]byte{}
	}
	logf := func(format string, args ...any) {
		if p.Log != nil {
			fmt.Fprintf(p.Log, "  partner: request %d (Idempotency-Key %s): %s\n", p.received, shortKey(key), fmt.Sprintf(format, args...))
		}
	}
	if stored, ok := p.byKey[key]; ok && key != "" {
		logf("key seen before: stored answer replayed, nothing charged")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(stored)
		return
	}
	var f *fault
	if len(p.faults) > 0 {
		f = &p.faults[0]
		p.faults = p.faults[1:]
	}
	if f != nil && !f.execute {
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
			logf("answered %d, Retry-After: %s", f.status, f.retryAfter)
		} else {
			logf("answered %d", f.status)
		}
		w.WriteHeader(f.status)
		return
	}
	p.executed++
	out, _ := json.Marshal(map[string]string{"id": "py_" + strconv.Itoa(p.executed), "status": "succeeded"})
	out = append(out, '\n')
	if key != "" {
		p.byKey[key] = out
	}
	if f != nil {
		logf("EXECUTED charge py_%d, then the answer was lost (%d)", p.executed, f.status)
		w.WriteHeader(f.status)
		return
	}
	logf("EXECUTED charge py_%d", p.executed)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(out)
}

func shortKey(k string) string {
	switch {
	case k == "":
		return "none"
	case len(k) > 8:
		return k[:8] + "…"
	}
	return k
}

// egressConfig is appended to demoConfig: the partner as a named
// upstream with policies, and the egress route local services call it
// through.
const egressConfig = `  - name: egress-partner
    match:
      path_prefix: /egress/partner
    upstream: partner
    egress: true
    timeout: 10s
upstreams:
  - name: partner
    url: %q
    timeout: 10s
    attempt_timeout: 2s
    retry: {max_attempts: 3, max_delay: 1s, max_retry_after: 5s, dedupes_keys: true, auto_key: true}
    breaker: {consecutive_failures: 3, cooldown: 1s}
    pace: {}
`

// egress is the tour's second part: a local service calls a flaky third
// party through levee's egress route.
func (t *tour) egress(ctx context.Context) error {
	call := func(name string) (exchange, error) {
		fmt.Fprintf(t.out, "  → POST /egress/partner/v1/charges  (no Idempotency-Key: levee adds one)\n")
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/egress/partner/v1/charges", strings.NewReader(`{"amount":30}`))
		if err != nil {
			return exchange{}, err
		}
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := t.client.Do(req)
		if err != nil {
			return exchange{}, fmt.Errorf("demo: POST /egress/partner/v1/charges: %w", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		x := exchange{resp.StatusCode, strings.TrimSpace(string(b)), resp.Header}
		t.show(x)
		fmt.Fprintf(t.out, "    (answered after %v)\n", time.Since(start).Round(100*time.Millisecond))
		t.record(name, x.status)
		return x, nil
	}
	done := func(what string) {
		fmt.Fprintf(t.out, "  ✔ the partner received %d request(s) and executed %d charge(s) so far%s\n\n", t.partner.Received(), t.partner.Executed(), what)
	}
	fmt.Fprintf(t.out, "Egress: local services call a third party (the partner) through levee: POST %s/egress/partner/... → partner /...\n\n", t.base)

	t.header("the partner answers 503 + Retry-After: 1", "levee waits exactly that long, then retries with the same key.")
	t.partner.Fail(1, http.StatusServiceUnavailable, "1", false)
	if _, err := call("egress-retry-after"); err != nil {
		return err
	}
	done("")

	t.header("the partner charges, then its answer is lost (502)", "The retry carries the byte-identical key: the partner replays its answer, nothing is charged twice.")
	t.partner.Fail(1, http.StatusBadGateway, "", true)
	if _, err := call("egress-same-key"); err != nil {
		return err
	}
	done(" — two attempts, one charge")

	t.header("the partner is down (500, three times)", "After 3 failures in a row the breaker opens: levee answers 503 at once, without calling the partner.")
	t.partner.Fail(3, http.StatusInternalServerError, "", false)
	for i := 0; i < 3; i++ {
		if _, err := call("egress-down"); err != nil {
			return err
		}
	}
	before := t.partner.Received()
	if _, err := call("egress-open"); err != nil {
		return err
	}
	done(fmt.Sprintf(" — the open breaker sent nothing (%d before, %d after)", before, t.partner.Received()))

	t.header("the partner recovers", "After the 1 s cooldown one probe goes through; it succeeds and the breaker closes.")
	select {
	case <-time.After(1100 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, err := call("egress-recovered"); err != nil {
		return err
	}
	done("")

	t.header("the partner throttles (429, Retry-After: 10)", "Every caller pauses until then: this caller fails fast (10 s is above the 5 s cap), the next is not even sent.")
	t.partner.Fail(1, http.StatusTooManyRequests, "10", false)
	if _, err := call("egress-429"); err != nil {
		return err
	}
	before = t.partner.Received()
	if _, err := call("egress-paused"); err != nil {
		return err
	}
	done(fmt.Sprintf(" — the paused call never left (%d before, %d after)", before, t.partner.Received()))
	fmt.Fprintf(t.out, "Tour complete: the partner executed %d charges, none twice; the open breaker and the pause sent it nothing.\n", t.partner.Executed())
	return nil
}
