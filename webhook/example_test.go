package webhook_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/leveehq/levee/webhook"
)

// Verify a Stripe webhook, then the same bytes replayed an hour later, then
// a tampered body.
func ExampleStripe_Verify() {
	stripe, _ := webhook.NewStripe(webhook.Config{Secrets: []string{"whsec_current", "whsec_previous"}})
	body := []byte(`{"id":"evt_1","type":"charge.succeeded"}`)
	sent := time.Unix(1700000000, 0)
	h := http.Header{}
	_ = stripe.Sign(h, "", body, sent) // what Stripe would send

	ev, err := stripe.Verify(h, body, sent.Add(2*time.Second))
	fmt.Println(ev.ID, err)

	_, err = stripe.Verify(h, body, sent.Add(time.Hour))
	fmt.Println(errors.Is(err, webhook.ErrStaleTimestamp), err)

	_, err = stripe.Verify(h, []byte(`{"id":"evt_1","type":"charge.refunded"}`), sent)
	fmt.Println(errors.Is(err, webhook.ErrBadSignature))
	// Output:
	// evt_1 <nil>
	// true webhook: timestamp too old: signed 1h0m0s ago (tolerance 5m0s)
	// true
}

type printSink struct{}

func (printSink) Accept(_ context.Context, ev webhook.Event) error {
	fmt.Printf("sink: %s event %s: %s\n", ev.Source, ev.ID, ev.Body)
	return nil
}

// The ingest handler: a signed Standard Webhooks event is handed to the
// sink and answered 202; a forged one is answered 403 problem+json and never
// reaches the sink.
func ExampleHandler() {
	scheme, _ := webhook.NewStandardWebhooks(webhook.Config{Secrets: []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}})
	now := time.Unix(1614265330, 0)
	handler, _ := webhook.NewHandler(scheme, printSink{}, webhook.Options{
		Source: "acme",
		Now:    func() time.Time { return now },
	})

	body := `{"test": 2432232314}`
	for _, sig := range []string{"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="} {
		r := httptest.NewRequest(http.MethodPost, "/webhooks/acme", strings.NewReader(body))
		r.Header.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
		r.Header.Set("webhook-timestamp", "1614265330")
		r.Header.Set("webhook-signature", sig)
		w := httptest.NewRecorder()
		handler.ServeHTTP(w, r)
		fmt.Println(w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	// Output:
	// sink: acme event msg_p5jXN8AQM9LWM0D4loKWxJek: {"test": 2432232314}
	// 202 application/json {"id":"msg_p5jXN8AQM9LWM0D4loKWxJek","status":"accepted"}
	// 403 application/problem+json {"type":"https://github.com/leveehq/levee/blob/main/docs/problems.md#webhook-signature-invalid","title":"Webhook signature does not match","status":403,"detail":"webhook: no signature matches (standard-webhooks: 1 signature(s) checked)"}
}

// An event id deep in the body, for dedupe.
func ExampleIDFromJSON() {
	id, err := webhook.IDFromJSON([]byte(`{"data":{"object":{"id":"pi_1"}}}`), "data.object.id")
	fmt.Println(id, err)
	_, err = webhook.IDFromJSON([]byte(`{"data":`), "data.object.id")
	fmt.Println(err)
	// Output:
	// pi_1 <nil>
	// webhook: malformed JSON body: the body is not valid JSON
}
