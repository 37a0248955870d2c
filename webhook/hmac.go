package webhook

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Encoding is how an [HMAC] signature is written in its header.
type Encoding string

// Encodings. The zero value means EncodingHex.
const (
	EncodingHex    Encoding = "hex"    // 64 hex digits, either case
	EncodingBase64 Encoding = "base64" // standard padded base64 (44 characters)
)

// HMACConfig configures the generic [HMAC] scheme.
type HMACConfig struct {
	// Secrets as in [Config]: the current one first, each used as bytes.
	Secrets []string
	// Header carries the signature, e.g. "X-Signature". Required.
	Header string
	// Encoding of the signature; "" means EncodingHex.
	Encoding Encoding
	// Prefix, when set, must begin the header value and is not part of the
	// signature, e.g. "sha256=".
	Prefix string
	// TimestampHeader, when set, names a header holding the send time in
	// decimal Unix seconds; the signed content is then
	// "<timestamp><TimestampSeparator><body>" and the tolerance applies.
	// Without it the signed content is the body alone.
	TimestampHeader string
	// TimestampSeparator sits between timestamp and body; "" means ".".
	// Ignored without TimestampHeader.
	TimestampSeparator string
	// IDHeader, when set, names the header holding the event id.
	IDHeader string
	// Tolerance as in [Config]; only allowed with TimestampHeader.
	Tolerance time.Duration
}

// HMAC verifies a generic HMAC-SHA256 signature of the body (or of timestamp,
// separator and body) carried in a named header.
type HMAC struct {
	c    HMACConfig
	keys [][]byte
	tol  time.Duration
	sep  []byte
}

// NewHMAC returns the scheme for c. It fails, naming the field, when Header
// is empty or not a valid header name, Encoding is unknown, there is no
// secret or a secret is empty, or Tolerance is negative or set without
// TimestampHeader.
func NewHMAC(c HMACConfig) (*HMAC, error) {
	if c.Header == "" || !validHeaderName(c.Header) {
		return nil, fmt.Errorf("webhook: hmac: Header %q is not a header name", c.Header)
	}
	for _, name := range []string{c.TimestampHeader, c.IDHeader} {
		if name != "" && !validHeaderName(name) {
			return nil, fmt.Errorf("webhook: hmac: %q is not a header name", name)
		}
	}
	switch c.Encoding {
	case "":
		c.Encoding = EncodingHex
	case EncodingHex, EncodingBase64:
	default:
		return nil, fmt.Errorf("webhook: hmac: Encoding %q is not %q or %q", c.Encoding, EncodingHex, EncodingBase64)
	}
	keys, err := rawKeys("hmac", c.Secrets)
	if err != nil {
		return nil, err
	}
	h := &HMAC{keys: keys}
	if c.TimestampHeader == "" {
		if c.Tolerance != 0 {
			return nil, fmt.Errorf("webhook: hmac without TimestampHeader %w", errNoTimestamp)
		}
	} else {
		if h.tol, err = (Config{Tolerance: c.Tolerance}).tolerance("hmac"); err != nil {
			return nil, err
		}
		if c.TimestampSeparator == "" {
			c.TimestampSeparator = "."
		}
		h.sep = []byte(c.TimestampSeparator)
	}
	h.c = c
	return h, nil
}

func validHeaderName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return s != ""
}

// Name returns "hmac".
func (s *HMAC) Name() string { return "hmac" }

// Verify implements [Scheme]. The signature header (or the timestamp header,
// when configured) absent: ErrMissingHeader. Either sent twice, the prefix
// missing, the signature not in the configured encoding of 32 bytes, or a
// timestamp that is not decimal seconds: ErrMalformedHeader. No match under
// any secret: ErrBadSignature. Then, with a timestamp header, the timestamp
// outside the tolerance: ErrStaleTimestamp or ErrFutureTimestamp. The event's
// ID is the IDHeader's value (empty without one).
func (s *HMAC) Verify(h http.Header, body []byte, now time.Time) (Event, error) {
	var ts time.Time
	var tsRaw string
	if s.c.TimestampHeader != "" {
		var err error
		if tsRaw, err = headerValue(h, s.c.TimestampHeader); err != nil {
			return Event{}, err
		}
		if ts, err = parseUnix(s.c.TimestampHeader, tsRaw); err != nil {
			return Event{}, err
		}
	}
	v, err := headerValue(h, s.c.Header)
	if err != nil {
		return Event{}, err
	}
	sig, err := s.ParseSignature(v)
	if err != nil {
		return Event{}, err
	}
	var ok bool
	if s.c.TimestampHeader != "" {
		ok = matchAny(s.keys, [][]byte{sig}, []byte(tsRaw), s.sep, body)
	} else {
		ok = matchAny(s.keys, [][]byte{sig}, body)
	}
	if !ok {
		return Event{}, badSignature(s.Name(), 1)
	}
	if s.c.TimestampHeader != "" {
		if err := checkTimestamp(ts, now, s.tol); err != nil {
			return Event{}, err
		}
	}
	ev := Event{Scheme: s.Name(), Timestamp: ts, Header: h, Body: body}
	if s.c.IDHeader != "" {
		ev.ID = h.Get(s.c.IDHeader)
	}
	return ev, nil
}

// ParseSignature decodes a signature header value: the configured Prefix,
// then 32 bytes in the configured Encoding. Anything else is a *HeaderError
// wrapping ErrMalformedHeader.
func (s *HMAC) ParseSignature(v string) ([]byte, error) {
	rest, ok := strings.CutPrefix(v, s.c.Prefix)
	if !ok {
		return nil, malformedHeader(s.c.Header, fmt.Sprintf("no %q prefix", s.c.Prefix))
	}
	var sig []byte
	var err error
	if s.c.Encoding == EncodingBase64 {
		sig, err = decodeSig32(rest)
	} else {
		sig, err = decodeHex(rest)
	}
	if err != nil {
		return nil, malformedHeader(s.c.Header, fmt.Sprintf("not %s of 32 bytes", s.c.Encoding))
	}
	return sig, nil
}

// Sign implements [Signer]: it sets the signature header (first secret),
// the timestamp header (at in Unix seconds) when configured, and the id
// header when configured and id is not empty. With a timestamp header it
// fails for at before 1970 (and sets nothing).
func (s *HMAC) Sign(h http.Header, id string, body []byte, at time.Time) error {
	var sum []byte
	if s.c.TimestampHeader != "" {
		ts, err := unixString(s.Name(), at)
		if err != nil {
			return err
		}
		h.Set(s.c.TimestampHeader, ts)
		sum = mac(s.keys[0], []byte(ts), s.sep, body)
	} else {
		sum = mac(s.keys[0], body)
	}
	enc := hex.EncodeToString(sum)
	if s.c.Encoding == EncodingBase64 {
		enc = base64.StdEncoding.EncodeToString(sum)
	}
	h.Set(s.c.Header, s.c.Prefix+enc)
	if s.c.IDHeader != "" && id != "" {
		h.Set(s.c.IDHeader, id)
	}
	return nil
}
