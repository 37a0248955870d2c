// Package demo is `levee demo`: a sample payments API, the gateway in
// front of it on the embedded SQLite store, and a scripted tour.
package demo

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Payments is a tiny payments API that records every charge it executes.
// It can be made flaky: the next N charges fail with 503.
type Payments struct {
	// Delay slows every charge, so duplicates can meet it in flight.
	Delay time.Duration
	// Log, if set, receives one line per executed charge.
	Log io.Writer

	mu      sync.Mutex
	charges []Charge
	failN   int
	dropN   int
}

// Charge is one executed charge.
type Charge struct {
	ID       string `json:"id"`
	Amount   int    `json:"amount"`
	Currency string `json:"currency"`
	Status   string `json:"status"`
}

// Executed returns how many charges the API executed.
func (p *Payments) Executed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.charges)
}

// FailNext makes the next n charges fail with 503.
func (p *Payments) FailNext(n int) {
	p.mu.Lock()
	p.failN = n
	p.mu.Unlock()
}

// Last returns the JSON of the last executed charge.
func (p *Payments) Last() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.charges) == 0 {
		return nil
	}
	out, _ := json.Marshal(p.charges[len(p.charges)-1])
	return out
}

// DropNext makes the next n charges execute and then lose their answer:
// the connection is closed before any response (a crash, a cut network).
func (p *Payments) DropNext(n int) {
	p.mu.Lock()
	p.dropN = n
	p.mu.Unlock()
}

// ServeHTTP implements POST /v1/charges, GET /v1/charges and
// POST /admin/flaky?fail=N.
func (p *Payments) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/charges":
		p.charge(w, r)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/charges":
		p.mu.Lock()
		out, _ := json.Marshal(map[string]any{"executed": len(p.charges), "charges": p.charges})
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(append(out, '\n'))
	case r.Method == http.MethodPost && r.URL.Path == "/admin/flaky":
		n, _ := strconv.Atoi(r.URL.Query().Get("fail"))
		p.FailNext(n)
		fmt.Fprintf(w, "the next %d charges will fail with 503\n", n)
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

func (p *Payments) charge(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Amount   int    `json:"amount"`
		Currency string `json:"currency"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Amount <= 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"amount must be a positive integer"}`+"\n")
		return
	}
	if in.Currency == "" {
		in.Currency = "eur"
	}
	time.Sleep(p.Delay)
	p.mu.Lock()
	if p.failN > 0 {
		p.failN--
		p.mu.Unlock()
		if p.Log != nil {
			fmt.Fprintf(p.Log, "  upstream: charge of %d FAILED (simulated outage), nothing charged\n", in.Amount)
		}
		http.Error(w, `{"error":"temporarily unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	c := Charge{ID: fmt.Sprintf("ch_%d", len(p.charges)+1), Amount: in.Amount, Currency: in.Currency, Status: "succeeded"}
	p.charges = append(p.charges, c)
	drop := p.dropN > 0
	if drop {
		p.dropN--
	}
	p.mu.Unlock()
	if p.Log != nil {
		fmt.Fprintf(p.Log, "  upstream: EXECUTED charge %s of %d %s\n", c.ID, c.Amount, c.Currency)
	}
	if drop {
		if p.Log != nil {
			fmt.Fprintf(p.Log, "  upstream: ...and the connection drops before the answer (simulated crash)\n")
		}
		panic(http.ErrAbortHandler) // closes the connection without a response
	}
	out, _ := json.Marshal(c)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/v1/charges/"+c.ID)
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(append(out, '\n'))
}
