package webhook

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Standard Webhooks header names (https://www.standardwebhooks.com).
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
)

// StandardWebhooks verifies the Standard Webhooks scheme (also Svix's):
// webhook-signature holds space-separated "v1,<base64 HMAC-SHA256>" entries
// over "<webhook-id>.<webhook-timestamp>.<body>", webhook-timestamp is a Unix
// time in seconds, and webhook-id is the event id. Several entries let a
// sender sign with an old and a new secret during a rotation. Entries of
// other versions (such as the asymmetric "v1a") and v1 values that are not
// the base64 of 32 bytes are ignored.
type StandardWebhooks struct {
	keys [][]byte
	tol  time.Duration
}

// NewStandardWebhooks returns the scheme for c. Each secret is "whsec_"
// followed by standard base64 (the prefix is optional); the decoded bytes are
// the HMAC key. It fails when there is no secret, a secret is empty or not
// base64 (the message gives its index, not its value), or Tolerance is
// negative.
func NewStandardWebhooks(c Config) (*StandardWebhooks, error) {
	const name = "standard-webhooks"
	tol, err := c.tolerance(name)
	if err != nil {
		return nil, err
	}
	if len(c.Secrets) == 0 {
		return nil, fmt.Errorf("webhook: %s: no secret configured", name)
	}
	keys := make([][]byte, len(c.Secrets))
	for i, s := range c.Secrets {
		k, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
		if err != nil || len(k) == 0 {
			return nil, fmt.Errorf("webhook: %s: secret %d is not whsec_ followed by base64", name, i)
		}
		keys[i] = k
	}
	return &StandardWebhooks{keys: keys, tol: tol}, nil
}

// Name returns "standard-webhooks".
func (s *StandardWebhooks) Name() string { return "standard-webhooks" }

// Verify implements [Scheme]. Missing webhook-id, webhook-timestamp or
// webhook-signature: ErrMissingHeader. A timestamp that is not decimal
// seconds, a header sent twice, or a signature header without a usable v1
// entry: ErrMalformedHeader. No v1 entry matching under any secret:
// ErrBadSignature. Then the timestamp outside the tolerance:
// ErrStaleTimestamp or ErrFutureTimestamp. The event's ID is webhook-id.
func (s *StandardWebhooks) Verify(h http.Header, body []byte, now time.Time) (Event, error) {
	id, err := headerValue(h, HeaderWebhookID)
	if err != nil {
		return Event{}, err
	}
	tsRaw, err := headerValue(h, HeaderWebhookTimestamp)
	if err != nil {
		return Event{}, err
	}
	ts, err := parseUnix(HeaderWebhookTimestamp, tsRaw)
	if err != nil {
		return Event{}, err
	}
	sigHeader, err := headerValue(h, HeaderWebhookSignature)
	if err != nil {
		return Event{}, err
	}
	sigs, err := ParseStandardSignatures(sigHeader)
	if err != nil {
		return Event{}, err
	}
	if !matchAny(s.keys, sigs, []byte(id), dot, []byte(tsRaw), dot, body) {
		return Event{}, badSignature(s.Name(), len(sigs))
	}
	if err := checkTimestamp(ts, now, s.tol); err != nil {
		return Event{}, err
	}
	return Event{Scheme: s.Name(), ID: id, Timestamp: ts, Header: h, Body: body}, nil
}

var dot = []byte{'.'}

// ParseStandardSignatures parses a webhook-signature value into the raw v1
// signatures it carries, in order. Entries are separated by one or more
// spaces; each is "<version>,<value>". Entries of another version, entries
// without a comma and v1 values that are not the standard base64 of 32 bytes
// are skipped. It returns a *HeaderError wrapping ErrMalformedHeader when no
// v1 signature remains.
func ParseStandardSignatures(v string) ([][]byte, error) {
	var sigs [][]byte
	for _, entry := range strings.Split(v, " ") {
		version, value, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue
		}
		sig, err := decodeSig32(value)
		if err != nil {
			continue
		}
		sigs = append(sigs, sig)
	}
	if len(sigs) == 0 {
		return nil, malformedHeader(HeaderWebhookSignature, "no v1 signature")
	}
	return sigs, nil
}

var errNeedID = errors.New("an event id is required")

// Sign implements [Signer]: it sets webhook-id to id, webhook-timestamp to
// at in Unix seconds and webhook-signature to one "v1,..." entry per secret.
// An empty id, or at before 1970, is an error.
func (s *StandardWebhooks) Sign(h http.Header, id string, body []byte, at time.Time) error {
	if id == "" {
		return fmt.Errorf("webhook: %s: %w", s.Name(), errNeedID)
	}
	ts, err := unixString(s.Name(), at)
	if err != nil {
		return err
	}
	entries := make([]string, len(s.keys))
	for i, k := range s.keys {
		entries[i] = "v1," + base64.StdEncoding.EncodeToString(mac(k, []byte(id), dot, []byte(ts), dot, body))
	}
	h.Set(HeaderWebhookID, id)
	h.Set(HeaderWebhookTimestamp, ts)
	h.Set(HeaderWebhookSignature, strings.Join(entries, " "))
	return nil
}
