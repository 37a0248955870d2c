package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/syncbuf"
	"github.com/leveehq/levee/store/sqlite"
)

const testToken = "0123456789abcdef-test-token"

// TestKeysShowListResolve holds a key in the unknown state (a charge whose
// answer was lost), then an operator finds it with levee keys list/show,
// stores the outcome found upstream with levee keys resolve --response,
// and the client's retry replays that outcome without reaching the
// upstream.
func TestKeysShowListResolve(t *testing.T) {
	t.Parallel()
	var calls int
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.WriteHeader(201)
	}))
	defer up.Close()
	dir := t.TempDir()
	db := filepath.Join(dir, "levee.db")
	cfgPath := filepath.Join(dir, "levee.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
store: {type: sqlite, sqlite: {path: %q}}
routes:
  - name: charges
    match: {path_prefix: /v1/charges}
    upstream: %s
    idempotency: {required: true, tenant_header: Authorization}
`, testToken, db, up.URL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	srv, err := gateway.NewServer(context.Background(), cfgPath, gateway.ServerOptions{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	admin := "http://" + srv.AdminAddr()

	// A charge whose outcome was lost, as the gateway records it: held in
	// the unknown state under the key the middleware computes.
	body := `{"amount":100}`
	req := httptest.NewRequest("POST", "/v1/charges", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	fp := idempotency.FingerprintRequest(req, []byte(body), nil)
	scoped, _ := idempotency.KeyFor("charges", "Bearer sk_alice", "order-7")
	st, err := sqlite.Open(db, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eng := idempotency.New(st, idempotency.Options{})
	if _, err := eng.Do(context.Background(), scoped, fp, func(context.Context) ([]byte, error) {
		return nil, idempotency.UnknownOutcome(fmt.Errorf("read: connection reset by peer"))
	}); err == nil {
		t.Fatal("Do with an unknown outcome succeeded")
	}

	retry := func() (*http.Response, string) {
		req, _ := http.NewRequest("POST", "http://"+srv.Addr()+"/v1/charges", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "order-7")
		req.Header.Set("Authorization", "Bearer sk_alice")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, b := retry(); resp.StatusCode != 409 || !strings.Contains(b, "idempotency-outcome-unknown") || calls != 0 {
		t.Fatalf("retry of a held key: %d %s (upstream calls %d)", resp.StatusCode, b, calls)
	}

	keys := func(args ...string) (int, string, string) {
		var out, errb strings.Builder
		code := run(append([]string{"keys"}, append(args, "--admin", admin, "--operator", "alice@test")...), &out, &errb)
		return code, out.String(), errb.String()
	}
	common := []string{"--route", "charges", "--token", testToken}
	if code, out, errs := keys(append([]string{"list", "--state", "unknown"}, common...)...); code != 0 || !strings.Contains(out, scoped) || !strings.Contains(out, "unknown") {
		t.Fatalf("keys list: %d %q %q", code, out, errs)
	}
	if code, out, errs := keys(append([]string{"show", "--key", "order-7", "--tenant-credential", "Bearer sk_alice"}, common...)...); code != 0 || !strings.Contains(out, scoped) {
		t.Fatalf("keys show: %d %q %q", code, out, errs)
	}
	// Another tenant's credential names another key.
	if code, _, errs := keys(append([]string{"show", "--key", "order-7", "--tenant-credential", "Bearer sk_bob"}, common...)...); code != 1 || !strings.Contains(errs, "No such key") {
		t.Fatalf("keys show for another tenant: %d %q", code, errs)
	}
	// No token, a wrong token.
	if code, _, errs := keys("show", "--route", "charges", "--key", "order-7", "--token", ""); code != 2 || !strings.Contains(errs, "LEVEE_ADMIN_TOKEN") {
		t.Fatalf("no token: %d %q", code, errs)
	}
	if code, _, errs := keys("show", "--route", "charges", "--key", "order-7", "--token", "wrong-token-but-long"); code != 1 || !strings.Contains(errs, "401") {
		t.Fatalf("wrong token: %d %q", code, errs)
	}
	// Reconciled upstream: the charge did happen. Store what it answered.
	respFile := filepath.Join(dir, "found.http")
	os.WriteFile(respFile, []byte("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nRequest-Id: req_42\r\n\r\n{\"id\":\"ch_7\"}"), 0o600)
	if code, out, errs := keys(append([]string{"resolve", "--key", "order-7", "--tenant-credential", "Bearer sk_alice", "--response", respFile}, common...)...); code != 0 || !strings.Contains(out, "stored") || !strings.Contains(out, "completed") {
		t.Fatalf("keys resolve: %d %q %q", code, out, errs)
	}
	resp, b := retry()
	if resp.StatusCode != 201 || b != `{"id":"ch_7"}` || resp.Header.Get("Idempotent-Replayed") != "true" || resp.Header.Get("Request-Id") != "req_42" || calls != 0 {
		t.Fatalf("retry after resolve: %d %q %v (upstream calls %d)", resp.StatusCode, b, resp.Header, calls)
	}
	// A completed key cannot be resolved again.
	if code, _, errs := keys(append([]string{"resolve", "--key", "order-7", "--tenant-credential", "Bearer sk_alice", "--release"}, common...)...); code != 1 || !strings.Contains(errs, "cannot be resolved") {
		t.Fatalf("resolve a completed key: %d %q", code, errs)
	}
	if l := logs.String(); !strings.Contains(l, `"msg":"idempotency key resolved"`) || !strings.Contains(l, `"operator":"alice@test"`) {
		t.Fatalf("resolve not logged with its operator:\n%s", l)
	}
}

func TestKeysEndpointsOffWithoutToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "levee.yaml")
	os.WriteFile(cfgPath, []byte("listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nstore: {type: memory}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://127.0.0.1:1\n    idempotency: {}\n"), 0o600)
	srv, err := gateway.NewServer(context.Background(), cfgPath, gateway.ServerOptions{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	req, _ := http.NewRequest("GET", "http://"+srv.AdminAddr()+"/keys?route=a&state=unknown", nil)
	req.Header.Set("Authorization", "Bearer anything-at-all-here")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 404 || !strings.Contains(string(b), "admin-endpoint-disabled") {
		t.Fatalf("without admin.token: %d %s", resp.StatusCode, b)
	}
}
