package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/verify"
)

func idPath(t *testing.T) *verify.JSONPath {
	t.Helper()
	p, err := verify.ParseJSONPath("$.id")
	if err != nil {
		t.Fatal(err)
	}
	return &p
}

func runIdem(t *testing.T, o verify.IdempotencyOptions) *verify.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if o.Header == nil {
		o.Header = http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer tenant-a"}}
	}
	if o.Body == nil {
		o.Body = []byte(`{"amount":100,"currency":"eur"}`)
	}
	o.IDPath = idPath(t)
	if o.TenantHeader == "" {
		o.TenantHeader = "Authorization"
	}
	rep, err := verify.Idempotency(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func dump(t *testing.T, rep *verify.Report) string {
	t.Helper()
	var b bytes.Buffer
	_ = rep.WriteTable(&b)
	return b.String()
}

func wantVerdicts(t *testing.T, rep *verify.Report, want map[string]verify.Verdict) {
	t.Helper()
	for c, v := range want {
		got, ok := rep.Result(c)
		if !ok {
			t.Errorf("case %s did not run", c)
			continue
		}
		if got.Verdict != v {
			t.Errorf("case %s: %s (%s), want %s", c, got.Verdict, got.Evidence, v)
		}
	}
	if t.Failed() {
		t.Log("\n" + dump(t, rep))
	}
}

// allPass asserts no case failed or warned, except those listed.
func allPass(t *testing.T, rep *verify.Report, except map[string]verify.Verdict) {
	t.Helper()
	for _, r := range rep.Results {
		want := verify.Pass
		if v, ok := except[r.Case]; ok {
			want = v
		}
		if r.Verdict != want {
			t.Errorf("case %s: %s (%s), want %s", r.Case, r.Verdict, r.Evidence, want)
		}
	}
	if t.Failed() {
		t.Log("\n" + dump(t, rep))
	}
}

func TestIdempotencyAgainstLevee(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"memory", "sqlite", "redis", "postgres"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			up := startServer(t, &payments{delay: 20 * time.Millisecond})
			base := startLevee(t, store, up.URL, "100/s")
			o := verify.IdempotencyOptions{URL: base + "/v1/pay", EffectURL: up.URL + "/count", Concurrency: 30}
			if store == "memory" {
				o.Retention = 2 * time.Second
			}
			rep := runIdem(t, o)
			except := map[string]verify.Verdict{}
			if store != "memory" {
				except[verify.CaseRetention] = verify.Skip
			}
			allPass(t, rep, except)
			if rep.Failed() {
				t.Fatal("report failed")
			}
		})
	}
}

// TestIdempotencyAgainstLeveeDynamoDB is the same run on the DynamoDB
// store (dynalite; not parallel: it sets the AWS credentials the SDK
// needs in the environment).
func TestIdempotencyAgainstLeveeDynamoDB(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "levee-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "levee-test")
	up := startServer(t, &payments{delay: 20 * time.Millisecond})
	base := startLevee(t, "dynamodb", up.URL, "100/s")
	rep := runIdem(t, verify.IdempotencyOptions{URL: base + "/v1/pay", EffectURL: up.URL + "/count", Concurrency: 30})
	allPass(t, rep, map[string]verify.Verdict{verify.CaseRetention: verify.Skip})
	if rep.Failed() {
		t.Fatal("report failed")
	}
}

// With in_flight_wait, duplicates wait for the first and replay it: the
// in-flight case accepts that documented wait.
func TestIdempotencyAgainstLeveeWaiting(t *testing.T) {
	t.Parallel()
	up := startServer(t, &payments{delay: 20 * time.Millisecond})
	base := startLeveeWith(t, "memory", up.URL, "100/s", "      in_flight_wait: 2s\n")
	rep := runIdem(t, verify.IdempotencyOptions{URL: base + "/v1/pay", EffectURL: up.URL + "/count", Concurrency: 20})
	allPass(t, rep, map[string]verify.Verdict{verify.CaseRetention: verify.Skip})
	if r, _ := rep.Result(verify.CaseInFlight); !strings.Contains(r.Evidence, "all 20 duplicates received the one response") {
		t.Fatalf("in-flight evidence: %s", r.Evidence)
	}
}

func TestIdempotencyCorrectFakePasses(t *testing.T) {
	t.Parallel()
	f := &fakeAPI{}
	s := startServer(t, f)
	rep := runIdem(t, verify.IdempotencyOptions{URL: s.URL + "/v1/pay", EffectURL: s.URL + "/count", Concurrency: 20})
	allPass(t, rep, map[string]verify.Verdict{verify.CaseRetention: verify.Skip})
}

// Each broken server is caught by the case that names its bug, and only
// the cases that depend on it fail.
func TestIdempotencyBrokenServers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		api  *fakeAPI
		fail []string
	}{
		{"double-executes-concurrent-duplicates", &fakeAPI{raceyClaim: true}, []string{verify.CaseConcurrent}},
		{"replays-another-body", &fakeAPI{regenerateReplay: true}, []string{verify.CaseReplay, verify.CaseQuotedKey, verify.CaseConcurrent}},
		{"ignores-body-on-reused-key", &fakeAPI{ignoreBody: true}, []string{verify.CaseBodyMismatch}},
		{"leaks-across-tenants", &fakeAPI{globalKeys: true}, []string{verify.CaseTenants}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, tc.api)
			rep := runIdem(t, verify.IdempotencyOptions{URL: s.URL + "/v1/pay", EffectURL: s.URL + "/count", Concurrency: 20})
			want := map[string]verify.Verdict{}
			for _, c := range tc.fail {
				want[c] = verify.Fail
			}
			wantVerdicts(t, rep, want)
			if !rep.Failed() {
				t.Fatal("report passed")
			}
		})
	}
}

func TestRateLimitAgainstLevee(t *testing.T) {
	t.Parallel()
	up := startServer(t, &payments{})
	base := startLevee(t, "memory", up.URL, "5/s burst 5")
	rep := runRL(t, verify.RateLimitOptions{URL: base + "/v1/limited", ExpectProblem: true,
		Header: http.Header{"X-Api-Key": {"verify"}}}, "5/s burst 5")
	allPass(t, rep, nil)
}

func runRL(t *testing.T, o verify.RateLimitOptions, limit string) *verify.Report {
	t.Helper()
	o.Limit = mustPolicy(t, limit)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	rep, err := verify.RateLimit(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestRateLimitFakes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		lim      *fakeLimiter
		declared string
		want     map[string]verify.Verdict
	}{
		{"correct", &fakeLimiter{policy: mustPolicy(t, "4/s burst 3")}, "4/s burst 3", nil},
		{"retry-after-too-short", &fakeLimiter{policy: mustPolicy(t, "1/2s burst 2"), retryAfter: "1"}, "1/2s burst 2",
			map[string]verify.Verdict{verify.CaseRetryAfterHonest: verify.Fail}},
		{"retry-after-too-long", &fakeLimiter{policy: mustPolicy(t, "4/s burst 2"), retryAfter: "3"}, "4/s burst 2",
			map[string]verify.Verdict{verify.CaseRetryAfterHonest: verify.Fail}},
		{"retry-after-garbage", &fakeLimiter{policy: mustPolicy(t, "4/s burst 2"), retryAfter: "soon"}, "4/s burst 2",
			map[string]verify.Verdict{verify.CaseRetryAfter: verify.Fail, verify.CaseRetryAfterHonest: verify.Skip}},
		{"500-on-throttle", &fakeLimiter{policy: mustPolicy(t, "4/s burst 2"), status: 500}, "4/s burst 2",
			map[string]verify.Verdict{verify.CaseThrottleStatus: verify.Fail}},
		{"503-on-throttle", &fakeLimiter{policy: mustPolicy(t, "4/s burst 2"), status: 503}, "4/s burst 2",
			map[string]verify.Verdict{verify.CaseThrottleStatus: verify.Fail}},
		{"burst-larger-than-declared", &fakeLimiter{policy: mustPolicy(t, "4/s burst 8")}, "4/s burst 2",
			map[string]verify.Verdict{verify.CaseBurst: verify.Fail, verify.CaseRateLimitFields: verify.Fail,
				verify.CaseThrottleStatus: verify.Skip, verify.CaseRetryAfter: verify.Skip, verify.CaseRetryAfterHonest: verify.Skip, verify.CaseProblemJSON: verify.Skip}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, tc.lim)
			rep := runRL(t, verify.RateLimitOptions{URL: s.URL, ExpectProblem: true}, tc.declared)
			allPass(t, rep, tc.want)
			if len(tc.want) > 0 && !rep.Failed() {
				t.Fatal("report passed")
			}
		})
	}
}

func TestReportOutputs(t *testing.T) {
	t.Parallel()
	rep := &verify.Report{Suite: "idempotency", Target: "http://x", Started: time.Unix(0, 0), Results: []verify.Result{
		{Case: "a", Verdict: verify.Pass, Evidence: "fine"},
		{Case: "b", Verdict: verify.Fail, Evidence: "broken <here>", Duration: time.Second},
		{Case: "c", Verdict: verify.Skip, Evidence: "n/a"},
	}}
	var j bytes.Buffer
	if err := rep.WriteJSON(&j); err != nil {
		t.Fatal(err)
	}
	var back struct {
		verify.Report
		Failed bool
		Counts map[string]int
	}
	if err := json.Unmarshal(j.Bytes(), &back); err != nil || len(back.Results) != 3 || back.Results[1].Verdict != verify.Fail ||
		!back.Failed || back.Counts["fail"] != 1 || back.Counts["pass"] != 1 {
		t.Fatalf("json round trip: %v %+v", err, back)
	}
	var x bytes.Buffer
	if err := rep.WriteJUnit(&x); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Skipped  int `xml:"skipped,attr"`
		Suite    struct {
			Cases []struct {
				Name    string `xml:"name,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(x.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Tests != 3 || doc.Failures != 1 || doc.Skipped != 1 || doc.Suite.Cases[1].Failure == nil || doc.Suite.Cases[1].Failure.Message != "broken <here>" {
		t.Fatalf("junit: %+v\n%s", doc, x.String())
	}
	var tb bytes.Buffer
	if err := rep.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tb.String(), "FAIL") || !strings.Contains(tb.String(), "1 passed, 1 failed, 0 warned, 1 skipped") {
		t.Fatalf("table:\n%s", tb.String())
	}
	if !rep.Failed() {
		t.Fatal("Failed() = false with a failing case")
	}
}

func TestOptionsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, err := verify.Idempotency(ctx, verify.IdempotencyOptions{URL: "ftp://x"}); err == nil || !strings.Contains(err.Error(), "invalid options") {
		t.Fatalf("bad URL: %v", err)
	}
	if _, err := verify.Idempotency(ctx, verify.IdempotencyOptions{URL: "http://127.0.0.1:1/", Retention: time.Hour}); err == nil {
		t.Fatal("an hour of retention accepted")
	}
	if _, err := verify.RateLimit(ctx, verify.RateLimitOptions{URL: "http://127.0.0.1:1/"}); err == nil {
		t.Fatal("no limit accepted")
	}
}
