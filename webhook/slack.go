package webhook

import (
	"encoding/hex"
	"net/http"
	"strings"
	"time"
)

// Slack header names.
const (
	HeaderSlackSignature = "X-Slack-Signature"
	HeaderSlackTimestamp = "X-Slack-Request-Timestamp"
)

// Slack verifies Slack's signing-secret scheme: X-Slack-Signature is
// "v0=<hex HMAC-SHA256>" over "v0:<X-Slack-Request-Timestamp>:<body>", keyed
// with the signing secret's bytes. Slack sends no event id header: for the
// Events API set the Handler's IDPath to "event_id" (slash commands and
// interactivity payloads are form-encoded and carry none).
type Slack struct {
	keys [][]byte
	tol  time.Duration
}

// NewSlack returns the scheme for c. It fails when there is no secret, a
// secret is empty, or Tolerance is negative.
func NewSlack(c Config) (*Slack, error) {
	tol, err := c.tolerance("slack")
	if err != nil {
		return nil, err
	}
	keys, err := rawKeys("slack", c.Secrets)
	if err != nil {
		return nil, err
	}
	return &Slack{keys: keys, tol: tol}, nil
}

// Name returns "slack".
func (s *Slack) Name() string { return "slack" }

var slackPrefix = []byte("v0:")

// Verify implements [Scheme]. No X-Slack-Signature or
// X-Slack-Request-Timestamp: ErrMissingHeader. Either sent twice, a
// timestamp that is not decimal seconds, or a signature that is not "v0="
// and 64 hex digits: ErrMalformedHeader. No match under any secret:
// ErrBadSignature. Then the timestamp outside the tolerance:
// ErrStaleTimestamp or ErrFutureTimestamp. The event's ID is empty.
func (s *Slack) Verify(h http.Header, body []byte, now time.Time) (Event, error) {
	tsRaw, err := headerValue(h, HeaderSlackTimestamp)
	if err != nil {
		return Event{}, err
	}
	ts, err := parseUnix(HeaderSlackTimestamp, tsRaw)
	if err != nil {
		return Event{}, err
	}
	v, err := headerValue(h, HeaderSlackSignature)
	if err != nil {
		return Event{}, err
	}
	sig, err := ParseSlackSignature(v)
	if err != nil {
		return Event{}, err
	}
	if !matchAny(s.keys, [][]byte{sig}, slackPrefix, []byte(tsRaw), []byte{':'}, body) {
		return Event{}, badSignature(s.Name(), 1)
	}
	if err := checkTimestamp(ts, now, s.tol); err != nil {
		return Event{}, err
	}
	return Event{Scheme: s.Name(), Timestamp: ts, Header: h, Body: body}, nil
}

// ParseSlackSignature decodes an X-Slack-Signature value: "v0=" followed by
// 64 hex digits (either case). Anything else is a *HeaderError wrapping
// ErrMalformedHeader.
func ParseSlackSignature(v string) ([]byte, error) {
	hexSig, ok := strings.CutPrefix(v, "v0=")
	if !ok {
		return nil, malformedHeader(HeaderSlackSignature, `no "v0=" prefix`)
	}
	sig, err := decodeHex(hexSig)
	if err != nil {
		return nil, malformedHeader(HeaderSlackSignature, "not 64 hex digits")
	}
	return sig, nil
}

// Sign implements [Signer]: it sets X-Slack-Request-Timestamp to at in Unix
// seconds and X-Slack-Signature (first secret). Slack has no id header, so
// id is not used. It fails only for at before 1970.
func (s *Slack) Sign(h http.Header, _ string, body []byte, at time.Time) error {
	ts, err := unixString(s.Name(), at)
	if err != nil {
		return err
	}
	h.Set(HeaderSlackTimestamp, ts)
	h.Set(HeaderSlackSignature, "v0="+hex.EncodeToString(mac(s.keys[0], slackPrefix, []byte(ts), []byte{':'}, body)))
	return nil
}
