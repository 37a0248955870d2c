// Command levee is the levee gateway: idempotency and rate limits in
// front of any HTTP service, configured by one YAML file. It is a thin
// main around package gateway. See `levee help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/internal/demo"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `levee — keeps API integrations correct under retries, duplicates and outages.

Usage:
  levee demo                          run a guided tour: a sample payments API behind
                                      levee on the embedded SQLite store (no setup)
  levee serve --config levee.yaml     run the gateway
  levee validate --config levee.yaml  check a config file and exit (errors name line and field)
  levee keys show|list|resolve ...    inspect and resolve idempotency keys (admin API; see levee keys help)
  levee dlq list|show|replay|purge    operate the dead-letter queues (admin API; see levee dlq help)
  levee verify idempotency|ratelimit  check any API's idempotency or rate limits (docs/testing.md)
  levee chaos --upstream URL          an HTTP fault-injection proxy (docs/testing.md)
  levee load --url URL --rate 500/s   paced load with a report and a plot (docs/testing.md)
  levee version                       print the version, commit and commit time
  levee help                          this text

Signals (serve): SIGHUP reloads the config (so does editing the file);
SIGTERM or SIGINT stop accepting and drain in-flight requests.

Start from examples/levee.yaml; every option is in docs/configuration.md.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "validate":
		return validate(args[1:], stdout, stderr)
	case "demo":
		return runDemo(args[1:], stdout, stderr)
	case "keys":
		return runKeys(args[1:], stdout, stderr)
	case "dlq":
		return runDLQ(args[1:], stdout, stderr)
	case "verify":
		return runVerify(args[1:], stdout, stderr)
	case "chaos":
		return runChaos(args[1:], stdout, stderr)
	case "load":
		return runLoad(args[1:], stdout, stderr)
	case "version", "--version", "-version", "-v":
		printVersion(stdout)
		return 0
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "levee: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet("levee "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "levee.yaml", "path of the YAML config file")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "levee %s: unexpected argument %q (use --config FILE)\n", name, fs.Arg(0))
		return "", false
	}
	return *path, true
}

func validate(args []string, stdout, stderr io.Writer) int {
	path, ok := configFlag("validate", args, stderr)
	if !ok {
		return 2
	}
	cfg, err := gateway.LoadFile(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK (%d routes, store %s, listen %s)\n", path, len(cfg.Routes), cfg.Store.Type, cfg.Listen)
	return 0
}

func serve(args []string, stderr io.Writer) int {
	path, ok := configFlag("serve", args, stderr)
	if !ok {
		return 2
	}
	// Signals are caught before the listeners open, so that one sent as
	// soon as /readyz answers (a deploy tool reloading or stopping at once)
	// is handled, not met by Go's default action, which ends the process
	// (for SIGHUP too). A SIGHUP during start-up waits in the channel and
	// reloads once serving; SIGINT and SIGTERM are caught from just before
	// the listeners open, so that Ctrl-C still ends a start-up that waits
	// for a store.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx := context.Background()
	srv, err := gateway.NewServer(ctx, path, gateway.ServerOptions{Version: current().Version, Watch: true})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := srv.Start(); err != nil {
		fmt.Fprintln(stderr, err)
		_ = srv.Shutdown(ctx)
		return 1
	}
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			_ = srv.Reload()
			continue
		}
		signal.Stop(sigs)
		timeout := srv.Gateway().Config().Server.ShutdownTimeout.D()
		sctx, cancel := context.WithTimeout(ctx, timeout)
		err := srv.Shutdown(sctx)
		cancel()
		if err != nil {
			fmt.Fprintf(stderr, "levee: shutdown: %v\n", err)
			return 1
		}
		return 0
	}
	return 0
}

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("levee demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tourOnly := fs.Bool("tour-only", false, "exit after the tour instead of serving")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	_, err := demo.Run(ctx, demo.Options{Out: stdout, Serve: !*tourOnly, Version: current().Version})
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "levee demo: %v\n", err)
		return 1
	}
	return 0
}
