package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	t.Parallel()
	var out, errb strings.Builder
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "levee ") {
		t.Fatalf("--version: %d %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "levee demo") {
		t.Fatalf("--help: %d %q", code, out.String())
	}
	errb.Reset()
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("unknown command: %d %q", code, errb.String())
	}
	out.Reset()
	if code := run([]string{"validate", "--config", "../../examples/levee.yaml"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "OK (2 routes") {
		t.Fatalf("validate example: %d %q %q", code, out.String(), errb.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("routes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n    timout: 3s\n"), 0o600)
	errb.Reset()
	if code := run([]string{"validate", "--config", bad}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "bad.yaml:5: routes[0].timout: unknown field") {
		t.Fatalf("validate bad: %d %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"validate", "--config", "/does/not/exist.yaml"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "no such file") {
		t.Fatalf("validate missing: %d %q", code, errb.String())
	}
}
