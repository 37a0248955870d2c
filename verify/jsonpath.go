package verify

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrJSONPath is wrapped by every error of ParseJSONPath and
// JSONPath.Lookup.
var ErrJSONPath = errors.New("verify: jsonpath")

// JSONPath is a parsed path into a JSON document: the subset of RFC 9535
// that names one value, $ followed by .name, ['name'] or ["name"] and
// [index] steps, e.g. $.data.id or $.items[0]['id'].
type JSONPath struct {
	src   string
	steps []pathStep
}

type pathStep struct {
	name  string
	index int // -1 for a name step
}

// String returns the path as written.
func (p JSONPath) String() string { return p.src }

// ParseJSONPath parses s. A leading "$" is optional ("data.id" means
// "$.data.id"). Errors wrap ErrJSONPath and give the offset.
func ParseJSONPath(s string) (JSONPath, error) {
	p := JSONPath{src: s}
	i := 0
	if strings.HasPrefix(s, "$") {
		i = 1
	} else if s != "" && s[0] != '.' && s[0] != '[' {
		s = "." + s
		p.src = "$" + s
	}
	bad := func(msg string) (JSONPath, error) {
		return JSONPath{}, fmt.Errorf("%w %q: %s at offset %d", ErrJSONPath, p.src, msg, i)
	}
	for i < len(s) {
		switch s[i] {
		case '.':
			i++
			j := i
			for j < len(s) && s[j] != '.' && s[j] != '[' {
				j++
			}
			if j == i {
				return bad("empty name")
			}
			p.steps = append(p.steps, pathStep{name: s[i:j], index: -1})
			i = j
		case '[':
			i++
			if i < len(s) && (s[i] == '\'' || s[i] == '"') {
				q := s[i]
				end := strings.IndexByte(s[i+1:], q)
				if end < 0 {
					return bad("unterminated quoted name")
				}
				name := s[i+1 : i+1+end]
				i += end + 2
				if i >= len(s) || s[i] != ']' {
					return bad("want ]")
				}
				i++
				p.steps = append(p.steps, pathStep{name: name, index: -1})
				continue
			}
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return bad("want ]")
			}
			n, err := strconv.Atoi(s[i : i+end])
			if err != nil || n < 0 || n > 1<<20 {
				return bad("index is not a non-negative integer")
			}
			p.steps = append(p.steps, pathStep{index: n})
			i += end + 1
		default:
			return bad("want . or [")
		}
	}
	if len(p.steps) == 0 {
		return bad("path names nothing")
	}
	return p, nil
}

// Lookup returns the value at p in the JSON document body, as its
// compact JSON text (a string value keeps its quotes, so "1" and 1
// differ). Errors wrap ErrJSONPath: body is not JSON, or a step is
// missing.
func (p JSONPath) Lookup(body []byte) (string, error) {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf("%w %s: body is not JSON: %v", ErrJSONPath, p.src, err)
	}
	for _, st := range p.steps {
		switch c := v.(type) {
		case map[string]any:
			if st.index >= 0 {
				return "", fmt.Errorf("%w %s: [%d] applied to an object", ErrJSONPath, p.src, st.index)
			}
			next, ok := c[st.name]
			if !ok {
				return "", fmt.Errorf("%w %s: no member %q", ErrJSONPath, p.src, st.name)
			}
			v = next
		case []any:
			if st.index < 0 || st.index >= len(c) {
				return "", fmt.Errorf("%w %s: no element for step %q", ErrJSONPath, p.src, st.name)
			}
			v = c[st.index]
		default:
			return "", fmt.Errorf("%w %s: cannot step into a scalar", ErrJSONPath, p.src)
		}
	}
	out, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("%w %s: %v", ErrJSONPath, p.src, err)
	}
	return string(out), nil
}
