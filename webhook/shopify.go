package webhook

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"time"
)

// Shopify header names.
const (
	HeaderShopifyHmac      = "X-Shopify-Hmac-Sha256"
	HeaderShopifyEventID   = "X-Shopify-Event-Id"
	HeaderShopifyWebhookID = "X-Shopify-Webhook-Id"
)

// Shopify verifies Shopify's scheme: X-Shopify-Hmac-Sha256 is the standard
// base64 of HMAC-SHA256 of the body, keyed with the app's client secret
// bytes. The event id is X-Shopify-Event-Id, which Shopify documents as the
// duplicate-detection key, or X-Shopify-Webhook-Id when the former is
// absent. Shopify signs no timestamp (X-Shopify-Triggered-At is not covered
// by the HMAC), so replays are stopped only by deduping on the id.
type Shopify struct {
	keys [][]byte
}

// NewShopify returns the scheme for c. It fails when there is no secret, a
// secret is empty, or Tolerance is set (Shopify signs no timestamp).
func NewShopify(c Config) (*Shopify, error) {
	if c.Tolerance != 0 {
		return nil, fmt.Errorf("webhook: shopify %w", errNoTimestamp)
	}
	keys, err := rawKeys("shopify", c.Secrets)
	if err != nil {
		return nil, err
	}
	return &Shopify{keys: keys}, nil
}

// Name returns "shopify".
func (s *Shopify) Name() string { return "shopify" }

// Verify implements [Scheme]. No X-Shopify-Hmac-Sha256: ErrMissingHeader.
// The header sent twice, or not the standard base64 of 32 bytes:
// ErrMalformedHeader. No match under any secret: ErrBadSignature. The event's
// ID is X-Shopify-Event-Id, else X-Shopify-Webhook-Id, else empty.
func (s *Shopify) Verify(h http.Header, body []byte, _ time.Time) (Event, error) {
	v, err := headerValue(h, HeaderShopifyHmac)
	if err != nil {
		return Event{}, err
	}
	sig, err := decodeSig32(v)
	if err != nil {
		return Event{}, malformedHeader(HeaderShopifyHmac, "not the base64 of 32 bytes")
	}
	if !matchAny(s.keys, [][]byte{sig}, body) {
		return Event{}, badSignature(s.Name(), 1)
	}
	id := h.Get(HeaderShopifyEventID)
	if id == "" {
		id = h.Get(HeaderShopifyWebhookID)
	}
	return Event{Scheme: s.Name(), ID: id, Header: h, Body: body}, nil
}

// Sign implements [Signer]: it sets X-Shopify-Hmac-Sha256 (first secret)
// and, when id is not empty, X-Shopify-Event-Id and X-Shopify-Webhook-Id. It
// never fails.
func (s *Shopify) Sign(h http.Header, id string, body []byte, _ time.Time) error {
	h.Set(HeaderShopifyHmac, base64.StdEncoding.EncodeToString(mac(s.keys[0], body)))
	if id != "" {
		h.Set(HeaderShopifyEventID, id)
		h.Set(HeaderShopifyWebhookID, id)
	}
	return nil
}
