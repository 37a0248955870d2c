package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/leveehq/levee/idempotency"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.yaml.in/yaml/v3"

	"github.com/leveehq/levee/internal/h1"
)

// Server runs a Gateway: the proxy listener, the admin listener, config
// reloads (SIGHUP via Reload, and file changes when watching) and
// graceful shutdown.
type Server struct {
	path    string
	version string
	log     *slog.Logger
	level   *slog.LevelVar // set when the server built its logger: log.level reloads
	accessW *lineBuffer    // buffered access log, flushed at shutdown
	metrics *Metrics
	gw      *Gateway
	store   idempotency.Store
	closeSt func() error
	closeRL func() error
	queues  *Queues  // durable queues; their workers stop before the stores close
	cleanup *cleanup // deletes expired rows (cleanup.go); nil when nothing to clean
	cleanM  cleanupMetrics

	mu       sync.Mutex // serialises reloads
	cfg      *Config
	proxy    *http.Server // serves every connection, or those front hands off
	front    *h1.Server   // levee's HTTP/1.1 server (server.engine levee)
	admin    *http.Server
	proxyLn  net.Listener
	adminLn  net.Listener
	watcher  *fsnotify.Watcher
	serving  sync.WaitGroup // the listeners' serve loops
	stopOnce sync.Once
	done     chan struct{}
}

// ServerOptions configure NewServer.
type ServerOptions struct {
	// Version is reported by levee_build_info. Default "dev".
	Version string
	// Logger defaults to a JSON logger on stderr at the config's level.
	Logger *slog.Logger
	// Watch reloads the config when its file changes. Default false
	// (cmd/levee turns it on).
	Watch bool
}

// NewServer loads path, opens the store and builds the gateway. It does
// not listen yet: call Start.
func NewServer(ctx context.Context, path string, opts ServerOptions) (*Server, error) {
	cfg, err := LoadFile(path)
	if err != nil {
		return nil, err
	}
	return newServer(ctx, cfg, path, opts)
}

// NewServerFromConfig is NewServer for a config already parsed (tests,
// the demo). Reload re-reads path if it is not empty.
func NewServerFromConfig(ctx context.Context, cfg *Config, path string, opts ServerOptions) (*Server, error) {
	return newServer(ctx, cfg, path, opts)
}

func newServer(ctx context.Context, cfg *Config, path string, opts ServerOptions) (*Server, error) {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	var level *slog.LevelVar
	if opts.Logger == nil {
		level = new(slog.LevelVar)
		_ = level.UnmarshalText([]byte(cfg.Log.Level))
		opts.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	s := &Server{path: path, version: opts.Version, log: opts.Logger, level: level, cfg: cfg, done: make(chan struct{})}
	access := opts.Logger
	var accessW io.Writer
	if level != nil { // our own logger: batch access-log lines (see lineBuffer)
		s.accessW = newLineBuffer(os.Stderr)
		accessW = s.accessW
	}
	s.metrics = NewMetrics(opts.Version)
	st, closer, err := OpenStore(ctx, cfg.Store)
	if err != nil {
		return nil, err
	}
	s.store, s.closeSt = st, closer
	limits, closeRL, err := OpenRateLimitStore(ctx, cfg.RateLimit)
	if err != nil {
		_ = closer()
		return nil, err
	}
	s.closeRL = closeRL
	s.queues, err = OpenQueues(ctx, cfg, QueuesOptions{Store: st, Metrics: s.metrics, Logger: s.log})
	if err != nil {
		_ = closer()
		_ = closeRL()
		return nil, err
	}
	s.gw, err = New(cfg, Options{Store: st, Metrics: s.metrics, Logger: s.log, AccessLog: access, AccessLogWriter: accessW, RateLimits: limits, Queues: s.queues})
	if err != nil {
		_ = s.queues.Stop()
		_ = closer()
		_ = closeRL()
		return nil, err
	}
	s.cleanM = newCleanupMetrics(s.metrics.Registry)
	s.metrics.configTimestamp.SetToCurrentTime()
	if opts.Watch && path != "" {
		if err := s.watch(); err != nil {
			s.log.Warn("config file watching unavailable; SIGHUP still reloads", "error", err)
		}
	}
	return s, nil
}

// Gateway returns the running gateway handler.
func (s *Server) Gateway() *Gateway { return s.gw }

// Metrics returns the server's metrics.
func (s *Server) Metrics() *Metrics { return s.metrics }

// Start opens the listeners and serves in the background.
func (s *Server) Start() error {
	cfg := s.cfg
	var err error
	s.proxyLn, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen %s: %w", cfg.Listen, err)
	}
	sc := cfg.Server
	s.proxy = &http.Server{
		Handler:           s.gw,
		ReadHeaderTimeout: sc.ReadHeaderTimeout.D(),
		ReadTimeout:       sc.ReadTimeout.D(),
		WriteTimeout:      sc.WriteTimeout.D(),
		IdleTimeout:       sc.IdleTimeout.D(),
		MaxHeaderBytes:    int(sc.MaxHeaderBytes),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	byNetHTTP := s.metrics.connections.WithLabelValues(EngineNetHTTP)
	s.proxy.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			byNetHTTP.Inc()
		}
	}
	if sc.Engine == EngineNetHTTP {
		h1.GuardServer(s.proxy, s.gw.rejectEdge)
		s.serving.Add(1)
		go s.serve(s.proxy, h1.GuardListener(s.proxyLn, s.proxy.MaxHeaderBytes), "proxy")
	} else {
		s.front = h1.NewServer(s.proxy, s.log, s.gw.rejectEdge)
		s.front.OnAccept = s.metrics.connections.WithLabelValues(EngineLevee).Inc
		s.serving.Add(1)
		go func() {
			defer s.serving.Done()
			if err := s.front.Serve(s.proxyLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("listener failed", "listener", "proxy", "error", err)
			}
		}()
	}
	if cfg.Admin.Listen != "off" {
		s.adminLn, err = net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			_ = s.proxyLn.Close()
			return fmt.Errorf("gateway: admin listen %s: %w", cfg.Admin.Listen, err)
		}
		s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
		s.serving.Add(1)
		go s.serve(s.admin, s.adminLn, "admin")
	}
	if err := s.queues.Start(context.Background()); err != nil {
		_ = s.proxyLn.Close()
		if s.adminLn != nil {
			_ = s.adminLn.Close()
		}
		return err
	}
	s.cleanup = startCleanup(cleanupTargets(s.store, s.queues.bk), cfg.Store.cleanupInterval(), s.cleanM, s.log)
	s.log.Info("levee started", "listen", s.proxyLn.Addr().String(), "admin", s.AdminAddr(),
		"store", cfg.Store.Type, "routes", len(cfg.Routes), "version", s.version)
	return nil
}

// serve runs srv on ln; the caller has added it to s.serving.
func (s *Server) serve(srv *http.Server, ln net.Listener, name string) {
	defer s.serving.Done()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("listener failed", "listener", name, "error", err)
	}
}

// Addr is the proxy listener's address (after Start).
func (s *Server) Addr() string {
	if s.proxyLn == nil {
		return ""
	}
	return s.proxyLn.Addr().String()
}

// AdminAddr is the admin listener's address, or "" when disabled.
func (s *Server) AdminAddr() string {
	if s.adminLn == nil {
		return ""
	}
	return s.adminLn.Addr().String()
}

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.Ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if s.cfg.Admin.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /keys", s.requireToken(s.handleKeyList))
	mux.HandleFunc("GET /keys/{key}", s.requireToken(s.handleKeyShow))
	mux.HandleFunc("POST /keys/{key}/resolve", s.requireToken(s.handleKeyResolve))
	s.registerDLQ(mux)
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		red := s.cfg.Redacted()
		s.mu.Unlock()
		out, err := yaml.Marshal(&red)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
		_, _ = w.Write(out)
	})
	return mux
}

// Ready reports whether the store answers: a lookup of a key that never
// exists, bounded by 2 s.
func (s *Server) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := s.store.Lookup(ctx, "levee:readyz", time.Now())
	if err == nil || errors.Is(err, idempotency.ErrNotFound) {
		return nil
	}
	return fmt.Errorf("store: %w", err)
}

// Reload re-reads the config file, validates it and swaps it in. An
// invalid file is logged and counted, and the running config keeps
// serving. Fields tagged reload:"restart" (listeners, the stores, the
// server timeouts) cannot change without a restart: such a change fails
// the reload, naming every such field.
func (s *Server) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.reloadLocked()
	if err != nil {
		s.metrics.configReloads.WithLabelValues("failure").Inc()
		s.log.Error("config reload failed; the previous config keeps serving", "file", s.path, "error", err)
		return err
	}
	s.metrics.configReloads.WithLabelValues("success").Inc()
	s.metrics.configTimestamp.SetToCurrentTime()
	s.log.Info("config reloaded", "file", s.path, "routes", len(s.cfg.Routes))
	return nil
}

func (s *Server) reloadLocked() error {
	if s.path == "" {
		return errors.New("gateway: no config file to reload")
	}
	cfg, err := LoadFile(s.path)
	if err != nil {
		return err
	}
	if changed := s.cfg.RestartChanges(cfg); len(changed) > 0 {
		return fmt.Errorf("gateway: %s: %s cannot change on reload; restart levee", s.path, strings.Join(changed, ", "))
	}
	if err := s.gw.Apply(cfg); err != nil {
		return err
	}
	s.gw.CloseIdleConnections() // upstreams may have been dropped
	if s.level != nil {
		_ = s.level.UnmarshalText([]byte(cfg.Log.Level))
	}
	s.cfg = cfg
	return nil
}

// watch reloads when the config file changes. It watches the directory,
// so editors that replace the file and Kubernetes ConfigMap symlink swaps
// are seen; bursts of events are coalesced.
func (s *Server) watch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	if err := w.Add(dir); err != nil {
		_ = w.Close()
		return err
	}
	s.watcher = w
	base := filepath.Base(s.path)
	go func() {
		var timer *time.Timer
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Base(ev.Name) != base && filepath.Base(ev.Name) != "..data" {
					continue
				}
				if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) == 0 {
					continue
				}
				if timer != nil {
					timer.Stop()
				}
				timer = time.AfterFunc(200*time.Millisecond, func() { _ = s.Reload() })
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				s.log.Warn("config watcher error", "error", err)
			case <-s.done:
				if timer != nil {
					timer.Stop()
				}
				return
			}
		}
	}()
	return nil
}

// Shutdown stops accepting connections, waits for in-flight requests up
// to ctx's deadline, then closes the store. It is safe to call twice.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		close(s.done)
		if s.watcher != nil {
			_ = s.watcher.Close()
		}
		switch {
		case s.front != nil:
			err = s.front.Shutdown(ctx)
		case s.proxy != nil:
			err = s.proxy.Shutdown(ctx)
		}
		if s.admin != nil {
			_ = s.admin.Shutdown(ctx)
		}
		s.waitServing(ctx)
		s.gw.CloseIdleConnections()
		s.cleanup.Stop()
		if cerr := s.queues.Stop(); cerr != nil && err == nil { // workers stop before the stores close
			err = cerr
		}
		if cerr := s.gw.CloseUpstreamStore(); cerr != nil && err == nil {
			err = cerr
		}
		if cerr := s.closeSt(); cerr != nil && err == nil {
			err = cerr
		}
		if cerr := s.closeRL(); cerr != nil && err == nil {
			err = cerr
		}
		if s.accessW != nil {
			_ = s.accessW.Close()
		}
		s.log.Info("levee stopped", "error", errString(err))
	})
	return err
}

// waitServing waits, until ctx is done, for the serve loops to return
// (and log what they log).
func (s *Server) waitServing(ctx context.Context) {
	done := make(chan struct{})
	go func() { s.serving.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
