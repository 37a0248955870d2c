package lambda_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
)

type payment struct {
	OrderID  string `json:"order_id"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
	Note     string `json:"note,omitempty"`
}

type receipt struct {
	Charge string `json:"charge"`
	Amount int    `json:"amount"`
}

func payments(n *atomic.Int64) func(context.Context, payment) (receipt, error) {
	return func(_ context.Context, p payment) (receipt, error) {
		if p.Amount <= 0 {
			n.Add(1)
			return receipt{}, errors.New("declined")
		}
		return receipt{Charge: fmt.Sprintf("ch_%d", n.Add(1)), Amount: p.Amount}, nil
	}
}

func TestHandlerDuplicatesExecuteOnce(t *testing.T) {
	stores(t, func(t *testing.T, s idempotency.Store, calls *atomic.Int64) {
		var n atomic.Int64
		h, err := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{
			Config: lambda.Config{Store: s}, KeyPath: "[customer, order_id]", ValidationPath: "amount",
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx := invocationCtx(t, time.Minute)
		calls.Store(0)
		first, err := h.Invoke(ctx, []byte(`{"order_id":"o-1","customer":"c-1","amount":100}`))
		if err != nil {
			t.Fatal(err)
		}
		if got := calls.Load(); got != 2 {
			t.Errorf("a new invocation cost %d store round trips, want 2", got)
		}
		calls.Store(0)
		// A retry with other volatile fields (outside the key and validation paths).
		second, err := h.Invoke(ctx, []byte(`{"amount":100,"customer":"c-1","order_id":"o-1","note":"retry"}`))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := calls.Load(), replayRoundTrips(t); got != want {
			t.Errorf("a replay cost %d store round trips, want %d", got, want)
		}
		if string(first) != string(second) || string(first) != `{"charge":"ch_1","amount":100}` {
			t.Fatalf("first %s, replay %s", first, second)
		}
		// Typed form, same key: replayed too.
		r, err := h.Handle(ctx, payment{OrderID: "o-1", Customer: "c-1", Amount: 100})
		if err != nil || r.Charge != "ch_1" {
			t.Fatalf("Handle: %+v, %v", r, err)
		}
		// Same key, another amount: refused before running.
		if _, err := h.Invoke(ctx, []byte(`{"order_id":"o-1","customer":"c-1","amount":5}`)); !errors.Is(err, idempotency.ErrMismatch) {
			t.Fatalf("other amount: %v; want ErrMismatch", err)
		}
		// Same order id for another customer is another key.
		if _, err := h.Invoke(ctx, []byte(`{"order_id":"o-1","customer":"c-2","amount":5}`)); err != nil {
			t.Fatal(err)
		}
		if got := n.Load(); got != 2 {
			t.Fatalf("the handler ran %d times, want 2", got)
		}
	})
}

func TestHandlerFailureReleases(t *testing.T) {
	var n atomic.Int64
	h, _ := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{Config: lambda.Config{Store: newMemory()}, KeyPath: "order_id"})
	ctx := invocationCtx(t, time.Minute)
	for range 2 {
		if _, err := h.Invoke(ctx, []byte(`{"order_id":"o-9","amount":0}`)); err == nil || err.Error() != "lambda: declined" {
			t.Fatalf("err %v; want the handler's error", err)
		}
	}
	if n.Load() != 2 {
		t.Fatalf("a failed invocation is retried: ran %d times, want 2", n.Load())
	}
}

func TestHandlerKeyErrors(t *testing.T) {
	var n atomic.Int64
	s := newMemory()
	h, _ := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{Config: lambda.Config{Store: s}, KeyPath: "order_id"})
	ctx := context.Background()
	if _, err := h.Invoke(ctx, []byte(`{"amount":1}`)); !errors.Is(err, lambda.ErrNoKey) {
		t.Errorf("no key: %v; want ErrNoKey", err)
	}
	if _, err := h.Invoke(ctx, []byte(`{"amount":`)); !errors.Is(err, lambda.ErrEvent) {
		t.Errorf("malformed: %v; want ErrEvent", err)
	}
	if _, err := h.Invoke(ctx, []byte(`{"order_id":"x","amount":"ten"}`)); !errors.Is(err, lambda.ErrEvent) {
		t.Errorf("not a payment: %v; want ErrEvent", err)
	}
	if n.Load() != 0 {
		t.Fatalf("ran %d times", n.Load())
	}
	open, _ := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{Config: lambda.Config{Store: s}, KeyPath: "order_id", AllowMissingKey: true})
	if _, err := open.Invoke(ctx, []byte(`{"amount":1}`)); err != nil || n.Load() != 1 {
		t.Errorf("AllowMissingKey: %v, ran %d", err, n.Load())
	}
	if _, err := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{Config: lambda.Config{Store: s}, KeyPath: "a[?"}); !errors.Is(err, lambda.ErrExpression) {
		t.Errorf("bad expression: %v; want ErrExpression", err)
	}
	if _, err := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{KeyPath: "a"}); err == nil {
		t.Errorf("nil store accepted")
	}
	if _, err := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{Config: lambda.Config{Store: s}}); err == nil {
		t.Errorf("empty KeyPath accepted")
	}
}

// TestHandlerPowertoolsJSON: powertools_json reaches into a JSON string,
// as in an API Gateway event's body.
func TestHandlerPowertoolsJSON(t *testing.T) {
	var n atomic.Int64
	fn := func(context.Context, map[string]any) (string, error) { n.Add(1); return "ok", nil }
	h, err := lambda.NewIdempotentHandler(fn, lambda.HandlerOptions{Config: lambda.Config{Store: newMemory()}, KeyPath: "powertools_json(body).id"})
	if err != nil {
		t.Fatal(err)
	}
	ev := eventFile(t, "apigw-request.json")
	for _, id := range []string{"a", "a", "b"} {
		ev = editJSON(t, ev, func(m map[string]any) { m["body"] = `{"id":"` + id + `"}` })
		if out, err := h.Invoke(context.Background(), ev); err != nil || string(out) != `"ok"` {
			t.Fatalf("%s: %s, %v", id, out, err)
		}
	}
	if n.Load() != 2 {
		t.Fatalf("ran %d times, want 2", n.Load())
	}
	bad := editJSON(t, ev, func(m map[string]any) { m["body"] = `not json` })
	if _, err := h.Invoke(context.Background(), bad); !errors.Is(err, lambda.ErrExpression) {
		t.Fatalf("body not JSON: %v; want ErrExpression", err)
	}
}

// TestHandlerTimeoutHoldsKey: a function that times out mid-charge holds
// its key; the retry is refused with the unknown outcome, not re-run.
func TestHandlerTimeoutHoldsKey(t *testing.T) {
	stores(t, func(t *testing.T, s idempotency.Store, _ *atomic.Int64) {
		var n atomic.Int64
		var sawDeadline atomic.Bool
		fn := func(ctx context.Context, p payment) (receipt, error) {
			n.Add(1)
			<-ctx.Done() // the charge hangs; the margin ends the ctx
			sawDeadline.Store(true)
			time.Sleep(50 * time.Millisecond) // and returns too late to be heard
			return receipt{Charge: "late"}, nil
		}
		var events []idempotency.Outcome
		h, _ := lambda.NewIdempotentHandler(fn, lambda.HandlerOptions{
			Config: lambda.Config{Store: s, DeadlineMargin: 100 * time.Millisecond,
				Options: idempotency.Options{OnEvent: func(_ context.Context, ev idempotency.Event) { events = append(events, ev.Outcome) }}},
			KeyPath: "order_id",
		})
		ev := []byte(`{"order_id":"o-t","amount":10}`)
		_, err := h.Invoke(invocationCtx(t, 300*time.Millisecond), ev)
		var de *lambda.DeadlineError
		if !errors.As(err, &de) || !errors.Is(err, lambda.ErrDeadline) || !errors.Is(err, idempotency.ErrOutcomeUnknown) {
			t.Fatalf("first: %v; want a *DeadlineError", err)
		}
		_, err = h.Invoke(invocationCtx(t, time.Minute), ev)
		var ue *idempotency.OutcomeUnknownError
		if !errors.As(err, &ue) {
			t.Fatalf("retry: %v; want an *idempotency.OutcomeUnknownError", err)
		}
		if n.Load() != 1 {
			t.Fatalf("ran %d times, want 1", n.Load())
		}
		if len(events) != 2 || events[0] != idempotency.OutcomeUnknown || events[1] != idempotency.OutcomeHeld {
			t.Fatalf("events %v; want [unknown held]", events)
		}
		if !waitTrue(&sawDeadline) {
			t.Fatalf("the handler's ctx did not end at the margin")
		}
	})
}

func waitTrue(b *atomic.Bool) bool {
	for range 100 {
		if b.Load() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// FuzzKeyPath: any JSON event under any expression either yields a key or
// a typed error, never a panic; and the same event yields the same key.
func FuzzKeyPath(f *testing.F) {
	f.Add("order_id", `{"order_id":"o-1"}`)
	f.Add("[a, b.c]", `{"a":1,"b":{"c":[1,2]}}`)
	f.Add("powertools_json(body).id", `{"body":"{\"id\":3}"}`)
	f.Add("powertools_json(body)", `{"body":"nope"}`)
	f.Add("a[?b > `1`]", `{"a":[{"b":2}]}`)
	f.Fuzz(func(t *testing.T, path, event string) {
		if path == "" {
			return // refused by NewIdempotentHandler: tested in TestHandlerKeyErrors
		}
		var n atomic.Int64
		fn := func(context.Context, json.RawMessage) (int64, error) { return n.Add(1), nil }
		h, err := lambda.NewIdempotentHandler(fn, lambda.HandlerOptions{Config: lambda.Config{Store: newMemory()}, KeyPath: path})
		if err != nil {
			if !errors.Is(err, lambda.ErrExpression) {
				t.Fatalf("constructor: %v", err)
			}
			return
		}
		a, errA := h.Invoke(context.Background(), []byte(event))
		b, errB := h.Invoke(context.Background(), []byte(event))
		if (errA == nil) != (errB == nil) {
			t.Fatalf("%v then %v", errA, errB)
		}
		if errA != nil {
			if !errors.Is(errA, lambda.ErrEvent) && !errors.Is(errA, lambda.ErrExpression) && !errors.Is(errA, lambda.ErrNoKey) {
				t.Fatalf("untyped error %v", errA)
			}
			return
		}
		if string(a) != string(b) || n.Load() != 1 {
			t.Fatalf("%s then %s, ran %d", a, b, n.Load())
		}
	})
}

// slowClaims delays every claim, like a store answering slowly.
type slowClaims struct {
	idempotency.Store
	delay time.Duration
}

func (s slowClaims) Claim(ctx context.Context, r idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	time.Sleep(s.delay)
	return s.Store.Claim(ctx, r)
}

// TestHandlerNoTimeLeft: when the claim returns past the margin, the
// handler does not start, the key is released (not held), and a retry
// runs.
func TestHandlerNoTimeLeft(t *testing.T) {
	var n atomic.Int64
	mem := newMemory()
	slow, _ := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{
		Config:  lambda.Config{Store: slowClaims{Store: mem, delay: 250 * time.Millisecond}, DeadlineMargin: 100 * time.Millisecond},
		KeyPath: "order_id",
	})
	ev := []byte(`{"order_id":"o-late","amount":10}`)
	_, err := slow.Invoke(invocationCtx(t, 300*time.Millisecond), ev)
	var de *lambda.DeadlineError
	if !errors.As(err, &de) || !de.NotStarted || errors.Is(err, idempotency.ErrOutcomeUnknown) || n.Load() != 0 {
		t.Fatalf("err %v (ran %d); want a NotStarted *DeadlineError that does not hold the key", err, n.Load())
	}
	fast, _ := lambda.NewIdempotentHandler(payments(&n), lambda.HandlerOptions{Config: lambda.Config{Store: mem}, KeyPath: "order_id"})
	if _, err := fast.Invoke(invocationCtx(t, time.Minute), ev); err != nil || n.Load() != 1 {
		t.Fatalf("retry: %v (ran %d); want it to run", err, n.Load())
	}
}
