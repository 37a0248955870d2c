package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/webhook"
)

// WebhookConfig is one entry of the webhooks section: a path where a
// provider's signed events are verified, deduplicated by event id,
// stored durably in a queue and answered 202; the queue delivers them to
// its target (the internal upstream). Webhook routes are rebuilt on
// reload (secrets rotate without a restart); the queue they feed is not.
type WebhookConfig struct {
	// Name identifies the route in metrics, logs and dedupe keys.
	// Required, unique among routes and webhooks.
	Name string `yaml:"name"`
	// Path is the exact path providers POST to. Required.
	Path string `yaml:"path"`
	// Scheme is standard-webhooks, stripe, github, shopify, slack or hmac.
	// Required.
	Scheme string `yaml:"scheme"`
	// Secrets verify signatures, the current one first; use ${ENV}.
	// Required.
	Secrets []string `yaml:"secrets" redact:"secret"`
	// Tolerance is the largest distance between the signed timestamp and
	// now, both ways. Default 5m (schemes without a timestamp: unset).
	Tolerance Duration `yaml:"tolerance"`
	// MaxBodyBytes bounds a webhook body. Default 1MiB.
	MaxBodyBytes ByteSize `yaml:"max_body_bytes"`
	// IDPath takes the event id from the JSON body (dotted path, e.g.
	// data.object.id) instead of the scheme's id header. Default none.
	IDPath string `yaml:"id_path"`
	// HMAC configures scheme hmac.
	HMAC WebhookHMACConfig `yaml:"hmac"`
	// Queue names the queue (queues[].name) events are stored in.
	// Required.
	Queue string `yaml:"queue"`
	// Dedupe drops an event whose id was accepted before (on the
	// gateway's idempotency store). Default true.
	Dedupe *bool `yaml:"dedupe"`
	// DedupeRetention is how long an accepted event id is remembered.
	// Default 72h (providers retry for up to 3 days).
	DedupeRetention Duration `yaml:"dedupe_retention"`
	// InFlightWait is how long a concurrent delivery of an event being
	// accepted waits for it (and then answers 202 duplicate) before
	// answering 409. Default 5s.
	InFlightWait Duration `yaml:"in_flight_wait"`

	scheme webhook.Scheme
}

// WebhookHMACConfig is the generic HMAC scheme's settings.
type WebhookHMACConfig struct {
	// Header carries the signature. Required for scheme hmac.
	Header string `yaml:"header"`
	// Encoding is hex (default) or base64.
	Encoding string `yaml:"encoding"`
	// Prefix begins the header value, e.g. "sha256=". Default none.
	Prefix string `yaml:"prefix"`
	// TimestampHeader holds the Unix send time; it is then signed as
	// "<ts><sep><body>". Default none.
	TimestampHeader string `yaml:"timestamp_header"`
	// TimestampSeparator sits between timestamp and body. Default ".".
	TimestampSeparator string `yaml:"timestamp_separator"`
	// IDHeader holds the event id. Default none.
	IDHeader string `yaml:"id_header"`
}

func (c *WebhookConfig) dedupe() bool { return c.Dedupe == nil || *c.Dedupe }

// Defaults implements config.Section.
func (c *WebhookConfig) Defaults() {
	if c.Dedupe == nil {
		t := true
		c.Dedupe = &t
	}
	config.Default(&c.MaxBodyBytes, ByteSize(webhook.DefaultMaxBodyBytes))
	config.Default(&c.DedupeRetention, Duration(72*time.Hour))
	config.Default(&c.InFlightWait, Duration(5*time.Second))
}

// Validate implements config.Section: it builds the scheme, so that every
// constructor error is reported at the field it concerns.
func (c *WebhookConfig) Validate(r *config.Report, p string) {
	switch {
	case c.Name == "":
		r.Bad(config.Join(p, "name"), "required")
	case len(c.Name) > maxWebhookName:
		// Caught here, not at the first event: every enqueue would fail.
		r.Bad(config.Join(p, "name"), "at most %d bytes, got %d: an event's dedupe key (%s<hash>) is its message's dedupe id (and its id on JetStream and SQS), which queues take up to 255 bytes",
			maxWebhookName, len(c.Name), webhookKeyPrefix("<name>"))
	}
	if c.Path == "" {
		r.Bad(config.Join(p, "path"), "required: the path the provider POSTs to, e.g. /webhooks/stripe")
	} else {
		validMatchPath(r, config.Join(p, "path"), c.Path)
	}
	if c.Queue == "" {
		r.Bad(config.Join(p, "queue"), "required: the queue (queues[].name) events are stored in")
	}
	if c.IDPath != "" {
		if err := webhook.ValidateIDPath(c.IDPath); err != nil {
			r.Bad(config.Join(p, "id_path"), "%v", err)
		}
	}
	if len(c.Secrets) == 0 {
		r.Bad(config.Join(p, "secrets"), "at least one secret is required (use ${ENV})")
		return
	}
	sc := webhook.Config{Secrets: c.Secrets, Tolerance: c.Tolerance.D()}
	var (
		s   webhook.Scheme
		err error
	)
	switch c.Scheme {
	case "standard-webhooks":
		s, err = webhook.NewStandardWebhooks(sc)
	case "stripe":
		s, err = webhook.NewStripe(sc)
	case "github":
		s, err = webhook.NewGitHub(sc)
	case "shopify":
		s, err = webhook.NewShopify(sc)
	case "slack":
		s, err = webhook.NewSlack(sc)
	case "hmac":
		h := c.HMAC
		s, err = webhook.NewHMAC(webhook.HMACConfig{Secrets: c.Secrets, Header: h.Header, Encoding: webhook.Encoding(h.Encoding),
			Prefix: h.Prefix, TimestampHeader: h.TimestampHeader, TimestampSeparator: h.TimestampSeparator, IDHeader: h.IDHeader,
			Tolerance: c.Tolerance.D()})
	default:
		r.Bad(config.Join(p, "scheme"), "unknown scheme %q (want standard-webhooks, stripe, github, shopify, slack or hmac)", c.Scheme)
		return
	}
	if err != nil {
		r.Bad(p, "%v", err) // the library's message names the field; never a secret
		return
	}
	c.scheme = s
}

// webhookRoute builds the route for one webhooks entry.
func (g *Gateway) webhookRoute(wc *WebhookConfig, idx int) (*route, error) {
	gq := g.queues.byName[wc.Queue]
	if gq == nil || wc.scheme == nil {
		return nil, fmt.Errorf("gateway: webhooks[%d] (%s): queue %q is not open", idx, wc.Name, wc.Queue)
	}
	m := g.queues.m
	name := wc.Name
	opts := webhook.Options{
		Source:       name,
		MaxBodyBytes: int64(wc.MaxBodyBytes),
		IDPath:       wc.IDPath,
		OnResult: func(r *http.Request, res webhook.Result) {
			typ := res.Type
			if typ == "" {
				typ = "none"
			}
			m.webhooks.WithLabelValues(name, string(res.Outcome), typ).Inc()
			if res.Outcome == webhook.OutcomeRejected || res.Outcome == webhook.OutcomeFailed {
				attrs := []slog.Attr{slog.String("route", name), slog.String("outcome", string(res.Outcome)), slog.String("type", res.Type), slog.Int("status", res.Status)}
				if res.Err != nil {
					attrs = append(attrs, slog.String("error", res.Err.Error()))
				}
				g.log.LogAttrs(r.Context(), slog.LevelWarn, "webhook refused", attrs...)
			}
		},
	}
	sink := webhookSink{gq: gq, retention: wc.DedupeRetention.D()}
	switch {
	case wc.dedupe() && g.queues.sinkDedupes:
		// The enqueue checks the event's dedupe id atomically and keeps it
		// for the retention: one commit per event.
		opts.SinkDedupes = true
		if g.store != nil {
			sink.legacy = g.queues.legacyDedupe(g.store, name, wc.DedupeRetention.D())
		}
	case wc.dedupe():
		if g.store == nil {
			return nil, fmt.Errorf("gateway: webhooks[%d] (%s): dedupe needs a store", idx, wc.Name)
		}
		opts.Dedupe = NewWebhookDedupe(g.store, wc.DedupeRetention.D(), wc.InFlightWait.D())
		sink.idIsDedupeID = true
	}
	h, err := webhook.NewHandler(wc.scheme, sink, opts)
	if err != nil {
		return nil, fmt.Errorf("gateway: webhooks[%d] (%s): %w", idx, wc.Name, err)
	}
	return &route{name: name, methods: []string{http.MethodPost}, maxBody: int64(wc.MaxBodyBytes), handler: h}, nil
}

// webhookSink stores a verified event in the queue (durably: Enqueue
// returns after the commit), keeping the headers the target may verify
// again, and dedupes by event id in the queue: for the route's retention
// where the backend keeps dedupe ids for the window asked (AcceptOnce, the
// route's only dedupe then), in the backend's own window otherwise (behind
// the idempotency store's dedupe).
type webhookSink struct {
	gq        *gwQueue
	retention time.Duration
	// legacy, when set, looks the event up in the idempotency store too
	// (the transition from the store's dedupe; see legacyDedupe).
	legacy *legacyDedupe
	// idIsDedupeID: the route dedupes on a backend whose window is its own
	// (JetStream, SQS): the event's identity is its message's too, so such
	// a backend needs no map from dedupe id to first message id (JetStream:
	// one publish per event instead of two, store/nats/natsqueue).
	idIsDedupeID bool
}

// notForwarded are, with hopHeaders, the request headers a stored
// webhook does not carry to its target.
var notForwarded = []string{"Content-Length", "Host", "Expect"}

func (s webhookSink) Accept(ctx context.Context, ev webhook.Event) error {
	_, err := s.accept(ctx, ev, s.gq.q.Enqueue)
	return err
}

// AcceptOnce implements webhook.OnceSink.
func (s webhookSink) AcceptOnce(ctx context.Context, ev webhook.Event) (bool, error) {
	if s.legacy != nil {
		seen, err := s.legacy.seen(ctx, webhookKey(ev.Source, ev.ID), time.Now())
		if err != nil {
			return false, fmt.Errorf("gateway: webhook %s: %w", ev.Source, err)
		}
		if seen {
			return true, nil
		}
	}
	return s.accept(ctx, ev, func(ctx context.Context, msgs ...*queue.Message) ([]queue.EnqueueResult, error) {
		return s.gq.q.EnqueueDedupe(ctx, s.retention, msgs...)
	})
}

func (s webhookSink) accept(ctx context.Context, ev webhook.Event, enqueue func(context.Context, ...*queue.Message) ([]queue.EnqueueResult, error)) (bool, error) {
	h := ev.Header.Clone()
	for _, k := range hopHeaders {
		h.Del(k)
	}
	for _, k := range notForwarded {
		h.Del(k)
	}
	h.Set("X-Levee-Webhook-Source", ev.Source)
	if ev.ID != "" {
		h.Set("X-Levee-Webhook-Id", ev.ID)
	}
	msg := &queue.Message{Target: s.gq.cfg.Target, Payload: append([]byte(nil), ev.Body...), Headers: h}
	if ev.ID != "" {
		msg.DedupeID = webhookKey(ev.Source, ev.ID)
		if s.idIsDedupeID {
			msg.ID = msg.DedupeID
		}
	}
	res, err := enqueue(ctx, msg)
	if err != nil {
		return false, fmt.Errorf("gateway: webhook %s: %w", ev.Source, err)
	}
	if !res[0].Duplicate {
		s.gq.parent.m.enqueued.WithLabelValues(s.gq.cfg.Name, "webhook").Inc()
	}
	return res[0].Duplicate, nil
}

// legacyDedupe covers the move of webhook dedupe from the idempotency
// store into the enqueue (SQLite and PostgreSQL queue stores). Before it,
// an accepted event's id was kept in the idempotency store for the
// route's dedupe_retention (72h) and in the queue for its dedupe_window
// (24h) only: a provider's retry of an event accepted 24-72h before the
// upgrade would have been accepted again. For one retention after a route
// first dedupes in the enqueue, an event the queue does not know is looked
// up in the idempotency store as well, and one completed there is a
// duplicate. (An event an earlier version's replica accepts during a
// rolling upgrade is in the queue's own window, for 24h from then: the
// earlier version enqueued under the same dedupe id. A retry later than
// that, of an event accepted by an old replica after the first new one
// started, is the one case left: a rollout is minutes, the retention
// days.) When that retention started is kept in the store itself, under
// legacySinceKey, so that every replica and every restart agree; a
// deployment that starts on this version cannot tell from the marker that
// no earlier version ran; on a store that can say whether it holds any key
// under the route's dedupe prefix (keyPrefixProber: SQLite, PostgreSQL)
// the lookups are skipped while it holds none (see mayHold), so a new
// deployment pays at most one indexed read every 10 s (every) instead
// of a lookup per event. Until a process has read the marker once, its
// sink-deduping webhook routes need the idempotency store: while it is
// down they answer 503 (the provider retries; nothing is lost).
type legacyDedupe struct {
	st        idempotency.Store
	route     string
	retention time.Duration

	// until is when the lookups stop, in Unix nanoseconds; 0 until the
	// marker was read.
	until atomic.Int64

	// probe, when the store has one, says whether any record lies under
	// the route's dedupe prefix (webhookKey's).
	probe func(ctx context.Context) (bool, error)
	// answer is what the last probe decided (nil: none yet).
	answer atomic.Pointer[probeAnswer]
	// every is how long a probe that found no record lets events skip the
	// lookup (nanoseconds, defaultLegacyProbeEvery; tests shorten
	// it). It must stay far below the queue's dedupe window (24h): an
	// event that skips the lookup arrives less than this after a probe
	// that found no record, so a record an earlier version's replica wrote
	// since is younger than this, and that replica enqueued its event under
	// the same dedupe id: the queue still knows it.
	every   atomic.Int64
	probeMu sync.Mutex // held by the one probe in flight
}

// probeAnswer holds, until until (with its monotonic reading), whether
// events skip the lookup: a probe that found no record says skip for
// every; one that failed says look up for legacyProbeRetry; one that found
// a record says look up for good.
type probeAnswer struct {
	until time.Time
	skip  bool
}

// keyPrefixProber is an idempotency store that can tell, in one indexed
// read, whether it holds a record whose key begins with a prefix
// (store/sqlite, store/postgres).
type keyPrefixProber interface {
	HasKeyPrefix(ctx context.Context, prefix string) (bool, error)
}

// defaultLegacyProbeEvery is legacyDedupe.every's default.
const defaultLegacyProbeEvery = 10 * time.Second

// legacyProbeRetry is how long events are looked up without probing after
// a probe failed (the store is slow or down: no convoy of probes).
const legacyProbeRetry = time.Second

// legacyFoundFor stands for "for good" after a probe found a record: the
// transition ends long before.
const legacyFoundFor = 100 * 365 * 24 * time.Hour

// legacySinceKey holds, as a completed record whose body is an RFC 3339
// time, when route first deduped webhooks in the enqueue.
func legacySinceKey(route string) string { return "levee:webhook-since:" + route }

// legacyMarkerLife is how long the marker is kept: far longer than any
// retention.
const legacyMarkerLife = 10 * 365 * 24 * time.Hour

// legacyDedupe returns the route's transition state, shared by the
// route's handlers across reloads.
func (qs *Queues) legacyDedupe(st idempotency.Store, route string, retention time.Duration) *legacyDedupe {
	qs.legacyMu.Lock()
	defer qs.legacyMu.Unlock()
	if qs.legacy == nil {
		qs.legacy = map[string]*legacyDedupe{}
	}
	// (The store is not compared: it is fixed for the gateway's life, and
	// a Store's dynamic type need not be comparable.)
	l := qs.legacy[route]
	if l == nil || l.retention != retention {
		l = &legacyDedupe{st: st, route: route, retention: retention}
		l.every.Store(int64(defaultLegacyProbeEvery))
		is, instrumented := st.(instrumentedStore)
		raw := st
		if instrumented {
			raw = is.Store
		}
		if p, ok := raw.(keyPrefixProber); ok {
			prefix := webhookKeyPrefix(route)
			l.probe = func(ctx context.Context) (bool, error) {
				start := time.Now()
				has, err := p.HasKeyPrefix(ctx, prefix)
				if instrumented {
					is.observe("key_prefix", start, err)
				}
				return has, err
			}
		}
		qs.legacy[route] = l
	}
	return l
}

// keepLegacy forgets the transition state of webhook routes a reload
// removed (a route added again later reads its marker again). Routes still
// serving keep their own pointer to it.
func (qs *Queues) keepLegacy(routes map[string]bool) {
	qs.legacyMu.Lock()
	defer qs.legacyMu.Unlock()
	for r := range qs.legacy {
		if !routes[r] {
			delete(qs.legacy, r)
		}
	}
}

// seen reports whether key was accepted through the idempotency store's
// dedupe, while the transition lasts (false after it, without I/O).
func (l *legacyDedupe) seen(ctx context.Context, key string, now time.Time) (bool, error) {
	until := l.until.Load()
	if until == 0 {
		since, err := l.since(ctx, now)
		if err != nil {
			return false, fmt.Errorf("reading when this route's dedupe moved into the queue: %w", err)
		}
		until = since.Add(l.retention).UnixNano()
		l.until.Store(until)
	}
	if now.UnixNano() >= until || !l.mayHold(ctx, now) {
		return false, nil
	}
	rec, err := l.st.Lookup(ctx, key, now)
	switch {
	case errors.Is(err, idempotency.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("looking the event up in the idempotency store (dedupe before this version): %w", err)
	}
	return rec.State == idempotency.StateCompleted, nil
}

// mayHold reports whether the store may hold an earlier version's record
// for this route: true without a probe, or once a probe found one; false
// while the last probe, less than every ago, found none. One probe runs at
// a time: an event arriving while it runs is looked up, as is every event
// for legacyProbeRetry after a probe failed (the lookup then reports the
// store's state).
func (l *legacyDedupe) mayHold(ctx context.Context, now time.Time) bool {
	if l.probe == nil {
		return true
	}
	if a := l.answer.Load(); a != nil && now.Before(a.until) {
		return !a.skip
	}
	if !l.probeMu.TryLock() {
		return true
	}
	defer l.probeMu.Unlock()
	if a := l.answer.Load(); a != nil && now.Before(a.until) {
		return !a.skip // another event probed meanwhile
	}
	has, err := l.probe(ctx)
	a := &probeAnswer{until: now.Add(time.Duration(l.every.Load())), skip: true}
	switch {
	case err != nil:
		a = &probeAnswer{until: now.Add(legacyProbeRetry)}
	case has:
		a = &probeAnswer{until: now.Add(legacyFoundFor)}
	}
	l.answer.Store(a)
	return !a.skip
}

// since reads the marker, writing it (as now) when absent. A claim does
// both in one call: it returns the marker if it is there, and takes it
// over if a replica that was writing it stopped half-way (a marker left in
// progress would otherwise restart the transition at every start). The
// writes outlive the request that triggered them.
func (l *legacyDedupe) since(ctx context.Context, now time.Time) (time.Time, error) {
	ctx = context.WithoutCancel(ctx)
	key := legacySinceKey(l.route)
	tok := idempotency.NewToken()
	res, err := l.st.Claim(ctx, idempotency.ClaimRequest{Key: key, Token: tok, Now: now,
		LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(legacyMarkerLife)})
	if err != nil {
		return time.Time{}, err
	}
	if !res.Claimed {
		rec := res.Existing
		if rec == nil || rec.State != idempotency.StateCompleted || rec.Response == nil {
			return now, nil // being written by another replica: about now
		}
		t, err := time.Parse(time.RFC3339Nano, string(rec.Response.Body))
		if err != nil || t.After(now) {
			return now, nil
		}
		return t, nil
	}
	body := []byte(now.UTC().Format(time.RFC3339Nano))
	if err := l.st.Complete(ctx, key, tok, idempotency.Response{Status: http.StatusOK, Body: body}, now, now.Add(legacyMarkerLife)); err != nil {
		return time.Time{}, err
	}
	return now, nil
}

// webhookKey is the dedupe key of an event: its source and a hash of its
// id (ids are sender-chosen and unbounded).
func webhookKey(source, id string) string {
	sum := sha256.Sum256([]byte(id))
	return webhookKeyPrefix(source) + hex.EncodeToString(sum[:16])
}

// maxWebhookName is the longest route name whose dedupe keys (the prefix,
// then 32 hex digits) fit the 255 bytes queues take in a message's dedupe
// id (and id, which a deduping route on JetStream or SQS sets to the key).
const maxWebhookName = 255 - len("levee:webhook:") - len(":") - 32

// webhookKeyPrefix begins every dedupe key of source's events.
func webhookKeyPrefix(source string) string { return "levee:webhook:" + source + ":" }

// NewWebhookDedupe returns a webhook.Dedupe over the idempotency engine on
// st: an event id accepted once is seen for retention; a concurrent
// delivery of an event being accepted waits up to inFlightWait and is
// then seen (both callers get 2xx) or, if the first is still running,
// refused with webhook.ErrInFlight (409 + Retry-After); a failed sink
// releases the claim. The fingerprint is constant: the event id is the
// identity, so a provider re-sending an event with a re-encoded body is
// still a duplicate. A store failure is returned as is (503).
func NewWebhookDedupe(st idempotency.Store, retention, inFlightWait time.Duration) webhook.Dedupe {
	return engineDedupe{idempotency.New(st, idempotency.Options{Retention: retention, InFlightWait: inFlightWait})}
}

type engineDedupe struct{ e *idempotency.Engine }

func (d engineDedupe) Claim(ctx context.Context, ev webhook.Event) (func(context.Context, error) error, bool, error) {
	lease, rec, err := d.e.Begin(ctx, webhookKey(ev.Source, ev.ID), idempotency.FingerprintOf(nil))
	switch {
	case errors.Is(err, idempotency.ErrInFlight):
		return nil, false, fmt.Errorf("%w: %w", webhook.ErrInFlight, err)
	case err != nil:
		return nil, false, fmt.Errorf("gateway: webhook dedupe: %w", err)
	case rec != nil:
		return nil, true, nil
	}
	return func(ctx context.Context, sinkErr error) error {
		if sinkErr != nil {
			return lease.Release(ctx)
		}
		return lease.Complete(ctx, idempotency.Response{Status: http.StatusAccepted})
	}, false, nil
}

// applyAsync adds the queues' enqueue paths and the webhook routes to t.
func (g *Gateway) applyAsync(cfg *Config, t *routeTable) error {
	for i := range cfg.Queues {
		qc := &cfg.Queues[i]
		if qc.Path == "" {
			continue
		}
		gq := g.queues.byName[qc.Name]
		if gq == nil {
			return fmt.Errorf("gateway: queues[%d] (%s): the queue is not open (Options.Queues)", i, qc.Name)
		}
		idem, eng, err := qc.Idempotency.middleware(g, "queue:"+qc.Name)
		if err != nil {
			return fmt.Errorf("gateway: queues[%d] (%s): %w", i, qc.Name, err)
		}
		t.prefixes = append(t.prefixes, &route{name: "queue:" + qc.Name, prefix: qc.Path, maxBody: int64(cfg.Server.MaxBodyBytes),
			handler: gq.enqueueHandler(idem), engine: eng})
	}
	for i := range cfg.Webhooks {
		rt, err := g.webhookRoute(&cfg.Webhooks[i], i)
		if err != nil {
			return err
		}
		t.exact[cfg.Webhooks[i].Path] = append(t.exact[cfg.Webhooks[i].Path], rt)
	}
	if g.queues != nil {
		names := make(map[string]bool, len(cfg.Webhooks))
		for i := range cfg.Webhooks {
			names[cfg.Webhooks[i].Name] = true
		}
		g.queues.keepLegacy(names)
	}
	return nil
}
