package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/leveehq/levee/load"
	"github.com/leveehq/levee/ratelimit"
)

const loadUsage = `usage: levee load --url URL --rate 500/s --duration 30s [--ramp 1000/s] [--limit "500/s burst 100"]
                  [--method GET] [--body @file] [--header K:V ...] [--html plot.html] [--json FILE] [--quiet]`

func runLoad(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return loadMain(ctx, args, stdout, stderr)
}

func loadMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("levee load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o load.Options
	var hdr headerFlags
	fs.StringVar(&o.URL, "url", "", "target URL (required)")
	fs.StringVar(&o.Method, "method", "GET", "request method")
	body := fs.String("body", "", "request body, or @file")
	fs.Var(&hdr, "header", "request header `Name: value` (repeatable)")
	rate := fs.String("rate", "", "request rate, e.g. 500/s (required; the start rate with --ramp)")
	ramp := fs.String("ramp", "", "ramp linearly from --rate to this rate over --duration")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send (at most 1h)")
	limit := fs.String("limit", "", `the target's declared limit, e.g. "500/s burst 100": compare the 429s with it`)
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "bound on each request")
	fs.Uint64Var(&o.MaxWorkers, "max-workers", 1000, "bound on concurrent requests")
	html := fs.String("html", "", "write an HTML plot of throughput, status and latency over time to `FILE`")
	jsonOut := fs.String("json", "", "write the report as JSON to `FILE`")
	quiet := fs.Bool("quiet", false, "no progress line")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.URL == "" || *rate == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, loadUsage)
		return 2
	}
	var err error
	if o.Rate, err = load.ParseRate(*rate); err != nil {
		fmt.Fprintln(stderr, "levee load: --rate:", err)
		return 2
	}
	if *ramp != "" {
		if o.RampTo, err = load.ParseRate(*ramp); err != nil {
			fmt.Fprintln(stderr, "levee load: --ramp:", err)
			return 2
		}
	}
	if *limit != "" {
		p, err := ratelimit.ParsePolicy(*limit)
		if err != nil {
			fmt.Fprintln(stderr, "levee load: --limit:", err)
			return 2
		}
		o.Limit = &p
	}
	o.Header = hdr.h
	if o.Body, err = readBody(*body); err != nil {
		fmt.Fprintln(stderr, "levee load:", err)
		return 2
	}
	if !*quiet {
		o.Progress = stderr
	}
	rep, err := load.Run(ctx, o)
	if errors.Is(err, load.ErrOptions) {
		fmt.Fprintln(stderr, "levee load:", err)
		return 2
	}
	return finishReport("levee load", stdout, stderr, err, rep.WriteText,
		[]reportFile{{*html, rep.WriteHTML}, {*jsonOut, rep.WriteJSON}}, true)
}
