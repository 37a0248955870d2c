// Package verify checks an HTTP API's idempotency-key and rate-limit
// behaviour against the published standards, as a black box: the IETF
// draft "The Idempotency-Key HTTP Header Field"
// (draft-ietf-httpapi-idempotency-key-header) and Stripe's documented
// behaviour for Idempotency, and RFC 6585 (429), RFC 9110 (Retry-After),
// RFC 9651 structured fields and draft-ietf-httpapi-ratelimit-headers
// for RateLimit. It works against any API, not only levee.
//
// Idempotency and RateLimit run a fixed list of cases and return a
// Report: one Result per case with a Verdict and the evidence that
// decided it. Every loop is bounded in count and by the context's
// deadline, and only the configured URL (plus the read-back EffectURL)
// is ever requested.
package verify

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Verdict is the outcome of one case.
type Verdict string

// Verdicts. Only Fail makes a Report fail.
const (
	// Pass: the API behaved as the standard says.
	Pass Verdict = "pass"
	// Fail: the API broke the contract; Evidence says how.
	Fail Verdict = "fail"
	// Warn: allowed by the standard but worth knowing (e.g. a key
	// kept past its declared retention), or inconclusive.
	Warn Verdict = "warn"
	// Skip: the case could not run with the options given (e.g. no
	// EffectURL) or a previous case made it meaningless.
	Skip Verdict = "skip"
)

// Result is the outcome of one case.
type Result struct {
	// Case names the check, e.g. "concurrent-duplicates".
	Case string `json:"case"`
	// Verdict is pass, fail, warn or skip.
	Verdict Verdict `json:"verdict"`
	// Evidence is what was observed: statuses, headers, counts.
	Evidence string `json:"evidence"`
	// Duration is how long the case took.
	Duration time.Duration `json:"duration_ns"`
}

// Report is the outcome of one suite run.
type Report struct {
	// Suite is "idempotency" or "ratelimit".
	Suite string `json:"suite"`
	// Target is the URL checked.
	Target string `json:"target"`
	// Started is when the run began.
	Started time.Time `json:"started"`
	// Results lists the cases in the order they ran.
	Results []Result `json:"results"`
}

// Failed reports whether any case failed.
func (r *Report) Failed() bool {
	for _, c := range r.Results {
		if c.Verdict == Fail {
			return true
		}
	}
	return false
}

// Result returns the result of the named case and whether it ran.
func (r *Report) Result(name string) (Result, bool) {
	for _, c := range r.Results {
		if c.Case == name {
			return c, true
		}
	}
	return Result{}, false
}

// Counts returns how many cases got each verdict.
func (r *Report) Counts() map[Verdict]int {
	m := map[Verdict]int{}
	for _, c := range r.Results {
		m[c.Verdict]++
	}
	return m
}

// WriteTable writes a human-readable table (case, verdict, evidence) and
// a summary line. It returns the first write error.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "CASE\tVERDICT\tEVIDENCE\n")
	for _, c := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Case, strings.ToUpper(string(c.Verdict)), oneLine(c.Evidence))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("verify: write table: %w", err)
	}
	n := r.Counts()
	_, err := fmt.Fprintf(w, "\n%s %s: %d passed, %d failed, %d warned, %d skipped\n",
		r.Suite, r.Target, n[Pass], n[Fail], n[Warn], n[Skip])
	if err != nil {
		return fmt.Errorf("verify: write table: %w", err)
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// WriteJSON writes the report as one indented JSON document: the
// Report's fields plus "failed" and "counts" (cases per verdict).
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	doc := struct {
		*Report
		Failed bool            `json:"failed"`
		Counts map[Verdict]int `json:"counts"`
	}{r, r.Failed(), r.Counts()}
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("verify: write json: %w", err)
	}
	return nil
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Skipped   int         `xml:"skipped,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML, the format CI systems
// (GitHub Actions reporters, GitLab, Jenkins) read: one testcase per
// case; fail becomes <failure>, skip becomes <skipped>, warn passes with
// its evidence in <system-out>.
func (r *Report) WriteJUnit(w io.Writer) error {
	s := junitSuite{Name: "levee verify " + r.Suite, Timestamp: r.Started.UTC().Format(time.RFC3339)}
	var total time.Duration
	for _, c := range r.Results {
		jc := junitCase{Name: c.Case, Classname: "verify." + r.Suite, Time: secs(c.Duration)}
		switch c.Verdict {
		case Fail:
			jc.Failure = &junitMessage{Message: oneLine(c.Evidence), Text: c.Evidence}
			s.Failures++
		case Skip:
			jc.Skipped = &junitMessage{Message: oneLine(c.Evidence)}
			s.Skipped++
		default:
			jc.SystemOut = string(c.Verdict) + ": " + c.Evidence
		}
		total += c.Duration
		s.Cases = append(s.Cases, jc)
	}
	s.Tests = len(s.Cases)
	s.Time = secs(total)
	doc := junitSuites{Name: "levee verify", Tests: s.Tests, Failures: s.Failures, Skipped: s.Skipped, Suites: []junitSuite{s}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return fmt.Errorf("verify: write junit: %w", err)
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("verify: write junit: %w", err)
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return fmt.Errorf("verify: write junit: %w", err)
	}
	return nil
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }
