package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// ValidateIDPath checks an id path: one or more object member names
// separated by dots, e.g. "id" or "data.object.id". A name cannot be empty
// or contain a dot; there are no array indexes, wildcards or escapes. It
// returns an error naming the problem.
func ValidateIDPath(path string) error {
	if path == "" {
		return fmt.Errorf("webhook: id path is empty")
	}
	for i, seg := range strings.Split(path, ".") {
		if seg == "" {
			return fmt.Errorf("webhook: id path %q: segment %d is empty", path, i+1)
		}
	}
	return nil
}

// IDFromJSON returns the event id that path (see [ValidateIDPath]) selects
// in the JSON document body. A string is returned unquoted; a number as its
// literal text (so 12345678901234567890 keeps every digit). With duplicate
// member names the last one wins, as in encoding/json.
//
// A body that is not valid JSON wraps ErrMalformedJSON. A path that is
// invalid, that does not exist (including when a segment meets a value that
// is not an object), or that selects null, an empty string, a boolean, an
// array or an object wraps ErrMissingID.
func IDFromJSON(body []byte, path string) (string, error) {
	if err := ValidateIDPath(path); err != nil {
		return "", fmt.Errorf("%w: %v", ErrMissingID, err)
	}
	if !json.Valid(body) {
		return "", fmt.Errorf("%w: the body is not valid JSON", ErrMalformedJSON)
	}
	// body is valid JSON from here on, so the walk below only needs to find
	// where values end, not to check them.
	i := skipSpace(body, 0)
	for seg := range strings.SplitSeq(path, ".") {
		if body[i] != '{' {
			return "", fmt.Errorf("%w: %q: %q is not inside an object", ErrMissingID, path, seg)
		}
		j, ok := member(body, i, seg)
		if !ok {
			return "", fmt.Errorf("%w: %q: no member %q", ErrMissingID, path, seg)
		}
		i = j
	}
	v := body[i:skipValue(body, i)]
	switch {
	case v[0] == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil { // valid JSON: not expected
			return "", fmt.Errorf("%w: %v", ErrMalformedJSON, err)
		}
		if s == "" {
			return "", fmt.Errorf("%w: %q is an empty string", ErrMissingID, path)
		}
		return s, nil
	case v[0] == '-' || v[0] >= '0' && v[0] <= '9':
		return string(v), nil
	}
	return "", fmt.Errorf("%w: %q is not a string or a number", ErrMissingID, path)
}

// The helpers below walk a document already checked by json.Valid.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; ; i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

// skipValue returns the index after the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	for i < len(b) && strings.IndexByte(",}] \t\r\n", b[i]) < 0 {
		i++ // a number, true, false or null
	}
	return i
}

// member returns where the value of the last member named name starts in
// the object at b[i] == '{' (the last, as encoding/json decodes duplicates).
func member(b []byte, i int, name string) (int, bool) {
	found, at := false, 0
	i = skipSpace(b, i+1)
	for b[i] != '}' {
		end := skipString(b, i)
		key := b[i+1 : end-1]
		match := string(key) == name
		if !match && bytes.IndexByte(key, '\\') >= 0 { // an escaped key: decode it
			var k string
			match = json.Unmarshal(b[i:end], &k) == nil && k == name
		}
		i = skipSpace(b, skipSpace(b, end)+1) // past ':'
		if match {
			found, at = true, i
		}
		i = skipSpace(b, skipValue(b, i))
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return at, found
}
