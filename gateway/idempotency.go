package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/config"
)

// IdempotencyConfig is a route's idempotency section: the idempotency
// middleware's options, with the library's defaults (idempotency.Default*)
// filled in so that validate, /config and the docs show the values in
// force.
type IdempotencyConfig struct {
	// Enabled turns the block off without deleting it. Default true.
	Enabled *bool `yaml:"enabled"`
	// Header carrying the key. Default "Idempotency-Key".
	Header string `yaml:"header"`
	// Methods covered. Default [POST, PATCH].
	Methods []string `yaml:"methods"`
	// Required answers 400 to covered requests without a key. Default false.
	Required bool `yaml:"required"`
	// TenantHeader identifies the tenant (hashed, never stored in clear).
	TenantHeader string `yaml:"tenant_header"`
	// FingerprintHeaders also distinguish requests. Default none.
	FingerprintHeaders []string `yaml:"fingerprint_headers"`
	// Lease before a crashed holder's claim can be taken over. Default 30s.
	Lease Duration `yaml:"lease"`
	// Retention of stored responses. Default 24h.
	Retention Duration `yaml:"retention"`
	// InFlightWait makes duplicates wait and replay instead of 409.
	// Default 0 (answer 409 at once).
	InFlightWait Duration `yaml:"in_flight_wait"`
	// RetryAfter sent with 409 and 503. Default 1s.
	RetryAfter Duration `yaml:"retry_after"`
	// StoreTimeout bounds each store call. Default 5s.
	StoreTimeout Duration `yaml:"store_timeout"`
	// MaxRequestBody buffered for fingerprinting (413 above). Default 1MiB.
	MaxRequestBody ByteSize `yaml:"max_request_body"`
	// MaxStoredBody of responses stored for replay. Default 1MiB.
	MaxStoredBody ByteSize `yaml:"max_stored_body"`
	// StoredHeaders replayed. Default: idempotency.DefaultStoredHeaders.
	StoredHeaders []string `yaml:"stored_headers"`
	// FailOpen proxies unprotected when the store is down. Default false
	// (503 + Retry-After).
	FailOpen bool `yaml:"fail_open"`
	// StoreServerErrors stores 5xx responses too instead of releasing the
	// key. Default false.
	StoreServerErrors bool `yaml:"store_server_errors"`
	// OnUnknownOutcome is what happens to the key when the whole request
	// reached the upstream and its answer was lost (timeout, connection
	// lost, response cut): hold (default: retries get 409
	// idempotency-outcome-unknown until an operator resolves the key with
	// levee keys, or retention ends) or release (a retry executes again:
	// only for upstreams that dedupe the forwarded Idempotency-Key
	// themselves).
	OnUnknownOutcome string `yaml:"on_unknown_outcome"`
}

// The values of on_unknown_outcome.
const (
	UnknownHold    = "hold"
	UnknownRelease = "release"
)

func (c *IdempotencyConfig) enabled() bool {
	return c != nil && (c.Enabled == nil || *c.Enabled)
}

// Defaults implements config.Section.
func (c *IdempotencyConfig) Defaults() {
	if c.Enabled == nil {
		t := true
		c.Enabled = &t
	}
	config.Default(&c.Header, idempotency.DefaultHeader)
	if c.Methods == nil {
		c.Methods = idempotency.DefaultMethods()
	}
	for j, m := range c.Methods {
		c.Methods[j] = strings.ToUpper(m)
	}
	config.Default(&c.Lease, Duration(idempotency.DefaultLease))
	config.Default(&c.Retention, Duration(idempotency.DefaultRetention))
	config.Default(&c.RetryAfter, Duration(idempotency.DefaultRetryAfter))
	config.Default(&c.StoreTimeout, Duration(idempotency.DefaultStoreTimeout))
	config.Default(&c.MaxRequestBody, idempotency.DefaultMaxRequestBody)
	config.Default(&c.MaxStoredBody, idempotency.DefaultMaxStoredBody)
	if c.StoredHeaders == nil {
		// Levee-Queued: a write an upstream's queue fallback accepted
		// replays as queued, not as delivered.
		c.StoredHeaders = append(slices.Clone(idempotency.DefaultStoredHeaders), QueuedHeader)
	}
	config.Default(&c.OnUnknownOutcome, UnknownHold)
}

// Validate implements config.Section.
func (c *IdempotencyConfig) Validate(r *config.Report, p string) {
	for j, up := range c.Methods {
		if up == "GET" || up == "HEAD" || up == "OPTIONS" {
			r.Bad(fmt.Sprintf("%s.methods[%d]", p, j), "%s is safe and never stored", up)
		} else if !slices.Contains(validMethods, up) {
			r.Bad(fmt.Sprintf("%s.methods[%d]", p, j), "unknown method %q", up)
		}
	}
	if c.Retention < c.Lease {
		r.Bad(p+".retention", "must be at least the lease (%v)", c.Lease.D())
	}
	if c.OnUnknownOutcome != UnknownHold && c.OnUnknownOutcome != UnknownRelease {
		r.Bad(p+".on_unknown_outcome", "unknown value %q (want %s or %s)", c.OnUnknownOutcome, UnknownHold, UnknownRelease)
	}
}

// middleware builds the route's idempotency middleware on the gateway's
// store and its engine (for the admin key tools), or nils when the
// section is absent or disabled.
func (c *IdempotencyConfig) middleware(g *Gateway, route string) (func(http.Handler) http.Handler, *idempotency.Engine, error) {
	if !c.enabled() {
		return nil, nil, nil
	}
	if g.store == nil {
		return nil, nil, fmt.Errorf("idempotency is enabled but no store is configured")
	}
	eng := idempotency.New(g.store, idempotency.Options{
		Lease:        c.Lease.D(),
		Retention:    c.Retention.D(),
		InFlightWait: c.InFlightWait.D(),
		RetryAfter:   c.RetryAfter.D(),
		StoreTimeout: c.StoreTimeout.D(),
		FailOpen:     c.FailOpen,
		OnEvent:      g.idempotencyEvent(route),
	})
	hopts := idempotency.HTTPOptions{
		Header:             c.Header,
		Methods:            c.Methods,
		Required:           c.Required,
		Scope:              route,
		TenantHeader:       c.TenantHeader,
		FingerprintHeaders: c.FingerprintHeaders,
		MaxRequestBody:     int64(c.MaxRequestBody),
		MaxStoredBody:      int64(c.MaxStoredBody),
		StoredHeaders:      c.StoredHeaders,
	}
	if c.StoreServerErrors {
		hopts.Store = func(status int) bool {
			return idempotency.DefaultStore(status) || status >= 500
		}
	}
	if c.OnUnknownOutcome == UnknownRelease {
		hopts.OnUnknownOutcome = idempotency.UnknownOutcomeRelease
	}
	return eng.Middleware(hopts), eng, nil
}

func (g *Gateway) idempotencyEvent(route string) func(context.Context, idempotency.Event) {
	return func(ctx context.Context, ev idempotency.Event) {
		g.metrics.idempotency.WithLabelValues(route, string(ev.Outcome)).Inc()
		if ri := infoFrom(ctx); ri != nil {
			ri.idem = ev.Outcome
		}
		if ev.Outcome == idempotency.OutcomeUnknown {
			g.metrics.unknownOutcomes.WithLabelValues(route).Inc()
			attrs := []slog.Attr{slog.String("route", route), slog.String("key", ev.Key)}
			if ev.Err != nil {
				attrs = append(attrs, slog.String("error", ev.Err.Error()))
			}
			if ri := infoFrom(ctx); ri != nil && ri.sw != nil {
				attrs = append(attrs, slog.String("request_id", ri.sw.requestID))
			}
			g.log.LogAttrs(ctx, slog.LevelWarn, "upstream outcome unknown: the idempotency key is held until an operator resolves it (levee keys)", attrs...)
		}
		if ev.Err != nil && (ev.Outcome == idempotency.OutcomeStoreError || ev.Outcome == idempotency.OutcomeNotRecorded || ev.Outcome == idempotency.OutcomeFailOpen) {
			g.log.LogAttrs(ctx, slog.LevelError, "idempotency store failure", slog.String("route", route),
				slog.String("outcome", string(ev.Outcome)), slog.String("error", ev.Err.Error()))
		}
	}
}
