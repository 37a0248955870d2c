package idempotency

import (
	"errors"
	"fmt"
	"strings"
)

// MaxKeyLen is the longest idempotency key accepted, in bytes.
const MaxKeyLen = 255

// ErrInvalidKey is wrapped by ParseKey for every malformed key.
var ErrInvalidKey = errors.New("idempotency: invalid key")

// ParseKey parses one Idempotency-Key field value. It accepts the RFC 8941
// sf-string form ("abc", with \" and \\ escapes) and the bare form (abc);
// both yield abc. The key must be 1 to 255 visible ASCII characters
// (0x21-0x7E) once unquoted. Parameters (";p=1") and inner lists are
// refused. Errors wrap ErrInvalidKey and say what is wrong.
func ParseKey(v string) (string, error) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidKey)
	}
	if v[0] != '"' {
		if err := checkVisible(v); err != nil {
			return "", err
		}
		return v, nil
	}
	// sf-string: DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE
	var b strings.Builder
	i := 1
	for ; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i >= len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", fmt.Errorf("%w: bad escape in quoted key", ErrInvalidKey)
			}
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", fmt.Errorf("%w: unexpected characters after quoted key (parameters are not supported)", ErrInvalidKey)
			}
			k := b.String()
			if k == "" {
				return "", fmt.Errorf("%w: empty", ErrInvalidKey)
			}
			if err := checkVisible(k); err != nil {
				return "", err
			}
			return k, nil
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("%w: non-ASCII or control character in quoted key", ErrInvalidKey)
		default:
			b.WriteByte(c)
		}
	}
	return "", fmt.Errorf("%w: unterminated quoted key", ErrInvalidKey)
}

func checkVisible(k string) error {
	if len(k) > MaxKeyLen {
		return fmt.Errorf("%w: %d characters, the limit is %d", ErrInvalidKey, len(k), MaxKeyLen)
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: character %q at offset %d is not visible ASCII", ErrInvalidKey, c, i)
		}
	}
	return nil
}
