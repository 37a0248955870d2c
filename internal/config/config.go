// Package config is levee's generic YAML loader: strict field names,
// ${ENV} expansion, every problem of a file reported at once with its
// file:line and field path, and the walk that lets each capability own
// its section of the file.
//
// A capability's section is a struct type with yaml tags that implements
// Section (defaults and validation next to the code it configures). The
// root config holds one typed field per section, so unknown fields are
// still refused. Struct tags carry the rest of a section's contract:
//
//	reload:"restart"   the field cannot change on reload (RestartChanges)
//	redact:"secret"    shown as REDACTED (Redact)
//	redact:"dsn"       a URL or key=value DSN whose password is masked
//
// Nothing in this package knows about a particular capability.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Section is a part of the config owned by one capability. Load calls
// Defaults and then Validate on every Section it finds in the decoded
// value, children before their parents, so a parent's rules see its
// children's defaults.
type Section interface {
	// Defaults fills the fields left empty with their defaults.
	Defaults()
	// Validate reports every problem of the section to r; path is the
	// section's field path (e.g. "routes[2].idempotency").
	Validate(r *Report, path string)
}

// Error lists every problem found in a config file, each with the line
// and field it concerns.
type Error struct {
	File     string
	Problems []Problem
}

// Problem is one config problem.
type Problem struct {
	Line  int    // 0 when unknown
	Field string // e.g. routes[0].upstream
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		if p.Field != "" {
			b.WriteString(p.Field)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// Report collects the problems of one file. Bad finds the line of a field
// path in the document, so sections name fields, never lines.
type Report struct {
	doc      *yaml.Node
	problems []Problem
}

// NewReport returns a Report for the document doc (nil: no lines).
func NewReport(doc *yaml.Node) *Report { return &Report{doc: doc} }

// Bad records a problem with the field at path (its line is looked up).
func (r *Report) Bad(field, format string, args ...any) {
	line := 0
	if r.doc != nil {
		line = LineOf(r.doc, field)
	}
	r.problems = append(r.problems, Problem{Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Line returns the line of the field at path (0 when unknown).
func (r *Report) Line(field string) int {
	if r.doc == nil {
		return 0
	}
	return LineOf(r.doc, field)
}

// Node returns the value node of the field at path, or nil.
func (r *Report) Node(field string) *yaml.Node {
	if r.doc == nil {
		return nil
	}
	n, _, ok := find(r.doc, field)
	if !ok {
		return nil
	}
	return n
}

// At records a problem at a known line.
func (r *Report) At(line int, field, msg string) {
	r.problems = append(r.problems, Problem{Line: line, Field: field, Msg: msg})
}

// Problems returns what was recorded.
func (r *Report) Problems() []Problem { return r.problems }

// Default sets *field to v when it holds its zero value: how sections
// fill their defaults.
func Default[T comparable](field *T, v T) {
	var zero T
	if *field == zero {
		*field = v
	}
}

// Join returns a path below path: Join("routes[0]", "match").
func Join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Load decodes data (a YAML document named name in errors) into dst, a
// pointer to the root config struct. lookupEnv resolves ${VAR} and
// ${VAR:-default} in values ($$ is a literal $). Decoding is strict:
// unknown fields and values of the wrong type are errors naming the field.
// Then every Section in dst gets Defaults and Validate. The error, if
// any, is an *Error listing every problem found.
func Load(name string, data []byte, lookupEnv func(string) (string, bool), dst any) error {
	rep := &Report{}
	fail := func() error { return &Error{File: name, Problems: rep.problems} }
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p := yamlProblem(err)
		p.Line = syntaxLine(data, p)
		rep.problems = append(rep.problems, p)
		return fail()
	}
	if root.Kind == 0 || len(root.Content) == 0 || len(bytes.TrimSpace(data)) == 0 {
		rep.At(0, "", "the config is empty: it needs at least one route (see examples/levee.yaml)")
		return fail()
	}
	doc := root.Content[0]
	rep.doc = doc
	expandEnv(doc, lookupEnv, rep)
	// Values that cannot decode are reported and then removed, so that
	// the rest of the file is still decoded and validated: one run lists
	// every problem. A section's own complaint about a field that already
	// failed to decode (e.g. "required") is dropped as a repeat.
	checkNode(doc, reflect.TypeOf(dst), "", rep)
	undecodable := len(rep.problems)
	if err := doc.Decode(dst); err != nil {
		rep.problems = append(rep.problems, yamlProblem(err))
		return fail()
	}
	Walk(dst, func(path string, s Section) { s.Defaults() })
	Walk(dst, func(path string, s Section) { s.Validate(rep, path) })
	rep.problems = dropRepeats(rep.problems, undecodable)
	if len(rep.problems) > 0 {
		return fail()
	}
	return nil
}

// dropRepeats removes the problems after the first n whose field is one
// of (or below) the fields of the first n.
func dropRepeats(ps []Problem, n int) []Problem {
	if n == 0 {
		return ps
	}
	out := ps[:n]
	for _, p := range ps[n:] {
		repeat := false
		for _, q := range ps[:n] {
			if q.Field != "" && (p.Field == q.Field || strings.HasPrefix(p.Field, q.Field+".") || strings.HasPrefix(p.Field, q.Field+"[")) {
				repeat = true
				break
			}
		}
		if !repeat {
			out = append(out, p)
		}
	}
	return out
}

// syntaxLine finds the line of a YAML syntax error. yaml.v3 reports the
// line where the enclosing block started, not where the problem is; the
// problem is on the first line at which a prefix of the document fails
// with the same message.
func syntaxLine(data []byte, p Problem) int {
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > 2000 {
		return p.Line
	}
	var prefix []byte
	for i, l := range lines {
		prefix = append(prefix, l...)
		var n yaml.Node
		if err := yaml.Unmarshal(prefix, &n); err != nil && yamlProblem(err).Msg == p.Msg {
			return i + 1
		}
	}
	return p.Line
}

var sectionType = reflect.TypeFor[Section]()

// Walk calls fn for every Section reachable from v (a pointer) through
// struct fields, non-nil pointers and slice elements, children before
// parents, with its yaml field path.
func Walk(v any, fn func(path string, s Section)) {
	walk(reflect.ValueOf(v), "", fn)
}

func walk(v reflect.Value, path string, fn func(string, Section)) {
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return
		}
		walk(v.Elem(), path, fn)
		return
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := yamlName(f)
			if tag == "" {
				continue
			}
			walk(v.Field(i), Join(path, tag), fn)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			walk(v.Index(i), fmt.Sprintf("%s[%d]", path, i), fn)
		}
		return
	default:
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(sectionType) {
		fn(path, v.Addr().Interface().(Section))
	}
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" {
		return ""
	}
	return tag
}

// yamlProblem turns a yaml error ("yaml: line 3: ...") into a Problem.
func yamlProblem(err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = strings.Join(te.Errors, "; ")
	}
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if j := strings.IndexByte(rest, ':'); j > 0 {
			if n, err := strconv.Atoi(rest[:j]); err == nil {
				line = n
				msg = strings.TrimSpace(rest[j+1:])
			}
		}
	}
	return Problem{Line: line, Msg: msg}
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// checkNode reports, with their lines and field paths, mapping keys that
// match no field and values that do not decode into their field's type,
// so that one run lists every such problem (yaml.v3 alone stops at the
// first custom type that fails, and names no field).
func checkNode(n *yaml.Node, t reflect.Type, path string, rep *Report) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		if err := reflect.New(t).Interface().(yaml.Unmarshaler).UnmarshalYAML(n); err != nil {
			rep.At(n.Line, path, err.Error())
			clear(n)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if !isNull(n) {
				rep.At(n.Line, path, fmt.Sprintf("want a mapping of fields, got %s", describe(n)))
				clear(n)
			}
			return
		}
		fields := map[string]reflect.StructField{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if tag := yamlName(f); tag != "" {
				fields[tag] = f
				names = append(names, tag)
			}
		}
		sort.Strings(names)
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			f, ok := fields[k.Value]
			if !ok {
				rep.At(k.Line, Join(path, k.Value), fmt.Sprintf("unknown field (known fields here: %s)", strings.Join(names, ", ")))
				continue
			}
			checkNode(n.Content[i+1], f.Type, Join(path, k.Value), rep)
			kept = append(kept, k, n.Content[i+1])
		}
		n.Content = kept
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			if !isNull(n) {
				rep.At(n.Line, path, fmt.Sprintf("want a list, got %s", describe(n)))
				clear(n)
			}
			return
		}
		for i, c := range n.Content {
			checkNode(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), rep)
		}
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		if n.Kind != yaml.ScalarNode {
			rep.At(n.Line, path, fmt.Sprintf("want a %s, got %s", kindName(t.Kind()), describe(n)))
			clear(n)
			return
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			rep.At(n.Line, path, fmt.Sprintf("want a %s, got %q", kindName(t.Kind()), n.Value))
			clear(n)
		}
	}
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// clear turns a value that failed to decode into null, so that decoding
// the rest of the document goes on (the field keeps its zero value).
func clear(n *yaml.Node) {
	line, col := n.Line, n.Column
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: line, Column: col}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return strconv.Quote(n.Value)
	}
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Float32, reflect.Float64:
		return "number"
	default:
		return "whole number"
	}
}

// LineOf finds the line of a field path like routes[0].match.path in the
// document, falling back to the nearest existing parent.
func LineOf(doc *yaml.Node, path string) int {
	_, line, _ := find(doc, path)
	return line
}

// find walks a field path down the document: the value node and line
// of the field, or the line of the nearest existing parent and false.
func find(doc *yaml.Node, path string) (*yaml.Node, int, bool) {
	n := doc
	line := doc.Line
	for _, part := range strings.Split(path, ".") {
		name, idx := part, -1
		if j := strings.IndexByte(part, '['); j >= 0 {
			name = part[:j]
			idx, _ = strconv.Atoi(strings.TrimSuffix(part[j+1:], "]"))
		}
		var next *yaml.Node
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == name {
					next = n.Content[i+1]
					line = n.Content[i].Line
					break
				}
			}
		}
		if next == nil {
			return nil, line, false
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return nil, line, false
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return n, line, true
}
