package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
)

// startInProcess runs a levee gateway in this process from the YAML cfg
// and returns its base URL.
func startInProcess(t *testing.T, cfg string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "levee.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := gateway.NewServer(context.Background(), path, gateway.ServerOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return "http://" + srv.Addr()
}

// counter is an upstream that creates a resource per execution.
func counter(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/count" {
			fmt.Fprint(w, n.Load())
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		id := n.Add(1)
		time.Sleep(10 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		fmt.Fprintf(w, `{"id":"pay_%d"}`, id)
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func leveeConfig(up string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {type: memory}
log: {access_log: false}
routes:
  - name: pay
    match: {path_prefix: /v1/pay}
    upstream: %s
    idempotency: {required: true, tenant_header: Authorization}
  - name: limited
    match: {path_prefix: /v1/limited}
    upstream: %s
    rate_limit:
      - {name: cli, limit: 5/s burst 3, key: "header:X-Api-Key"}
`, up, up)
}

func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	up, _ := counter(t)
	base := startInProcess(t, leveeConfig(up.URL))
	dir := t.TempDir()
	body := filepath.Join(dir, "body.json")
	if err := os.WriteFile(body, []byte(`{"amount":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	jsonOut, junitOut := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.xml")
	var out, errb bytes.Buffer
	code := run([]string{"verify", "idempotency", "--url", base + "/v1/pay", "--body", "@" + body,
		"--header", "Content-Type: application/json", "--header", "Authorization: Bearer a",
		"--id-jsonpath", "$.id", "--effect-url", up.URL + "/count", "--tenant-header", "Authorization",
		"--concurrency", "20", "--json", jsonOut, "--junit", junitOut}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d against levee:\n%s%s", code, out.String(), errb.String())
	}
	var rep struct {
		Results []struct{ Case, Verdict string }
	}
	b, _ := os.ReadFile(jsonOut)
	if err := json.Unmarshal(b, &rep); err != nil || len(rep.Results) < 12 {
		t.Fatalf("json report: %v %s", err, b)
	}
	if x, _ := os.ReadFile(junitOut); !bytes.Contains(x, []byte(`<testcase name="concurrent-duplicates"`)) {
		t.Fatalf("junit report:\n%s", x)
	}

	// The upstream alone does not dedupe: exit 1, the failing case named.
	out.Reset()
	code = run([]string{"verify", "idempotency", "--url", up.URL + "/v1/pay", "--body", `{"a":1}`,
		"--id-jsonpath", "$.id", "--concurrency", "5"}, &out, &errb)
	if code != 1 || !strings.Contains(out.String(), "replay") || !strings.Contains(out.String(), "FAIL") {
		t.Fatalf("exit %d against a plain upstream:\n%s", code, out.String())
	}

	out.Reset()
	code = run([]string{"verify", "ratelimit", "--url", base + "/v1/limited", "--limit", "5/s burst 3",
		"--header", "X-Api-Key: cli", "--expect-problem"}, &out, &errb)
	if code != 0 {
		t.Fatalf("ratelimit exit %d:\n%s%s", code, out.String(), errb.String())
	}
	for _, bad := range [][]string{
		{"verify"}, {"verify", "nope"}, {"verify", "ratelimit", "--url", base}, {"verify", "ratelimit", "--url", base, "--limit", "lots"},
		{"verify", "idempotency"}, {"verify", "idempotency", "--url", base, "--id-jsonpath", "$["},
		{"verify", "idempotency", "--url", base, "--header", "nocolon"},
	} {
		if code := run(bad, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
}
