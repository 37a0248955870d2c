package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/verify"
)

const verifyUsage = `Usage:
  levee verify idempotency --url URL [--method POST] [--body @file] [--header K:V ...]
                           [--id-jsonpath $.id] [--effect-url URL] [--tenant-header H]
                           [--retention D] [--json FILE] [--junit FILE]
  levee verify ratelimit   --url URL --limit "10/s burst 20" [--header K:V ...]
                           [--expect-problem] [--json FILE] [--junit FILE]

Checks an API's idempotency-key or rate-limit behaviour against the standards.
Exit status: 0 when no case failed, 1 when one did, 2 for bad usage.
See docs/testing.md.
`

// headerFlags collects repeated --header K:V flags.
type headerFlags struct{ h http.Header }

func (f *headerFlags) String() string { return "" }

func (f *headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return fmt.Errorf("want Name: value, got %q", v)
	}
	if f.h == nil {
		f.h = http.Header{}
	}
	f.h.Add(k, strings.TrimSpace(val))
	return nil
}

// readBody returns v, or the contents of the file v names with @file.
func readBody(v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	if name, ok := strings.CutPrefix(v, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("--body: %w", err)
		}
		return b, nil
	}
	return []byte(v), nil
}

type reportFlags struct {
	json, junit *string
	timeout     *time.Duration
}

func addReportFlags(fs *flag.FlagSet, def time.Duration) reportFlags {
	return reportFlags{
		json:    fs.String("json", "", "also write the report as JSON to `FILE`"),
		junit:   fs.String("junit", "", "also write the report as JUnit XML to `FILE`"),
		timeout: fs.Duration("timeout", def, "bound on the whole run"),
	}
}

func runVerify(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, verifyUsage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "idempotency":
		return verifyIdempotency(ctx, args[1:], stdout, stderr)
	case "ratelimit":
		return verifyRateLimit(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "levee verify: unknown suite %q\n\n%s", args[0], verifyUsage)
	return 2
}

func verifyIdempotency(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("levee verify idempotency", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o verify.IdempotencyOptions
	var hdr headerFlags
	fs.StringVar(&o.URL, "url", "", "endpoint under test (required)")
	fs.StringVar(&o.Method, "method", "POST", "request method")
	body := fs.String("body", "", "request body, or @file")
	fs.Var(&hdr, "header", "request header `Name: value` (repeatable)")
	idp := fs.String("id-jsonpath", "", "JSONPath of the resource id in a successful body, e.g. $.id")
	fs.StringVar(&o.EffectURL, "effect-url", "", "GET URL returning the number of executions (an integer or {\"count\": n})")
	fs.StringVar(&o.TenantHeader, "tenant-header", "", "credential header that scopes keys (enables the tenant case)")
	fs.StringVar(&o.TenantB, "tenant-b", "", "the second tenant's credential value (default levee-verify-tenant-b)")
	fs.DurationVar(&o.Retention, "retention", 0, "declared key retention to check (waits that long; at most 10m)")
	fs.StringVar(&o.KeyHeader, "key-header", "Idempotency-Key", "idempotency key header")
	fs.StringVar(&o.ReplayedHeader, "replayed-header", "Idempotent-Replayed", `header a replay carries as "true" ("-": the API claims none)`)
	fs.BoolVar(&o.KeyOptional, "key-optional", false, "the API does not require a key (skip the missing-key case)")
	fs.IntVar(&o.Concurrency, "concurrency", 50, "simultaneous duplicates")
	fs.StringVar(&o.OtherURL, "other-url", "", "URL for the same-key-other-path case (default URL + /levee-verify-other)")
	fs.StringVar(&o.OtherMethod, "other-method", "", "method for the same-key-other-method case (default PATCH, or POST)")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", 10*time.Second, "bound on each request")
	rf := addReportFlags(fs, 2*time.Minute)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.URL == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "levee verify idempotency: --url is required and no arguments are taken\n\n%s", verifyUsage)
		return 2
	}
	o.Header = hdr.h
	var err error
	if o.Body, err = readBody(*body); err != nil {
		fmt.Fprintln(stderr, "levee verify:", err)
		return 2
	}
	if *idp != "" {
		p, err := verify.ParseJSONPath(*idp)
		if err != nil {
			fmt.Fprintln(stderr, "levee verify: --id-jsonpath:", err)
			return 2
		}
		o.IDPath = &p
	}
	ctx, cancel := context.WithTimeout(ctx, *rf.timeout+o.Retention)
	defer cancel()
	rep, err := verify.Idempotency(ctx, o)
	return finishVerify(rep, err, rf, stdout, stderr)
}

func verifyRateLimit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("levee verify ratelimit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o verify.RateLimitOptions
	var hdr headerFlags
	fs.StringVar(&o.URL, "url", "", "endpoint under test (required; its limit must be idle)")
	fs.StringVar(&o.Method, "method", "GET", "request method")
	body := fs.String("body", "", "request body, or @file")
	fs.Var(&hdr, "header", "request header `Name: value` (repeatable)")
	limit := fs.String("limit", "", `declared limit, e.g. "10/s burst 20" (required)`)
	fs.BoolVar(&o.ExpectProblem, "expect-problem", false, "the API documents application/problem+json on 429")
	fs.DurationVar(&o.MaxWait, "max-wait", 10*time.Second, "longest Retry-After the honesty case waits")
	fs.DurationVar(&o.RequestTimeout, "request-timeout", 10*time.Second, "bound on each request")
	rf := addReportFlags(fs, time.Minute)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.URL == "" || *limit == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "levee verify ratelimit: --url and --limit are required\n\n%s", verifyUsage)
		return 2
	}
	p, err := ratelimit.ParsePolicy(*limit)
	if err != nil {
		fmt.Fprintln(stderr, "levee verify: --limit:", err)
		return 2
	}
	o.Limit, o.Header = p, hdr.h
	if o.Body, err = readBody(*body); err != nil {
		fmt.Fprintln(stderr, "levee verify:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *rf.timeout)
	defer cancel()
	rep, err := verify.RateLimit(ctx, o)
	return finishVerify(rep, err, rf, stdout, stderr)
}

func finishVerify(rep *verify.Report, err error, rf reportFlags, stdout, stderr io.Writer) int {
	if errors.Is(err, verify.ErrOptions) {
		fmt.Fprintln(stderr, "levee verify:", err)
		return 2
	}
	if rep == nil {
		fmt.Fprintln(stderr, "levee verify:", err)
		return 1
	}
	code := finishReport("levee verify", stdout, stderr, err, rep.WriteTable,
		[]reportFile{{*rf.json, rep.WriteJSON}, {*rf.junit, rep.WriteJUnit}}, false)
	if rep.Failed() {
		code = 1
	}
	return code
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
