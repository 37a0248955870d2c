package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/leveehq/levee/chaos"
)

func runChaos(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return chaosMain(ctx, args, stdout, stderr)
}

// chaosMain runs the fault-injection proxy until ctx ends.
func chaosMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("levee chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8081", "address the proxy listens on")
	upstream := fs.String("upstream", "", "URL requests are forwarded to (required)")
	cfgPath := fs.String("config", "", "fault plan YAML (docs/testing.md); none: forward untouched until the control API sets faults")
	control := fs.String("control", "127.0.0.1:0", "address of the control API (GET/PUT/DELETE /faults, GET /counts)")
	seed := fs.Int64("seed", 0, "override the plan's seed")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *upstream == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "levee chaos: --upstream URL is required; usage: levee chaos --listen ADDR --upstream URL [--config faults.yaml] [--control ADDR] [--seed N]")
		return 2
	}
	cfg := &chaos.Config{}
	if *cfgPath != "" {
		b, err := os.ReadFile(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, "levee chaos:", err)
			return 1
		}
		if cfg, err = chaos.ParseConfig(*cfgPath, b); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	if *seed != 0 {
		cfg.Seed = *seed
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	in, err := chaos.NewInjector(cfg, chaos.Options{Logger: log})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	p, err := chaos.NewProxy(*upstream, in, nil)
	if err != nil {
		fmt.Fprintln(stderr, "levee chaos:", err)
		return 2
	}
	pl, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "levee chaos:", err)
		return 1
	}
	cl, err := net.Listen("tcp", *control)
	if err != nil {
		pl.Close()
		fmt.Fprintln(stderr, "levee chaos:", err)
		return 1
	}
	proxy := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	ctl := &http.Server{Handler: p.Control(), ReadHeaderTimeout: 10 * time.Second}
	errs := make(chan error, 2)
	go func() { errs <- proxy.Serve(pl) }()
	go func() { errs <- ctl.Serve(cl) }()
	fmt.Fprintf(stdout, "levee chaos: proxy http://%s -> %s (%d faults, seed %d); control API http://%s\n",
		pl.Addr(), *upstream, len(cfg.Faults), in.Config().Seed, cl.Addr())
	code := 0
	select {
	case <-ctx.Done():
	case err := <-errs:
		if !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(stderr, "levee chaos:", err)
			code = 1
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = proxy.Shutdown(sctx)
	_ = ctl.Shutdown(sctx)
	fmt.Fprintf(stdout, "levee chaos: injected %v\n", in.Counts())
	return code
}
