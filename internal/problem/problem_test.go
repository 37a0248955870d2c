package problem_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/leveehq/levee/internal/problem"
)

// TestTypesListsEverySlug keeps Types (which error templates are checked
// against) and docs/problems.md in step with the constants.
func TestTypesListsEverySlug(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "problem.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := os.ReadFile("../../docs/problems.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ast.Inspect(f, func(node ast.Node) bool {
		vs, ok := node.(*ast.ValueSpec)
		if !ok || len(vs.Values) != 1 {
			return true
		}
		lit, ok := vs.Values[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING || vs.Names[0].Name == "BaseURI" || vs.Names[0].Name == "ContentType" || vs.Names[0].Name == "ViolatedPolicies" {
			return true
		}
		slug, _ := strconv.Unquote(lit.Value)
		n++
		if !slices.Contains(problem.Types, slug) {
			t.Errorf("%s = %q is missing from Types", vs.Names[0].Name, slug)
		}
		if !strings.Contains(string(docs), "## "+slug) {
			t.Errorf("%q has no section in docs/problems.md", slug)
		}
		return true
	})
	if n != len(problem.Types) {
		t.Errorf("%d slug constants, %d in Types", n, len(problem.Types))
	}
}

type envelope struct {
	http.ResponseWriter
}

func (envelope) RenderProblem(p problem.Problem) ([]byte, string) {
	return []byte(`{"error":"` + p.Type + `"}`), "application/json"
}

type wrapper struct{ http.ResponseWriter }

func (w wrapper) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func TestWriteUsesTheRendererBelowTheWriter(t *testing.T) {
	rec := httptest.NewRecorder()
	problem.Write(wrapper{envelope{rec}}, problem.Problem{Type: problem.RateLimited, Status: 429, RetryAfter: 1500e6})
	if rec.Code != 429 || rec.Body.String() != `{"error":"rate-limited"}` || rec.Header().Get("Content-Type") != "application/json" ||
		rec.Header().Get("Retry-After") != "2" || rec.Header().Get("Content-Length") != "24" {
		t.Fatalf("%d %q %v", rec.Code, rec.Body, rec.Header())
	}
	rec = httptest.NewRecorder()
	problem.Write(wrapper{rec}, problem.Problem{Type: problem.RateLimited, Status: 429, Title: "t"})
	if rec.Header().Get("Content-Type") != problem.ContentType || !strings.HasPrefix(rec.Body.String(), `{"type":"`+problem.BaseURI+`rate-limited"`) {
		t.Fatalf("no renderer: %q %v", rec.Body, rec.Header())
	}
}
