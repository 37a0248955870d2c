package lambda_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/leveehq/levee/internal/syncbuf"
)

// rieVersion is the Runtime Interface Emulator the end-to-end tests run
// (the version the module proxy serves).
const rieVersion = "v0.0.0-20261030222936-bef5c4ba774d"

// emulator is a built bootstrap running under the Runtime Interface
// Emulator on loopback ports, with its idempotency table on an
// in-process minidyn.
type emulator struct {
	url     string // the invocation endpoint
	logPath string // one line per execution of the function's work
}

// goBuild runs a go command with a time bound.
func goBuild(t testing.TB, env []string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// binaries are the emulator and the e2e function's bootstrap.
type binaries struct{ rie, bootstrap string }

// buildBinaries builds the e2e function as bootstrap and the emulator (or
// takes the emulator from LEVEE_LAMBDA_RIE).
func buildBinaries(t testing.TB) binaries {
	t.Helper()
	dir := t.TempDir()
	rie := os.Getenv("LEVEE_LAMBDA_RIE")
	if rie == "" {
		goBuild(t, []string{"GOBIN=" + dir, "GOFLAGS=-mod=mod"}, "install",
			"github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@"+rieVersion)
		rie = filepath.Join(dir, "aws-lambda-rie")
	}
	bootstrap := filepath.Join(dir, "bootstrap")
	goBuild(t, []string{"CGO_ENABLED=0"}, "build", "-o", bootstrap, "github.com/leveehq/levee/lambda/internal/e2efn")
	return binaries{rie: rie, bootstrap: bootstrap}
}

// startEmulator builds the binaries and runs them for the life of t with
// the function timeout given in seconds.
func startEmulator(t testing.TB, timeoutSeconds int) *emulator {
	t.Helper()
	return runEmulator(t, buildBinaries(t), timeoutSeconds)
}

// runEmulator runs bin under the emulator until t ends (extra env added).
func runEmulator(t testing.TB, bin binaries, timeoutSeconds int, env ...string) *emulator {
	t.Helper()
	rie, bootstrap := bin.rie, bin.bootstrap
	ddbURL, table := newDynamoTable(t)
	e := &emulator{logPath: filepath.Join(t.TempDir(), "executions.log")}
	rieAddr, apiAddr := freeAddr(t), freeAddr(t)
	out := &syncbuf.Buffer{}
	cmd := exec.Command(rie, "--runtime-interface-emulator-address", rieAddr, "--runtime-api-address", apiAddr, bootstrap)
	cmd.Env = append(os.Environ(),
		"LEVEE_DDB_ENDPOINT="+ddbURL, "LEVEE_TABLE="+table, "LEVEE_E2E_LOG="+e.logPath,
		fmt.Sprintf("AWS_LAMBDA_FUNCTION_TIMEOUT=%d", timeoutSeconds), "LOG_LEVEL=warn")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("emulator output:\n%s", out.String())
		}
	})
	e.url = "http://" + rieAddr + "/2015-03-31/functions/function/invocations"
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", rieAddr, time.Second)
		if err == nil {
			c.Close()
			return e
		}
		select {
		case <-exited:
			t.Fatalf("the emulator exited:\n%s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the emulator is not listening on %s after 15s:\n%s", rieAddr, out.String())
		}
	}
}

// invoke posts one event to the emulator and returns the function's
// answer.
func (e *emulator) invoke(t testing.TB, payload []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(payload))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("invoking: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("invocation: %d %s", resp.StatusCode, b)
	}
	return b
}

func (e *emulator) executions(t testing.TB) []string {
	b, err := os.ReadFile(e.logPath)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(b), " ", "="))
}

// TestEmulatorEndToEnd runs the built bootstrap under the Runtime
// Interface Emulator: duplicate HTTP invocations execute once, a charge
// that hangs past the margin holds its key (the retry is 409
// idempotency-outcome-unknown, not a second charge), and an SQS batch
// reports exactly its failed message ids.
func TestEmulatorEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the emulator and a bootstrap binary")
	}
	e := startEmulator(t, 2)
	raw := eventFile(t, "apigw-v2-request-no-authorizer.json")

	ev := asPOST(t, raw, `{"amount":100}`, map[string]string{"idempotency-key": "e2e-1", "content-type": "application/json"})
	var first, second httpResponse
	_ = json.Unmarshal(e.invoke(t, ev), &first)
	_ = json.Unmarshal(e.invoke(t, ev), &second)
	if first.StatusCode != 201 || second.StatusCode != 201 || second.Body != first.Body || second.header("Idempotent-Replayed") != "true" {
		t.Fatalf("first %+v, second %+v", first, second)
	}

	hang := asPOST(t, raw, `{"hang":true}`, map[string]string{"idempotency-key": "e2e-hang", "content-type": "application/json"})
	var timedOut, retry httpResponse
	_ = json.Unmarshal(e.invoke(t, hang), &timedOut)
	_ = json.Unmarshal(e.invoke(t, hang), &retry)
	if timedOut.StatusCode != http.StatusGatewayTimeout || retry.StatusCode != http.StatusConflict || !strings.Contains(retry.Body, "idempotency-outcome-unknown") {
		t.Fatalf("hung charge %d %s; retry %d %s", timedOut.StatusCode, timedOut.Body, retry.StatusCode, retry.Body)
	}

	batch := sqsBatch(t, false, [3]string{"m1", "", "ok"}, [3]string{"m2", "", "fail"}, [3]string{"m3", "", "ok"}, [3]string{"m4", "", "fail"})
	payload, _ := json.Marshal(batch)
	for range 2 { // the redelivery runs only the failed ones again
		var resp events.SQSEventResponse
		if err := json.Unmarshal(e.invoke(t, payload), &resp); err != nil {
			t.Fatal(err)
		}
		if got := failedIDs(resp); !slices.Equal(got, []string{"m2", "m4"}) {
			t.Fatalf("batch failures %v; want [m2 m4]", got)
		}
	}
	want := []string{"charge=e2e-1", "charge=e2e-hang", "message=m1", "message=m2", "message=m3", "message=m4", "message=m2", "message=m4"}
	if got := e.executions(t); !slices.Equal(got, want) {
		t.Fatalf("executions %v; want %v", got, want)
	}
}

// BenchmarkEmulator measures whole invocations of the built bootstrap
// under the Runtime Interface Emulator, through its HTTP invoke endpoint:
// Ping is the runtime's own round trip; HTTPPassthrough adds the event
// adapter and the net/http handler (a GET: no idempotency); HTTPReplay
// adds the idempotency replay (one DynamoDB round trip to minidyn);
// ColdStart starts a fresh emulator per op and times its first
// invocation, bare aws-lambda-go against levee's init.
func BenchmarkEmulator(b *testing.B) {
	bin := buildBinaries(b)
	e := runEmulator(b, bin, 30)
	raw := eventFile(b, "apigw-v2-request-no-authorizer.json")
	replay := asPOST(b, raw, `{"amount":100}`, map[string]string{"idempotency-key": "bench-replay", "content-type": "application/json"})
	e.invoke(b, replay)
	for _, tc := range []struct {
		name  string
		event []byte
	}{{"Ping", []byte(`{"ping":true}`)}, {"HTTPPassthrough", raw}, {"HTTPReplay", replay}} {
		b.Run(tc.name, func(b *testing.B) {
			e.invoke(b, tc.event)
			for b.Loop() {
				e.invoke(b, tc.event)
			}
		})
	}
	for _, cold := range []struct {
		name string
		env  []string
	}{{"ColdStart/bare", []string{"LEVEE_E2E_BARE=1"}}, {"ColdStart/levee", nil}} {
		b.Run(cold.name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				e := runEmulator(b, bin, 30, cold.env...)
				start := time.Now()
				e.invoke(b, []byte(`{"ping":true}`))
				total += time.Since(start)
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "firstinvoke-ms")
		})
	}
}
