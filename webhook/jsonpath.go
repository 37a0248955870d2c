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
	cur := json.RawMessage(body)
	for seg := range strings.SplitSeq(path, ".") {
		cur = bytes.TrimLeft(cur, " \t\r\n")
		if len(cur) == 0 || cur[0] != '{' {
			return "", fmt.Errorf("%w: %q: %q is not inside an object", ErrMissingID, path, seg)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(cur, &obj); err != nil { // valid JSON: not expected
			return "", fmt.Errorf("%w: %v", ErrMalformedJSON, err)
		}
		next, ok := obj[seg]
		if !ok {
			return "", fmt.Errorf("%w: %q: no member %q", ErrMissingID, path, seg)
		}
		cur = next
	}
	cur = bytes.TrimSpace(cur)
	switch {
	case len(cur) > 0 && cur[0] == '"':
		var s string
		if err := json.Unmarshal(cur, &s); err != nil {
			return "", fmt.Errorf("%w: %v", ErrMalformedJSON, err)
		}
		if s == "" {
			return "", fmt.Errorf("%w: %q is an empty string", ErrMissingID, path)
		}
		return s, nil
	case len(cur) > 0 && (cur[0] == '-' || cur[0] >= '0' && cur[0] <= '9'):
		return string(cur), nil
	}
	return "", fmt.Errorf("%w: %q is not a string or a number", ErrMissingID, path)
}
