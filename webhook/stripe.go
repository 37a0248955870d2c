package webhook

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"time"
)

// HeaderStripeSignature is Stripe's signature header.
const HeaderStripeSignature = "Stripe-Signature"

// Stripe verifies Stripe's scheme: Stripe-Signature is
// "t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=...]" over "<t>.<body>", with
// the endpoint secret's bytes ("whsec_..." as shown in the dashboard, not
// decoded) as the key. Stripe sends several v1 values while an endpoint
// secret is being rolled; v0 and other keys are ignored. The event id is the
// top-level "id" of the JSON body.
//
// stripe-go's webhook package is not used for verification: it reads the
// wall clock, accepts any future timestamp, takes one secret and its
// ConstructEvent also decodes the whole event and checks its API version;
// the tests check this type against it in both directions.
type Stripe struct {
	keys [][]byte
	tol  time.Duration
}

// NewStripe returns the scheme for c. It fails when there is no secret, a
// secret is empty, or Tolerance is negative.
func NewStripe(c Config) (*Stripe, error) {
	tol, err := c.tolerance("stripe")
	if err != nil {
		return nil, err
	}
	keys, err := rawKeys("stripe", c.Secrets)
	if err != nil {
		return nil, err
	}
	return &Stripe{keys: keys, tol: tol}, nil
}

// Name returns "stripe".
func (s *Stripe) Name() string { return "stripe" }

// Verify implements [Scheme]. No Stripe-Signature: ErrMissingHeader. A
// header sent twice, an element without "=", a missing, repeated or
// non-decimal t, or no v1 value that is 64 hex digits: ErrMalformedHeader.
// No v1 matching under any secret: ErrBadSignature. Then t outside the
// tolerance: ErrStaleTimestamp or ErrFutureTimestamp. Then the body not
// JSON: ErrMalformedJSON; no string "id" member: ErrMissingID.
func (s *Stripe) Verify(h http.Header, body []byte, now time.Time) (Event, error) {
	v, err := headerValue(h, HeaderStripeSignature)
	if err != nil {
		return Event{}, err
	}
	tsRaw, sigs, err := ParseStripeSignature(v)
	if err != nil {
		return Event{}, err
	}
	ts, err := parseUnix(HeaderStripeSignature, tsRaw)
	if err != nil {
		return Event{}, err
	}
	if !matchAny(s.keys, sigs, []byte(tsRaw), dot, body) {
		return Event{}, badSignature(s.Name(), len(sigs))
	}
	if err := checkTimestamp(ts, now, s.tol); err != nil {
		return Event{}, err
	}
	id, err := IDFromJSON(body, "id")
	if err != nil {
		return Event{}, err
	}
	return Event{Scheme: s.Name(), ID: id, Timestamp: ts, Header: h, Body: body}, nil
}

// ParseStripeSignature splits a Stripe-Signature value into its raw t value
// and its v1 signatures. Elements are "key=value" separated by commas
// (spaces around an element are ignored); keys other than t and v1, and v1
// values that are not 64 hex digits, are skipped. It returns a *HeaderError
// wrapping ErrMalformedHeader for an element without "=", no t or more than
// one t, or no usable v1. The t value is not parsed here.
func ParseStripeSignature(v string) (t string, sigs [][]byte, err error) {
	seenT := false
	for _, el := range strings.Split(v, ",") {
		key, value, ok := strings.Cut(strings.TrimSpace(el), "=")
		if !ok {
			return "", nil, malformedHeader(HeaderStripeSignature, "element without '='")
		}
		switch key {
		case "t":
			if seenT {
				return "", nil, malformedHeader(HeaderStripeSignature, "t given more than once")
			}
			seenT, t = true, value
		case "v1":
			if len(value) != 2*sha256.Size {
				continue
			}
			sig, err := hex.DecodeString(value)
			if err != nil {
				continue
			}
			sigs = append(sigs, sig)
		}
	}
	if !seenT {
		return "", nil, malformedHeader(HeaderStripeSignature, "no t= timestamp")
	}
	if len(sigs) == 0 {
		return "", nil, malformedHeader(HeaderStripeSignature, "no v1 signature")
	}
	return t, sigs, nil
}

// Sign implements [Signer]: it sets Stripe-Signature to t=<at> and one v1
// per secret. Stripe carries the event id in the body, so id is not used.
// It fails only for at before 1970.
func (s *Stripe) Sign(h http.Header, _ string, body []byte, at time.Time) error {
	ts, err := unixString(s.Name(), at)
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(ts)
	for _, k := range s.keys {
		b.WriteString(",v1=")
		b.WriteString(hex.EncodeToString(mac(k, []byte(ts), dot, body)))
	}
	h.Set(HeaderStripeSignature, b.String())
	return nil
}
