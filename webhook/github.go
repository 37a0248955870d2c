package webhook

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// GitHub header names.
const (
	HeaderGitHubSignature = "X-Hub-Signature-256"
	HeaderGitHubDelivery  = "X-GitHub-Delivery"
)

// GitHub verifies GitHub's scheme: X-Hub-Signature-256 is
// "sha256=<hex HMAC-SHA256 of the body>" with the webhook secret's bytes as
// the key; the event id is X-GitHub-Delivery (a redelivery keeps it). GitHub
// signs no timestamp, so replays are stopped only by deduping on the id. The
// legacy SHA-1 X-Hub-Signature is not accepted.
type GitHub struct {
	keys [][]byte
}

// NewGitHub returns the scheme for c. It fails when there is no secret, a
// secret is empty, or Tolerance is set (GitHub signs no timestamp).
func NewGitHub(c Config) (*GitHub, error) {
	if c.Tolerance != 0 {
		return nil, fmt.Errorf("webhook: github %w", errNoTimestamp)
	}
	keys, err := rawKeys("github", c.Secrets)
	if err != nil {
		return nil, err
	}
	return &GitHub{keys: keys}, nil
}

// Name returns "github".
func (g *GitHub) Name() string { return "github" }

// Verify implements [Scheme]. No X-Hub-Signature-256: ErrMissingHeader. The
// header sent twice, or a value that is not "sha256=" and 64 hex digits:
// ErrMalformedHeader. No match under any secret: ErrBadSignature. The event's
// ID is X-GitHub-Delivery, empty when absent (a Handler with a Dedupe then
// answers ErrMissingID).
func (g *GitHub) Verify(h http.Header, body []byte, _ time.Time) (Event, error) {
	v, err := headerValue(h, HeaderGitHubSignature)
	if err != nil {
		return Event{}, err
	}
	hexSig, ok := strings.CutPrefix(v, "sha256=")
	if !ok {
		return Event{}, malformedHeader(HeaderGitHubSignature, `no "sha256=" prefix`)
	}
	sig, err := decodeHex(hexSig)
	if err != nil {
		return Event{}, malformedHeader(HeaderGitHubSignature, "not 64 hex digits")
	}
	if !matchAny(g.keys, [][]byte{sig}, body) {
		return Event{}, badSignature(g.Name(), 1)
	}
	return Event{Scheme: g.Name(), ID: h.Get(HeaderGitHubDelivery), Header: h, Body: body}, nil
}

// Sign implements [Signer]: it sets X-Hub-Signature-256 (first secret) and,
// when id is not empty, X-GitHub-Delivery. It never fails.
func (g *GitHub) Sign(h http.Header, id string, body []byte, _ time.Time) error {
	h.Set(HeaderGitHubSignature, "sha256="+hex.EncodeToString(mac(g.keys[0], body)))
	if id != "" {
		h.Set(HeaderGitHubDelivery, id)
	}
	return nil
}

// decodeHex decodes exactly 32 bytes of hex (either case).
func decodeHex(s string) ([]byte, error) {
	if len(s) != 2*sha256.Size {
		return nil, hex.ErrLength
	}
	return hex.DecodeString(s)
}
