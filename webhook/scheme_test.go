package webhook_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v82/webhook"

	wh "github.com/leveehq/levee/webhook"
)

type signingScheme interface {
	wh.Scheme
	wh.Signer
}

const (
	secretNew = "whsec_bmV3LXNlY3JldC1ieXRlcy0wMTIzNDU2Nzg5" // base64 of "new-secret-bytes-0123456789"
	secretOld = "whsec_b2xkLXNlY3JldC1ieXRlcy05ODc2NTQzMjEw" // base64 of "old-secret-bytes-9876543210"
)

// newSchemes builds every scheme with the given secrets.
func newSchemes(t testing.TB, secrets ...string) map[string]signingScheme {
	t.Helper()
	c := wh.Config{Secrets: secrets}
	m := map[string]signingScheme{
		"standard-webhooks": must(wh.NewStandardWebhooks(c)),
		"stripe":            must(wh.NewStripe(c)),
		"github":            must(wh.NewGitHub(c)),
		"shopify":           must(wh.NewShopify(c)),
		"slack":             must(wh.NewSlack(c)),
		"hmac": must(wh.NewHMAC(wh.HMACConfig{Secrets: secrets, Header: "X-Signature", Prefix: "sha256=",
			TimestampHeader: "X-Timestamp", IDHeader: "X-Event-Id"})),
		"hmac-base64": must(wh.NewHMAC(wh.HMACConfig{Secrets: secrets, Header: "X-Signature", Encoding: wh.EncodingBase64})),
	}
	return m
}

var (
	t0   = time.Unix(1_750_000_000, 0)
	body = []byte(`{"id":"evt_42","type":"payment.succeeded","data":{"object":{"id":"pi_1"}}}`)
)

func signed(t testing.TB, s wh.Signer, id string, b []byte, at time.Time) http.Header {
	t.Helper()
	h := http.Header{}
	if err := s.Sign(h, id, b, at); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for name, s := range newSchemes(t, secretNew, secretOld) {
		t.Run(name, func(t *testing.T) {
			h := signed(t, s, "evt_42", body, t0)
			ev, err := s.Verify(h, body, t0)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if ev.Scheme != name && !strings.HasPrefix(name, ev.Scheme) {
				t.Errorf("Scheme = %q", ev.Scheme)
			}
			switch name {
			case "slack", "hmac-base64": // no id header
				if ev.ID != "" {
					t.Errorf("ID = %q, want empty", ev.ID)
				}
			default:
				if ev.ID != "evt_42" {
					t.Errorf("ID = %q, want evt_42", ev.ID)
				}
			}
		})
	}
}

// A receiver holding the new and the old secret accepts a sender still on
// the old one, and a sender already on the new one; a receiver that dropped
// the old secret refuses the old sender.
func TestSecretRotation(t *testing.T) {
	t.Parallel()
	receiver := newSchemes(t, secretNew, secretOld)
	oldSender := newSchemes(t, secretOld)
	newSender := newSchemes(t, secretNew)
	afterRotation := newSchemes(t, secretNew)
	for name := range receiver {
		t.Run(name, func(t *testing.T) {
			for _, sender := range []signingScheme{oldSender[name], newSender[name]} {
				if _, err := receiver[name].Verify(signed(t, sender, "evt_42", body, t0), body, t0); err != nil {
					t.Errorf("during rotation: %v", err)
				}
			}
			_, err := afterRotation[name].Verify(signed(t, oldSender[name], "evt_42", body, t0), body, t0)
			if !errors.Is(err, wh.ErrBadSignature) {
				t.Errorf("old secret after rotation: err = %v, want ErrBadSignature", err)
			}
		})
	}
}

// Any changed byte of the body, the id or the timestamp breaks the signature.
func TestTampering(t *testing.T) {
	t.Parallel()
	for name, s := range newSchemes(t, secretNew) {
		t.Run(name, func(t *testing.T) {
			h := signed(t, s, "evt_42", body, t0)
			for i := range body {
				b := append([]byte(nil), body...)
				b[i] ^= 0x01
				if _, err := s.Verify(h, b, t0); !errors.Is(err, wh.ErrBadSignature) {
					t.Fatalf("byte %d flipped: err = %v, want ErrBadSignature", i, err)
				}
			}
			if _, err := s.Verify(h, append(append([]byte(nil), body...), ' '), t0); !errors.Is(err, wh.ErrBadSignature) {
				t.Errorf("byte appended: err = %v", err)
			}
			for _, k := range []string{"Webhook-Id", "Webhook-Timestamp", "X-Slack-Request-Timestamp", "X-Timestamp"} {
				if h.Get(k) == "" {
					continue
				}
				h2 := h.Clone()
				h2.Set(k, h.Get(k)+"x") // another id
				if k != "Webhook-Id" {
					h2.Set(k, "1750000001") // one second later: inside the tolerance, so only the signature can fail
				}
				if _, err := s.Verify(h2, body, t0); !errors.Is(err, wh.ErrBadSignature) {
					t.Errorf("%s changed: err = %v, want ErrBadSignature", k, err)
				}
			}
		})
	}
}

// Each failure is told apart with errors.Is, carries its type through
// errors.As, and never shows a secret or a signature.
func TestVerifyErrors(t *testing.T) {
	t.Parallel()
	schemes := newSchemes(t, secretNew)
	type tc struct {
		scheme string
		mutate func(h http.Header)
		want   error
		header string // for *HeaderError
	}
	set := func(k, v string) func(http.Header) { return func(h http.Header) { h.Set(k, v) } }
	del := func(k string) func(http.Header) { return func(h http.Header) { h.Del(k) } }
	add := func(k, v string) func(http.Header) { return func(h http.Header) { h.Add(k, v) } }
	tests := []tc{
		{"standard-webhooks", del("webhook-id"), wh.ErrMissingHeader, "Webhook-Id"},
		{"standard-webhooks", del("webhook-timestamp"), wh.ErrMissingHeader, "Webhook-Timestamp"},
		{"standard-webhooks", del("webhook-signature"), wh.ErrMissingHeader, "Webhook-Signature"},
		{"standard-webhooks", set("webhook-timestamp", "17e8"), wh.ErrMalformedHeader, "Webhook-Timestamp"},
		{"standard-webhooks", set("webhook-timestamp", "-1"), wh.ErrMalformedHeader, "Webhook-Timestamp"},
		{"standard-webhooks", set("webhook-signature", "v2,abc v1a,xyz"), wh.ErrMalformedHeader, "Webhook-Signature"},
		{"standard-webhooks", set("webhook-signature", "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="), wh.ErrBadSignature, ""},
		{"standard-webhooks", add("webhook-signature", "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="), wh.ErrMalformedHeader, "Webhook-Signature"},
		{"stripe", del("Stripe-Signature"), wh.ErrMissingHeader, "Stripe-Signature"},
		{"stripe", set("Stripe-Signature", "v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"), wh.ErrMalformedHeader, "Stripe-Signature"},
		{"stripe", set("Stripe-Signature", "t=1750000000"), wh.ErrMalformedHeader, "Stripe-Signature"},
		{"stripe", set("Stripe-Signature", "t=1750000000,t=1750000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"), wh.ErrMalformedHeader, "Stripe-Signature"},
		{"stripe", set("Stripe-Signature", "t=abc,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"), wh.ErrMalformedHeader, "Stripe-Signature"},
		{"stripe", set("Stripe-Signature", "t=1750000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"), wh.ErrBadSignature, ""},
		{"github", del("X-Hub-Signature-256"), wh.ErrMissingHeader, "X-Hub-Signature-256"},
		{"github", set("X-Hub-Signature-256", "sha1=fb876035d1fcf10874898ecb5733ce2c5ba89c3caec7d2a2f05d3f174e1bd6af"), wh.ErrMalformedHeader, "X-Hub-Signature-256"},
		{"github", set("X-Hub-Signature-256", "sha256=fb87"), wh.ErrMalformedHeader, "X-Hub-Signature-256"},
		{"github", set("X-Hub-Signature-256", "sha256=fb876035d1fcf10874898ecb5733ce2c5ba89c3caec7d2a2f05d3f174e1bd6af"), wh.ErrBadSignature, ""},
		{"shopify", del("X-Shopify-Hmac-Sha256"), wh.ErrMissingHeader, "X-Shopify-Hmac-Sha256"},
		{"shopify", set("X-Shopify-Hmac-Sha256", "not base64!"), wh.ErrMalformedHeader, "X-Shopify-Hmac-Sha256"},
		{"shopify", set("X-Shopify-Hmac-Sha256", "ggyH15zJs5c/j9QPH8o6KQKG7N3F+Cl2rUa+KUjqzgs="), wh.ErrBadSignature, ""},
		{"slack", del("X-Slack-Signature"), wh.ErrMissingHeader, "X-Slack-Signature"},
		{"slack", del("X-Slack-Request-Timestamp"), wh.ErrMissingHeader, "X-Slack-Request-Timestamp"},
		{"slack", set("X-Slack-Signature", "v1=3d9cb4f7bf0f5f102fddb1c4e88ec2138f829a0327809c853eb505c32a9b6488"), wh.ErrMalformedHeader, "X-Slack-Signature"},
		{"slack", set("X-Slack-Request-Timestamp", " 1750000000"), wh.ErrMalformedHeader, "X-Slack-Request-Timestamp"},
		{"slack", set("X-Slack-Signature", "v0=3d9cb4f7bf0f5f102fddb1c4e88ec2138f829a0327809c853eb505c32a9b6488"), wh.ErrBadSignature, ""},
		{"hmac", del("X-Signature"), wh.ErrMissingHeader, "X-Signature"},
		{"hmac", del("X-Timestamp"), wh.ErrMissingHeader, "X-Timestamp"},
		{"hmac", set("X-Signature", "fb876035d1fcf10874898ecb5733ce2c5ba89c3caec7d2a2f05d3f174e1bd6af"), wh.ErrMalformedHeader, "X-Signature"},
		{"hmac", set("X-Signature", "sha256=zz876035d1fcf10874898ecb5733ce2c5ba89c3caec7d2a2f05d3f174e1bd6af"), wh.ErrMalformedHeader, "X-Signature"},
		{"hmac", set("X-Signature", "sha256=fb876035d1fcf10874898ecb5733ce2c5ba89c3caec7d2a2f05d3f174e1bd6af"), wh.ErrBadSignature, ""},
		{"hmac-base64", set("X-Signature", "6SQKgW52/f+5+S9uiwBs2oDBrOKQSgqHvAQLh4qx55A"), wh.ErrMalformedHeader, "X-Signature"},
	}
	sentinels := []error{wh.ErrMissingHeader, wh.ErrMalformedHeader, wh.ErrBadSignature, wh.ErrStaleTimestamp,
		wh.ErrFutureTimestamp, wh.ErrBodyTooLarge, wh.ErrMalformedJSON, wh.ErrMissingID}
	for _, tt := range tests {
		s := schemes[tt.scheme]
		h := signed(t, s, "evt_42", body, t0)
		goodSig := strings.Join(append(h.Values("Webhook-Signature"), h.Values("Stripe-Signature")...), "") +
			h.Get("X-Hub-Signature-256") + h.Get("X-Shopify-Hmac-Sha256") + h.Get("X-Slack-Signature") + h.Get("X-Signature")
		tt.mutate(h)
		_, err := s.Verify(h, body, t0)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s %v: err = %v, want %v", tt.scheme, h, err, tt.want)
			continue
		}
		for _, other := range sentinels {
			if other != tt.want && errors.Is(err, other) {
				t.Errorf("%s: err %v is also %v", tt.scheme, err, other)
			}
		}
		var he *wh.HeaderError
		if tt.header != "" && (!errors.As(err, &he) || he.Header != tt.header) {
			t.Errorf("%s: err %v: want a *HeaderError for %s", tt.scheme, err, tt.header)
		}
		msg := err.Error()
		for _, secret := range []string{secretNew, strings.TrimPrefix(secretNew, "whsec_"), "new-secret-bytes"} {
			if strings.Contains(msg, secret) {
				t.Errorf("%s: message %q contains the secret", tt.scheme, msg)
			}
		}
		for _, part := range strings.FieldsFunc(goodSig, func(r rune) bool { return r == ',' || r == '=' || r == ' ' }) {
			if len(part) >= 40 && strings.Contains(msg, part) {
				t.Errorf("%s: message %q contains the expected signature", tt.scheme, msg)
			}
		}
		if !strings.HasPrefix(msg, "webhook: ") {
			t.Errorf("message %q lacks the package prefix", msg)
		}
	}
}

func TestConstructorErrors(t *testing.T) {
	t.Parallel()
	secret := "whsec_c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw=="
	cases := map[string]error{}
	_, cases["standard: none"] = wh.NewStandardWebhooks(wh.Config{})
	_, cases["standard: not base64"] = wh.NewStandardWebhooks(wh.Config{Secrets: []string{secret, "whsec_!!not-base64-secret!!"}})
	_, cases["standard: negative tolerance"] = wh.NewStandardWebhooks(wh.Config{Secrets: []string{secret}, Tolerance: -time.Second})
	_, cases["stripe: empty secret"] = wh.NewStripe(wh.Config{Secrets: []string{secret, ""}})
	_, cases["github: tolerance"] = wh.NewGitHub(wh.Config{Secrets: []string{secret}, Tolerance: time.Minute})
	_, cases["shopify: tolerance"] = wh.NewShopify(wh.Config{Secrets: []string{secret}, Tolerance: time.Minute})
	_, cases["slack: none"] = wh.NewSlack(wh.Config{})
	_, cases["hmac: no header"] = wh.NewHMAC(wh.HMACConfig{Secrets: []string{secret}})
	_, cases["hmac: bad header"] = wh.NewHMAC(wh.HMACConfig{Secrets: []string{secret}, Header: "X Sig"})
	_, cases["hmac: encoding"] = wh.NewHMAC(wh.HMACConfig{Secrets: []string{secret}, Header: "X-Sig", Encoding: "base32"})
	_, cases["hmac: tolerance without timestamp"] = wh.NewHMAC(wh.HMACConfig{Secrets: []string{secret}, Header: "X-Sig", Tolerance: time.Minute})
	for name, err := range cases {
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.Contains(err.Error(), "c2VjcmV0") || strings.Contains(err.Error(), "not-base64-secret") {
			t.Errorf("%s: %q shows a secret", name, err)
		}
	}
}

// stripe-go's own helpers and this package agree in both directions.
func TestStripeGoCompatibility(t *testing.T) {
	t.Parallel()
	const secret = "whsec_stripe_compat"
	s := must(wh.NewStripe(wh.Config{Secrets: []string{"whsec_other", secret}}))

	// stripe-go signs (its test helper, the wall clock), levee verifies.
	p := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret})
	ev, err := s.Verify(http.Header{"Stripe-Signature": {p.Header}}, p.Payload, p.Timestamp)
	if err != nil || ev.ID != "evt_42" {
		t.Fatalf("levee rejects stripe-go's signature: %v (id %q)", err, ev.ID)
	}

	// levee signs, stripe-go verifies (it checks only the last key's v1 it knows).
	one := must(wh.NewStripe(wh.Config{Secrets: []string{secret}}))
	h := signed(t, one, "", body, time.Now())
	if err := webhook.ValidatePayload(body, h.Get("Stripe-Signature"), secret); err != nil {
		t.Fatalf("stripe-go rejects levee's signature: %v", err)
	}
	if err := webhook.ValidatePayload(append([]byte("x"), body...), h.Get("Stripe-Signature"), secret); err == nil {
		t.Fatal("stripe-go accepts a tampered body: the comparison above proves nothing")
	}
}

// A Stripe body that is not JSON or has no id fails after the signature.
func TestStripeBodyID(t *testing.T) {
	t.Parallel()
	s := must(wh.NewStripe(wh.Config{Secrets: []string{"k"}}))
	for b, want := range map[string]error{`{"id":`: wh.ErrMalformedJSON, `{"object":"event"}`: wh.ErrMissingID, `[]`: wh.ErrMissingID} {
		_, err := s.Verify(signed(t, s, "", []byte(b), t0), []byte(b), t0)
		if !errors.Is(err, want) {
			t.Errorf("body %s: err = %v, want %v", b, err, want)
		}
	}
}

func TestSignNeedsID(t *testing.T) {
	t.Parallel()
	s := must(wh.NewStandardWebhooks(wh.Config{Secrets: []string{secretNew}}))
	h := http.Header{}
	if err := s.Sign(h, "", body, t0); err == nil || len(h) != 0 {
		t.Fatalf("Sign without id: err %v, headers %v", err, h)
	}
}
