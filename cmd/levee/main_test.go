package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
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
	if code := run([]string{"validate", "--config", "../../examples/levee.yaml"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "OK (3 routes") {
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

func TestBuildVersion(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	got := readBuildVersion("dev", info, true).String()
	want := "levee v1.2.3\ncommit abc123 (modified)\ncommit time 2026-12-01T10:00:00Z\ngo go1.26.8\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if v := readBuildVersion("v9", info, true); v.Version != "v9" {
		t.Fatalf("-ldflags override lost: %+v", v)
	}
	if v := readBuildVersion("dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, true); v.Version != "dev" || v.Commit != "unknown" {
		t.Fatalf("checkout build: %+v", v)
	}
}
