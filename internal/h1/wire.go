package h1

import "strings"

// The wire-level helpers every part of the engine shares: one
// implementation each of RFC 9110's token, field value and comma-list
// rules.

// Token reports whether s is a non-empty RFC 9110 token.
func Token(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// ValidFieldValue reports whether s holds no control character but HTAB
// (net/http's httpguts.ValidHeaderFieldValue).
func ValidFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// HasToken reports whether a comma-separated header value list contains
// tok (case-insensitively).
func HasToken(vs []string, tok string) bool {
	for _, v := range vs {
		for t := range Tokens(v) {
			if strings.EqualFold(t, tok) {
				return true
			}
		}
	}
	return false
}

// Tokens yields the elements of a comma list, without optional
// whitespace (space, tab), empty ones skipped.
func Tokens(v string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for len(v) > 0 {
			i := 0
			for i < len(v) && v[i] != ',' {
				i++
			}
			t := trimOWS(v[:i])
			if i < len(v) {
				v = v[i+1:]
			} else {
				v = ""
			}
			if t != "" && !yield(t) {
				return
			}
		}
	}
}

func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
