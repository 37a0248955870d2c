package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/internal/poll"
	"github.com/leveehq/levee/internal/syncbuf"
)

func TestChaosCommand(t *testing.T) {
	t.Parallel()
	up, n := counter(t)
	cfg := filepath.Join(t.TempDir(), "faults.yaml")
	if err := os.WriteFile(cfg, []byte("faults:\n  - {name: down, match: {path: /down}, status: 503, retry_after: 1s}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out, errb := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done := make(chan int, 1)
	go func() {
		done <- chaosMain(ctx, []string{"--listen", "127.0.0.1:0", "--upstream", up.URL, "--config", cfg, "--seed", "9"}, out, errb)
	}()
	re := regexp.MustCompile(`proxy (http://\S+) .*seed 9\); control API (http://\S+)`)
	var m []string
	poll.Until(t, 5*time.Second, func() bool { m = re.FindStringSubmatch(out.String()); return m != nil }, "no banner: %s %s", out, errb)
	resp, err := http.Get(m[1] + "/down")
	if err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("fault: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, err = http.Post(m[1]+"/v1/pay", "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != 201 || n.Load() != 1 {
		t.Fatalf("forwarded: %v %v", err, resp)
	}
	resp.Body.Close()
	resp, err = http.Get(m[2] + "/counts")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"down": 1`) {
		t.Fatalf("counts: %s", b)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	if !strings.Contains(errb.String(), `"msg":"chaos fault","fault":"down"`) {
		t.Fatalf("fault not logged: %s", errb)
	}
	for _, bad := range [][]string{{"--listen", "127.0.0.1:0"}, {"--upstream", "ftp://x", "--listen", "127.0.0.1:0"}} {
		if code := chaosMain(context.Background(), bad, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
	if code := chaosMain(context.Background(), []string{"--upstream", up.URL, "--config", filepath.Join(t.TempDir(), "none.yaml")}, io.Discard, io.Discard); code != 1 {
		t.Errorf("missing config: exit %d, want 1", code)
	}
}
