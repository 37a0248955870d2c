package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is the distance allowed between a signed timestamp and the
// receiver's clock, in either direction, when Config.Tolerance is zero. It is
// the value Stripe, Slack and the Standard Webhooks libraries use.
const DefaultTolerance = 5 * time.Minute

// Event is a webhook whose signature was verified.
type Event struct {
	// Scheme is the name of the scheme that verified it ("stripe", ...).
	Scheme string
	// Source is the handler's Options.Source (empty from Verify alone).
	Source string
	// ID identifies the event for dedupe: the scheme's id header, or what
	// the handler's Options.IDPath selects in the body. Empty when neither
	// carries one.
	ID string
	// Timestamp is the signed time; zero for schemes that sign none
	// (GitHub, Shopify, HMAC without a timestamp header).
	Timestamp time.Time
	// Header is the request's header as received; Body the raw body the
	// signature covers. Both alias the caller's data: Verify copies nothing.
	Header http.Header
	Body   []byte
}

// Scheme verifies one provider's signatures.
type Scheme interface {
	// Name is the scheme's stable name: "standard-webhooks", "stripe",
	// "github", "shopify", "slack" or "hmac".
	Name() string
	// Verify checks body against the signature headers in h under every
	// configured secret, and the signed timestamp (if the scheme has one)
	// against now. It returns the verified event, or an error wrapping
	// ErrMissingHeader or ErrMalformedHeader (as a *HeaderError),
	// ErrBadSignature, or ErrStaleTimestamp or ErrFutureTimestamp (as a
	// *TimestampError; checked only after a signature matched, so these
	// mean an authentic but replayed or mis-clocked event). A scheme that
	// reads the id from the body (Stripe) then also returns
	// ErrMalformedJSON or ErrMissingID. Verify does not modify h or body.
	Verify(h http.Header, body []byte, now time.Time) (Event, error)
}

// Signer signs outgoing webhooks. Every scheme in this package is a Signer:
// tests sign and verify round trips with it, and levee's own outbound
// webhooks use it.
type Signer interface {
	// Sign sets on h the headers a receiver of this scheme verifies: the
	// signature over body at time at (schemes that sign several signatures
	// sign once per configured secret, so receivers holding either secret
	// accept it during a rotation; the others sign with the first secret)
	// and, where the scheme has them, the id and timestamp headers. It
	// returns an error, and sets nothing, when the scheme needs an id and
	// id is empty.
	Sign(h http.Header, id string, body []byte, at time.Time) error
}

// Config is what every scheme except [HMAC] is built from.
type Config struct {
	// Secrets are the signing secrets, the current one first (Sign uses
	// it); a signature matching any of them is accepted, so a secret is
	// rotated by adding the new one, switching the sender, then removing
	// the old one. At least one is required; an empty secret is refused.
	// StandardWebhooks expects the "whsec_" base64 form; the other schemes
	// use the secret's bytes as given (Stripe's "whsec_..." included).
	Secrets []string
	// Tolerance is the largest distance allowed between the signed
	// timestamp and now, in either direction; a timestamp exactly
	// Tolerance away is accepted. Zero means DefaultTolerance (5 minutes);
	// negative is refused. Schemes that sign no timestamp (GitHub, Shopify)
	// refuse a non-zero Tolerance rather than ignore it.
	Tolerance time.Duration
}

func (c Config) tolerance(scheme string) (time.Duration, error) {
	switch {
	case c.Tolerance < 0:
		return 0, fmt.Errorf("webhook: %s: Tolerance is negative (%s)", scheme, c.Tolerance)
	case c.Tolerance == 0:
		return DefaultTolerance, nil
	}
	return c.Tolerance, nil
}

// rawKeys returns the secrets as bytes, refusing an empty list or secret.
// Messages name a secret by its index, never by its value.
func rawKeys(scheme string, secrets []string) ([][]byte, error) {
	if len(secrets) == 0 {
		return nil, fmt.Errorf("webhook: %s: no secret configured", scheme)
	}
	keys := make([][]byte, len(secrets))
	for i, s := range secrets {
		if s == "" {
			return nil, fmt.Errorf("webhook: %s: secret %d is empty", scheme, i)
		}
		keys[i] = []byte(s)
	}
	return keys, nil
}

var errNoTimestamp = errors.New("signs no timestamp; Tolerance must be 0")

// maxTimestampDigits bounds a decimal Unix time: 12 digits reach year 33658,
// and the bound keeps time arithmetic far from overflow.
const maxTimestampDigits = 12

// parseUnix parses a decimal Unix time in seconds: ASCII digits only (no
// sign, no spaces, no fraction), at most maxTimestampDigits.
func parseUnix(header, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, malformedHeader(header, "empty timestamp")
	}
	if len(v) > maxTimestampDigits {
		return time.Time{}, malformedHeader(header, "timestamp too long")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return time.Time{}, malformedHeader(header, "timestamp is not a decimal Unix time")
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil { // unreachable with the checks above; kept for safety
		return time.Time{}, malformedHeader(header, "timestamp is not a decimal Unix time")
	}
	return time.Unix(n, 0), nil
}

var errBeforeEpoch = errors.New("the signing time is before 1970")

// unixString formats at as the decimal Unix seconds receivers parse; a time
// before 1970 cannot be written so.
func unixString(scheme string, at time.Time) (string, error) {
	if at.Unix() < 0 {
		return "", fmt.Errorf("webhook: %s: %w", scheme, errBeforeEpoch)
	}
	return strconv.FormatInt(at.Unix(), 10), nil
}

// decodeSig32 decodes exactly 32 bytes of canonical, padded standard base64.
// encoding/base64 skips \r and \n even in Strict mode; they are refused here
// so one signature has one spelling.
func decodeSig32(s string) ([]byte, error) {
	if len(s) != base64.StdEncoding.EncodedLen(32) || strings.ContainsAny(s, "\r\n") {
		return nil, base64.CorruptInputError(0)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err == nil && len(b) != 32 {
		return nil, base64.CorruptInputError(len(s) - 1)
	}
	return b, err
}

// checkTimestamp accepts ts when now-tol <= ts <= now+tol.
func checkTimestamp(ts, now time.Time, tol time.Duration) error {
	d := now.Sub(ts)
	switch {
	case d > tol:
		return &TimestampError{Timestamp: ts, Now: now, Tolerance: tol, Err: ErrStaleTimestamp}
	case d < -tol:
		return &TimestampError{Timestamp: ts, Now: now, Tolerance: tol, Err: ErrFutureTimestamp}
	}
	return nil
}

// mac computes HMAC-SHA256 over the concatenation of parts.
func mac(key []byte, parts ...[]byte) []byte {
	var m hash.Hash = hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(make([]byte, 0, sha256.Size))
}

// matchAny reports whether any candidate equals the HMAC of parts under any
// key, comparing in constant time (hmac.Equal). Every key is tried against
// every candidate, so the time taken does not depend on which matched.
func matchAny(keys [][]byte, candidates [][]byte, parts ...[]byte) bool {
	ok := false
	for _, k := range keys {
		want := mac(k, parts...)
		for _, c := range candidates {
			if hmac.Equal(want, c) {
				ok = true
			}
		}
	}
	return ok
}

// badSignature says how many signatures were checked, not against how many
// secrets: the message reaches the sender, who need not learn that a
// rotation is under way.
func badSignature(scheme string, sigs int) error {
	return fmt.Errorf("%w (%s: %d signature(s) checked)", ErrBadSignature, scheme, sigs)
}

// headerValue returns the single value of header name; a header sent more
// than once is malformed (a second signature header is not a rotation
// mechanism of any scheme here, and accepting it would make the header
// ambiguous).
func headerValue(h http.Header, name string) (string, error) {
	vs := h.Values(name)
	switch {
	case len(vs) == 0 || (len(vs) == 1 && vs[0] == ""):
		return "", missingHeader(name)
	case len(vs) > 1:
		return "", malformedHeader(name, "sent more than once")
	}
	return vs[0], nil
}
