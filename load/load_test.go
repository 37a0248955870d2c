package load_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/load"
	"github.com/leveehq/levee/ratelimit"
)

func startLimited(t *testing.T, limit string) string {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	t.Cleanup(up.Close)
	path := filepath.Join(t.TempDir(), "levee.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
store: {type: memory}
log: {access_log: false}
routes:
  - name: api
    match: {path_prefix: /v1}
    upstream: %s
    rate_limit:
      - {name: soak, limit: %s, key: "const:all"}
`, up.URL, limit)
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
	return "http://" + srv.Addr() + "/v1/x"
}

func TestRampAgainstLeveeLimit(t *testing.T) {
	t.Parallel()
	url := startLimited(t, "40/s burst 10")
	p, err := ratelimit.ParsePolicy("40/s burst 10")
	if err != nil {
		t.Fatal(err)
	}
	var prog bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := load.Run(ctx, load.Options{URL: url, Rate: load.Rate{Freq: 20, Per: time.Second}, RampTo: load.Rate{Freq: 120, Per: time.Second},
		Duration: 2 * time.Second, Limit: &p, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range rep.Status {
		total += n
	}
	if total != rep.Requests || rep.Requests == 0 || rep.Status[200] == 0 || rep.Status[429] == 0 || rep.Status[0] != 0 {
		t.Fatalf("status %v, requests %d", rep.Status, rep.Requests)
	}
	if len(rep.Bins) != 20 || rep.BinWidth != 100*time.Millisecond || rep.Bins[19].Offered <= 5*rep.Bins[0].Offered {
		t.Fatalf("ramp: %d bins of %s: %+v", len(rep.Bins), rep.BinWidth, rep.Bins)
	}
	on := rep.Onset
	if on == nil || on.At < 0 || on.Predicted == nil || *on.Predicted < 0 || on.Agreement == nil || *on.Agreement < 0.6 {
		t.Fatalf("onset %+v", on)
	}
	if !strings.Contains(prog.String(), "\r") || !strings.Contains(prog.String(), "429 ") {
		t.Fatalf("progress: %q", prog.String())
	}
	var html, text, js bytes.Buffer
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "declared limit", "offered rate", "p99", "429"} {
		if !strings.Contains(html.String(), want) {
			t.Errorf("html lacks %q", want)
		}
	}
	if !strings.Contains(text.String(), "429s: first sent at") || !strings.Contains(text.String(), "agree with it") {
		t.Errorf("text:\n%s", text.String())
	}
	if dir := os.Getenv("LEVEE_LOAD_PLOT_DIR"); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, "load.html"), html.Bytes(), 0o644)
	}
}

func TestParseRate(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]float64{"500/s": 500, "30/m": 0.5, "100": 100, "50/500ms": 100, "3600/h": 1, " 10 / s ": 10} {
		r, err := load.ParseRate(in)
		if err != nil || r.PerSecond() != want {
			t.Errorf("%q = %v (%v/s), %v; want %v/s", in, r, r.PerSecond(), err, want)
		}
	}
	for _, bad := range []string{"", "fast", "0/s", "-1/s", "10/parsec", "10/-1s", "99999999/s"} {
		if _, err := load.ParseRate(bad); !errors.Is(err, load.ErrOptions) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := load.Run(context.Background(), load.Options{URL: "http://127.0.0.1:1", Rate: load.Rate{Freq: 1, Per: time.Second}}); !errors.Is(err, load.ErrOptions) {
		t.Errorf("no duration: %v", err)
	}
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"500/s", "1/1h", "10/250ms", "7", "/s", "1/0s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := load.ParseRate(s)
		if err != nil {
			if !errors.Is(err, load.ErrOptions) {
				t.Fatal(err)
			}
			return
		}
		back, err := load.ParseRate(r.String())
		if err != nil || back.PerSecond() != r.PerSecond() {
			t.Fatalf("%q -> %v -> %v, %v", s, r, back, err)
		}
	})
}
