package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/internal/problem"
)

// The values of errors.format.
const (
	ErrorsProblemJSON = "problem+json"
	ErrorsTemplate    = "template"
)

// ErrorsConfig is the errors section (global, and per route): how levee
// renders the errors it produces itself. Clients of an API with its own
// error envelope (Stripe's {"error": {...}}, Google's {"error": {"code",
// "message", "status"}}) often recognise only that shape: a problem+json
// 429 may even be taken for a success. A template renders levee's problem
// fields into the API's envelope instead; status, Retry-After and the
// RateLimit headers are the same either way.
type ErrorsConfig struct {
	// Format is problem+json (default) or template.
	Format string `yaml:"format"`
	// Template is a Go text/template rendering one problem (fields:
	// .Type, .TypeURI, .Title, .Status, .Detail, .RetryAfter (seconds, 0
	// when none), .Policies, .RequestID, .Route, .Extra; functions json,
	// upper, replace, join). Exclusive with TemplateFile.
	Template string `yaml:"template"`
	// TemplateFile is a file holding the template, relative to the
	// config file's directory. Exclusive with Template.
	TemplateFile string `yaml:"template_file"`
	// ContentType of rendered errors. Default application/json.
	ContentType string `yaml:"content_type"`

	tmpl *template.Template
	base string // the config file's directory, for template_file
}

// ProblemView is what an error template sees.
type ProblemView struct {
	Type       string // slug, e.g. rate-limited (docs/problems.md)
	TypeURI    string // the problem+json type URI
	Title      string
	Status     int
	Detail     string
	RetryAfter int64    // seconds, 0 when the problem has none
	Policies   []string // violated rate-limit policies, if any
	RequestID  string
	Route      string
	Extra      map[string]any // every extension member (route, upstream, …)
}

// Defaults implements config.Section.
func (e *ErrorsConfig) Defaults() {
	config.Default(&e.Format, ErrorsProblemJSON)
	if e.Format == ErrorsTemplate && e.ContentType == "" {
		e.ContentType = "application/json"
	}
}

// Validate implements config.Section: a template must parse and render
// valid JSON for every problem levee can produce.
func (e *ErrorsConfig) Validate(r *config.Report, path string) {
	switch e.Format {
	case ErrorsProblemJSON:
		if e.Template != "" || e.TemplateFile != "" || e.ContentType != "" {
			r.Bad(config.Join(path, "format"), "template, template_file and content_type need format: template")
		}
		return
	case ErrorsTemplate:
	default:
		r.Bad(config.Join(path, "format"), "unknown format %q (want %s or %s)", e.Format, ErrorsProblemJSON, ErrorsTemplate)
		return
	}
	src, name, field := e.Template, "template", config.Join(path, "template")
	// A block scalar's (|, >) text starts on the line after the field's;
	// any other scalar starts on the field's own line.
	lineBase := r.Line(field) - 1
	if n := r.Node(field); n != nil && n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		lineBase++
	}
	switch {
	case e.Template != "" && e.TemplateFile != "":
		r.Bad(field, "template and template_file are exclusive")
		return
	case e.TemplateFile != "":
		field, name = config.Join(path, "template_file"), e.TemplateFile
		file := e.TemplateFile
		if !filepath.IsAbs(file) && e.base != "" {
			file = filepath.Join(e.base, file)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			r.Bad(field, "%v", err)
			return
		}
		src, lineBase = string(data), -1
	case e.Template == "":
		r.Bad(field, "format: template needs template or template_file")
		return
	}
	t, err := parseErrorTemplate(name, src)
	if err == nil {
		err = checkErrorTemplate(t, e.ContentType)
	}
	if err != nil {
		msg := err.Error()
		if line, rest, ok := templateErrorLine(msg); ok && lineBase >= 0 {
			r.At(lineBase+line, field, rest) // a line of the config file
		} else if ok {
			r.Bad(field, "%s:%d: %s", name, line, rest) // a line of the template file
		} else {
			r.Bad(field, "%s", msg)
		}
		return
	}
	e.tmpl = t
}

func parseErrorTemplate(name, src string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Funcs(templateFuncs()).Parse(src)
}

// templateFuncs are the functions an error template may call: json
// encodes any value; upper, replace and join are strings.ToUpper,
// strings.ReplaceAll and strings.Join.
func templateFuncs() template.FuncMap {
	return template.FuncMap{"json": templateJSON, "upper": strings.ToUpper, "replace": strings.ReplaceAll, "join": strings.Join}
}

func templateJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// checkErrorTemplate renders t for a sample of every problem type levee
// produces, with and without the optional fields, and requires valid
// JSON when the content type is JSON.
func checkErrorTemplate(t *template.Template, contentType string) error {
	isJSON := contentType == "" || strings.Contains(contentType, "json")
	for _, typ := range problem.Types {
		for _, full := range []bool{false, true} {
			p := problem.Problem{Type: typ, Status: 400, Title: "Sample \"title\" <&>"}
			if full {
				p.Detail, p.RetryAfter = "a detail with \"quotes\", \\ and\nnewlines", 1500*time.Millisecond
				p.Extra = map[string]any{problem.ViolatedPolicies: []string{"per-key", "global"}, "route": "r", "upstream": "u:1"}
			}
			var b bytes.Buffer
			if err := t.Execute(&b, newProblemView(p, "0123456789abcdef0123456789abcdef", "route")); err != nil {
				return err
			}
			if isJSON && !json.Valid(b.Bytes()) {
				return fmt.Errorf("renders invalid JSON for a %s problem (use {{json .Field}} to encode values): %s", typ, firstLine(b.String()))
			}
		}
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

var templateLineRE = regexp.MustCompile(`^template: [^:]*:(\d+)(?::\d+)?: (.*)$`)

// templateErrorLine extracts the template line of a text/template error.
func templateErrorLine(msg string) (int, string, bool) {
	m := templateLineRE.FindStringSubmatch(msg)
	if m == nil {
		return 0, "", false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return 0, "", false
	}
	return n, m[2], true
}

func newProblemView(p problem.Problem, requestID, route string) ProblemView {
	v := ProblemView{Type: p.Type, TypeURI: problem.BaseURI + p.Type, Title: p.Title, Status: p.Status, Detail: p.Detail,
		RequestID: requestID, Route: route, Extra: p.Extra}
	if p.RetryAfter > 0 {
		v.RetryAfter = problem.RetryAfterSeconds(p.RetryAfter)
	}
	if pol, ok := p.Extra[problem.ViolatedPolicies].([]string); ok {
		v.Policies = pol
	}
	if v.Extra == nil {
		v.Extra = map[string]any{}
	}
	return v
}

// errorRenderer renders one request's problems with a route's template.
type errorRenderer struct {
	tmpl        *template.Template
	contentType string
}

// renderer returns the section's renderer, or nil for problem+json.
func (e *ErrorsConfig) renderer() *errorRenderer {
	if e == nil || e.tmpl == nil {
		return nil
	}
	return &errorRenderer{tmpl: e.tmpl, contentType: e.ContentType}
}

var errTemplateFailed = errors.New("error template failed")

func (er *errorRenderer) render(p problem.Problem, requestID, route string) ([]byte, string) {
	var b bytes.Buffer
	if err := er.tmpl.Execute(&b, newProblemView(p, requestID, route)); err != nil {
		// Validated against every problem type at load: a failure here is
		// a bug; never lose the error itself.
		return problem.Marshal(problem.Problem{Type: p.Type, Title: p.Title, Status: p.Status,
			Detail: fmt.Sprintf("%s (%v: %v)", p.Detail, errTemplateFailed, err)}), problem.ContentType
	}
	return b.Bytes(), er.contentType
}

// RenderProblem implements problem.Renderer for the gateway's response
// writer: every problem written on it (by the gateway, the rate limiter,
// the idempotency middleware) takes the route's error format.
func (w *statusWriter) RenderProblem(p problem.Problem) ([]byte, string) {
	if w.render == nil {
		return problem.Marshal(p), problem.ContentType
	}
	return w.render.render(p, w.requestID, w.route)
}

// writeProblem writes p for request r in its route's error format, also
// from below a middleware whose writer hides the gateway's.
func writeProblem(w http.ResponseWriter, r *http.Request, p problem.Problem) {
	problem.WriteWith(w, p, infoFrom(r.Context()).renderer())
}

// renderer is the request's problem renderer (nil: problem+json).
func (ri *reqInfo) renderer() problem.Renderer {
	if ri == nil || ri.sw == nil {
		return nil
	}
	return ri.sw
}
