package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadCommand(t *testing.T) {
	t.Parallel()
	up, _ := counter(t)
	base := startInProcess(t, leveeConfig(up.URL))
	dir := t.TempDir()
	html, js := filepath.Join(dir, "plot.html"), filepath.Join(dir, "r.json")
	var out, errb bytes.Buffer
	code := loadMain(context.Background(), []string{"--url", base + "/v1/limited", "--header", "X-Api-Key: load",
		"--rate", "20/s", "--duration", "1s", "--limit", "5/s burst 3", "--html", html, "--json", js}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "429s: first sent at") || !strings.Contains(errb.String(), "sent ") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
	var rep struct {
		Requests int
		Status   map[string]int
	}
	b, _ := os.ReadFile(js)
	if err := json.Unmarshal(b, &rep); err != nil || rep.Requests == 0 || rep.Status["429"] == 0 {
		t.Fatalf("json: %v %s", err, b)
	}
	if h, _ := os.ReadFile(html); !bytes.Contains(h, []byte("<svg")) {
		t.Fatal("no plot")
	}
	for _, bad := range [][]string{{}, {"--url", base}, {"--url", base, "--rate", "fast"}, {"--url", base, "--rate", "1/s", "--duration", "2h"},
		{"--url", base, "--rate", "1/s", "--limit", "x"}, {"--url", base, "--rate", "1/s", "--ramp", "?"}} {
		if code := loadMain(context.Background(), bad, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
}
