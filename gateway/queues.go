package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/internal/problem"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/resilience"
	"github.com/leveehq/levee/store/nats/natsqueue"
	"github.com/leveehq/levee/store/postgres/pgqueue"
	"github.com/leveehq/levee/store/sqlite/sqlitequeue"
)

// QueueStoreConfig is the queue_store section: where the durable queues
// (queues:, webhooks:) keep their messages and dead letters. It cannot
// change on reload.
type QueueStoreConfig struct {
	// Type is sqlite (default), postgres, nats (JetStream) or sqs.
	Type string `yaml:"type"`
	// SQLite.Path defaults to a file beside store.sqlite.path, with
	// "-queue" before its extension (levee.db: levee-queue.db), so that the
	// queue's writer and the idempotency store's never wait for each
	// other's write lock. A store file that already holds levee's queue
	// tables (written by a levee that kept the queues there) and no such
	// file beside it keeps serving the queues, so nothing already accepted
	// is stranded.
	SQLite SQLiteConfig `yaml:"sqlite"`

	// storePath is store.sqlite.path when SQLite.Path was derived from it
	// (empty when SQLite.Path was configured).
	storePath string
	// Postgres.URL defaults to store.postgres.url; Postgres.Schema to
	// "levee".
	Postgres PostgresConfig `yaml:"postgres"`
	// NATS is the JetStream connection when Type is nats.
	NATS NATSConfig `yaml:"nats"`
	// SQS is the region, endpoint and queue names when Type is sqs
	// (queue_sqs.go).
	SQS SQSConfig `yaml:"sqs"`
}

// NATSConfig configures the JetStream queue store (store/nats/natsqueue).
// JetStream keeps leases, delays and the dedupe window on the server's
// clock, and a PubAck means the server wrote the message to its file
// store, which it syncs to disk periodically (docs/queue.md).
type NATSConfig struct {
	// URL of the NATS server. Default "nats://127.0.0.1:4222".
	URL string `yaml:"url" redact:"dsn"`
	// Prefix names the streams and buckets. Default "LEVEE".
	Prefix string `yaml:"prefix"`
	// AckWait is how soon a crashed process's claimed messages come back.
	// Default 30s.
	AckWait Duration `yaml:"ack_wait"`
}

// Defaults implements config.Section.
func (c *QueueStoreConfig) Defaults() {
	config.Default(&c.Type, "sqlite")
	config.Default(&c.Postgres.Schema, "levee")
	config.Default(&c.NATS.URL, "nats://127.0.0.1:4222")
	config.Default(&c.NATS.Prefix, natsqueue.DefaultPrefix)
	config.Default(&c.NATS.AckWait, Duration(natsqueue.DefaultAckWait))
	c.SQS.defaults()
}

// inherit fills the connection fields from the idempotency store's.
func (c *QueueStoreConfig) inherit(st StoreConfig) {
	if c.SQLite.Path == "" && st.SQLite.Path != "" {
		c.SQLite.Path, c.storePath = queueFileBeside(st.SQLite.Path), st.SQLite.Path
	}
	config.Default(&c.Postgres.URL, st.Postgres.URL)
}

// Validate implements config.Section.
func (c *QueueStoreConfig) Validate(r *config.Report, path string) {
	switch c.Type {
	case "sqlite", "postgres", "nats":
	case "sqs":
		c.SQS.validate(r, config.Join(path, "sqs"))
	default:
		r.Bad(config.Join(path, "type"), "unknown queue store %q (want sqlite, postgres, nats or sqs)", c.Type)
	}
}

// QueueConfig is one entry of the queues section: a named durable queue
// whose messages are delivered by HTTP POST to Target, with retries and a
// dead-letter queue. The whole section cannot change on reload (workers
// and messages in flight are never dropped by a reload).
type QueueConfig struct {
	// Name names the queue in the store, the metrics and the DLQ tools.
	// Required, unique.
	Name string `yaml:"name"`
	// Target is the absolute http(s) URL every message is POSTed to (an
	// internal upstream), or the name of one of upstreams:, optionally
	// followed by a path ("partner/v1/sync"): then every delivery goes
	// through that upstream's executor (its rate limit, breaker, pacing,
	// retries), so a burst of messages is smoothed to the third party's
	// quota; a local refusal (open breaker, full bulkhead, no quota
	// slot, a pause) is not an attempt: it is tried again after the
	// policy's Retry-After without counting toward max_attempts
	// (queue.Defer). Required.
	Target string `yaml:"target"`
	// Path, when set, accepts async work: a POST to it stores its body
	// and answers 202 with the message id and a Location to its status
	// (GET Path/{id}). Default none (only webhooks feed the queue).
	Path string `yaml:"path"`
	// Headers of an enqueue request that are kept with the message and
	// sent to Target. Default [Content-Type].
	Headers []string `yaml:"headers"`
	// Idempotency on the Path route: a retried enqueue with the same key
	// answers the same message id. Default none.
	Idempotency *IdempotencyConfig `yaml:"idempotency"`
	// Concurrency is how many deliveries run at once. Default 8.
	Concurrency int `yaml:"concurrency"`
	// MaxPerTarget is how many of those may go to one target at once, so
	// that one slow endpoint cannot take every slot. A queue's messages
	// mostly share its one target (upstream fallbacks add one per path),
	// so the default is Concurrency: the queue library's default of a
	// quarter would quietly cap a one-target queue at two deliveries.
	MaxPerTarget int `yaml:"max_per_target"`
	// MaxAttempts before the message goes to the DLQ. Default 10.
	MaxAttempts int `yaml:"max_attempts"`
	// AttemptTimeout bounds one delivery. Default 30s.
	AttemptTimeout Duration `yaml:"attempt_timeout"`
	// Lease is how long a claimed message stays invisible to other
	// workers: after a crash (kill -9) its messages are delivered again
	// once it ends. It must exceed attempt_timeout. Default
	// attempt_timeout + 30s.
	Lease Duration `yaml:"lease"`
	// BackoffBase and BackoffMax bound the jittered exponential backoff.
	// Defaults 1s and 10m.
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffMax  Duration `yaml:"backoff_max"`
	// MaxRetryAfter caps a target's Retry-After. Default 1h.
	MaxRetryAfter Duration `yaml:"max_retry_after"`
	// DedupeWindow is how long a webhook event id (the message's dedupe
	// id) is remembered by the queue. Default 24h.
	DedupeWindow Duration `yaml:"dedupe_window"`
	// DeliveredRetention is how long the idempotent consumer remembers a
	// delivered message id (so a redelivery after a crash, or a replay of
	// a message that was delivered, is not sent twice). It must exceed the
	// longest time a message spends queued and in the DLQ. Default 168h.
	DeliveredRetention Duration `yaml:"delivered_retention"`
	// ReplayRate is how many dead messages a replay moves back per second.
	// Default 50.
	ReplayRate float64 `yaml:"replay_rate"`

	target       *url.URL
	upstreamRef  string // Target names an upstream
	upstreamPath string // the path after its name, "" or starting with '/'
}

// Defaults implements config.Section.
func (c *QueueConfig) Defaults() {
	if c.Headers == nil {
		c.Headers = []string{"Content-Type"}
	}
	config.Default(&c.Concurrency, queue.DefaultConcurrency)
	config.Default(&c.MaxPerTarget, c.Concurrency)
	config.Default(&c.MaxAttempts, queue.DefaultMaxAttempts)
	config.Default(&c.AttemptTimeout, Duration(queue.DefaultAttemptTimeout))
	config.Default(&c.Lease, c.AttemptTimeout+Duration(30*time.Second))
	config.Default(&c.BackoffBase, Duration(queue.DefaultBackoffBase))
	config.Default(&c.BackoffMax, Duration(queue.DefaultBackoffMax))
	config.Default(&c.MaxRetryAfter, Duration(queue.DefaultMaxRetryAfter))
	config.Default(&c.DedupeWindow, Duration(queue.DefaultDedupeWindow))
	config.Default(&c.DeliveredRetention, Duration(7*24*time.Hour))
	config.Default(&c.ReplayRate, float64(queue.DefaultReplayRate))
}

// Validate implements config.Section.
func (c *QueueConfig) Validate(r *config.Report, p string) {
	if c.Name == "" || len(c.Name) > 100 || strings.ContainsAny(c.Name, "/ ") {
		r.Bad(config.Join(p, "name"), "required: up to 100 characters, no slash or space, got %q", c.Name)
	}
	u, err := url.Parse(c.Target)
	name, rest, _ := strings.Cut(c.Target, "/")
	switch {
	case c.Target != "" && !strings.Contains(c.Target, "://") && upstreamName.MatchString(name):
		c.upstreamRef = name
		if rest != "" {
			c.upstreamPath = "/" + rest
		}
	case c.Target == "":
		r.Bad(config.Join(p, "target"), "required: the URL messages are POSTed to, e.g. http://127.0.0.1:3000/events")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		r.Bad(config.Join(p, "target"), "must be an absolute http or https URL, got %q", c.Target)
	default:
		c.target = u
	}
	if c.Path != "" {
		validMatchPath(r, config.Join(p, "path"), c.Path)
	}
	if c.Concurrency < 1 || c.MaxAttempts < 1 {
		r.Bad(p, "concurrency and max_attempts must be at least 1")
	}
	if c.MaxPerTarget < 1 || c.MaxPerTarget > c.Concurrency {
		r.Bad(config.Join(p, "max_per_target"), "must be between 1 and concurrency (%d), got %d", c.Concurrency, c.MaxPerTarget)
	}
	if c.Lease <= c.AttemptTimeout {
		r.Bad(config.Join(p, "lease"), "must exceed attempt_timeout (%v)", c.AttemptTimeout.D())
	}
	if c.BackoffMax < c.BackoffBase {
		r.Bad(config.Join(p, "backoff_max"), "must be at least backoff_base (%v)", c.BackoffBase.D())
	}
	if c.ReplayRate <= 0 {
		r.Bad(config.Join(p, "replay_rate"), "must be positive, got %v", c.ReplayRate)
	}
	if c.DeliveredRetention.D() < time.Minute {
		r.Bad(config.Join(p, "delivered_retention"), "must be at least 1m, got %v", c.DeliveredRetention.D())
	}
}

// validateQueues checks the rules between queues, webhooks and routes;
// Config.Validate calls it.
func (c *Config) validateQueues(r *config.Report) {
	names := map[string]int{}
	paths := map[string]string{}
	for i := range c.Routes {
		if p := c.Routes[i].Match.Path; p != "" {
			paths[p] = fmt.Sprintf("routes[%d]", i)
		}
	}
	for i := range c.Queues {
		q := &c.Queues[i]
		if j, dup := names[q.Name]; dup {
			r.Bad(fmt.Sprintf("queues[%d].name", i), "duplicate queue name %q (also queues[%d])", q.Name, j)
		}
		names[q.Name] = i
		if c.QueueStore.Type == "sqs" && q.Name != "" {
			c.QueueStore.SQS.validateName(r, fmt.Sprintf("queues[%d].name", i), q.Name)
		}
		if q.Path != "" {
			if other, dup := paths[q.Path]; dup {
				r.Bad(fmt.Sprintf("queues[%d].path", i), "%q is also the path of %s", q.Path, other)
			}
			paths[q.Path] = fmt.Sprintf("queues[%d]", i)
		}
	}
	for i := range c.Queues {
		if n := c.Queues[i].upstreamRef; n != "" && c.upstream(n) == nil {
			byName := map[string]int{}
			for j := range c.Upstreams {
				byName[c.Upstreams[j].Name] = j
			}
			r.Bad(fmt.Sprintf("queues[%d].target", i), "unknown upstream %q (an absolute http(s) URL, or one of upstreams: %s)", n, strings.Join(upstreamNames(byName), ", "))
		}
	}
	routeNames := map[string]bool{}
	for i := range c.Routes {
		routeNames[c.Routes[i].Name] = true
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if _, ok := names[w.Queue]; !ok && w.Queue != "" {
			r.Bad(fmt.Sprintf("webhooks[%d].queue", i), "no queue named %q in queues", w.Queue)
		}
		if routeNames[w.Name] {
			r.Bad(fmt.Sprintf("webhooks[%d].name", i), "%q is also a route name", w.Name)
		}
		routeNames[w.Name] = true
		if other, dup := paths[w.Path]; dup && w.Path != "" {
			r.Bad(fmt.Sprintf("webhooks[%d].path", i), "%q is also the path of %s", w.Path, other)
		}
		paths[w.Path] = fmt.Sprintf("webhooks[%d]", i)
	}
}

// Queues are the gateway's durable queues and their workers. Server
// opens them (OpenQueues) before the gateway and stops them after the
// listeners and before the stores close.
type Queues struct {
	byName  map[string]*gwQueue
	order   []string
	store   idempotency.Store
	client  *http.Client
	log     *slog.Logger
	m       *asyncMetrics
	bk      queue.Backend // nil when no queue is configured
	closeBk func() error
	started bool
	// sinkDedupes: the backend keeps each enqueue's dedupe id for the
	// window the enqueue asks (queue.DedupeUntil: SQLite, PostgreSQL), so
	// a webhook route can dedupe event ids in the enqueue itself.
	sinkDedupes bool
	// legacy is each webhook route's transition from the idempotency
	// store's dedupe (webhooks.go), kept across reloads.
	legacyMu sync.Mutex
	legacy   map[string]*legacyDedupe
	// upstream finds a named upstream's executor and URL in the running
	// config (set by New; nil before: deliveries to named upstreams wait).
	upstream atomic.Pointer[func(name string) (*resilience.Executor, *url.URL, bool)]
}

type gwQueue struct {
	cfg    QueueConfig
	q      *queue.Queue
	w      *queue.Worker
	parent *Queues
}

// asyncMetrics are the queue, webhook and DLQ collectors.
type asyncMetrics struct {
	enqueued, delivered, failed, dead *prometheus.CounterVec
	deferred                          *prometheus.CounterVec
	webhooks                          *prometheus.CounterVec
	dlqOps, dlqMessages               *prometheus.CounterVec
}

func newAsyncMetrics(reg prometheus.Registerer) *asyncMetrics {
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		if reg != nil {
			reg.MustRegister(c)
		}
		return c
	}
	return &asyncMetrics{
		enqueued:    cv("levee_queue_enqueued_total", "Messages stored in a queue (duplicates not counted), by queue and source (enqueue, webhook, fallback: an upstream's queue fallback).", "queue", "source"),
		delivered:   cv("levee_queue_delivered_total", "Messages delivered to their target (2xx), by queue.", "queue"),
		failed:      cv("levee_queue_attempt_failures_total", "Failed delivery attempts, by queue and kind (status code class, network, permanent).", "queue", "kind"),
		deferred:    cv("levee_queue_deferred_total", "Deliveries not attempted because a policy of the target's upstream refused them before sending (circuit_open, bulkhead_full, throttled, paced); retried later without counting an attempt. By queue and kind.", "queue", "kind"),
		dead:        cv("levee_queue_dead_lettered_total", "Messages moved to the dead-letter queue after their last attempt, a permanent failure or a 410, by queue.", "queue"),
		webhooks:    cv("levee_webhook_requests_total", "Webhook requests by route, outcome (accepted, duplicate, rejected, in_flight, failed) and problem type (none when accepted).", "route", "outcome", "type"),
		dlqOps:      cv("levee_dlq_operations_total", "DLQ operations by queue and operation (replay, purge).", "queue", "op"),
		dlqMessages: cv("levee_dlq_operation_messages_total", "Dead messages replayed or purged, by queue and operation.", "queue", "op"),
	}
}

// QueuesOptions are OpenQueues' collaborators.
type QueuesOptions struct {
	// Store backs the idempotent consumer (a message id is delivered
	// once, across processes) and webhook dedupe. Required when any
	// queue is configured.
	Store idempotency.Store
	// Metrics register the queue collectors. Default: none registered.
	Metrics *Metrics
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Transport delivers messages. Default NewTransport().
	Transport http.RoundTripper
}

// OpenQueues opens the queue store and builds every configured queue and
// its worker (not started: Start). With no queue configured it opens
// nothing and returns an empty set. It fails if the store cannot be
// opened or a queue's options are invalid.
func OpenQueues(ctx context.Context, cfg *Config, opts QueuesOptions) (*Queues, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Transport == nil {
		opts.Transport = NewTransport()
	}
	qs := &Queues{byName: map[string]*gwQueue{}, store: opts.Store, log: opts.Logger,
		client:  &http.Client{Transport: opts.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		closeBk: func() error { return nil }}
	var reg prometheus.Registerer
	if opts.Metrics != nil {
		reg = opts.Metrics.Registry
	}
	qs.m = newAsyncMetrics(reg)
	if len(cfg.Queues) == 0 {
		return qs, nil
	}
	if opts.Store == nil {
		return nil, errors.New("gateway: queues need an idempotency store (the idempotent consumer)")
	}
	bk, closeBk, err := openQueueBackend(ctx, cfg.QueueStore)
	if err != nil {
		return nil, err
	}
	qs.sinkDedupes = queue.HonorsDedupeUntil(bk)
	qs.bk, qs.closeBk = bk, closeBk
	if ib, ok := bk.(indexBuilder); ok {
		go logIndexBuild(ib, opts.Logger)
	}
	if d, ok := bk.(depther); ok && reg != nil {
		reg.MustRegister(depthCollector{qs: qs, d: d})
	}
	for i := range cfg.Queues {
		qc := cfg.Queues[i]
		q, err := queue.New(bk, queue.Config{Name: qc.Name, DedupeWindow: qc.DedupeWindow.D(), ReplayRate: rate.Limit(qc.ReplayRate), Logger: opts.Logger})
		if err != nil {
			_ = closeBk()
			return nil, fmt.Errorf("gateway: queues[%d] (%s): %w", i, qc.Name, err)
		}
		gq := &gwQueue{cfg: qc, q: q, parent: qs}
		eng := idempotency.New(opts.Store, idempotency.Options{Lease: qc.Lease.D(), Retention: qc.DeliveredRetention.D()})
		w, err := q.NewWorker(queue.WorkerConfig{
			Handler:        queue.Idempotent(engineDeduper{eng}, queue.HandlerFunc(gq.deliver)),
			Concurrency:    qc.Concurrency,
			MaxPerTarget:   qc.MaxPerTarget,
			MaxAttempts:    qc.MaxAttempts,
			AttemptTimeout: qc.AttemptTimeout.D(),
			Lease:          qc.Lease.D(),
			BackoffBase:    qc.BackoffBase.D(),
			BackoffMax:     qc.BackoffMax.D(),
			MaxRetryAfter:  qc.MaxRetryAfter.D(),
			OnTargetDisabled: func(target string, err error) {
				opts.Logger.Warn("queue target disabled (410 Gone): its messages wait until it is enabled again", "queue", qc.Name, "target", target, "error", err)
			},
			Logger: opts.Logger,
		})
		if err != nil {
			_ = closeBk()
			return nil, fmt.Errorf("gateway: queues[%d] (%s): %w", i, qc.Name, err)
		}
		gq.w = w
		qs.byName[qc.Name] = gq
		qs.order = append(qs.order, qc.Name)
	}
	return qs, nil
}

// indexBuilder is a queue backend whose Migrate may leave index builds to
// the background (store/postgres/pgqueue, on an upgrade).
type indexBuilder interface {
	WaitIndexes(ctx context.Context) error
}

// logIndexBuild logs how the queue store's background index build ended:
// at WARN when it failed (the next start builds again), not at all when
// there was none or the gateway stopped it.
func logIndexBuild(ib indexBuilder, log *slog.Logger) {
	err := ib.WaitIndexes(context.Background())
	switch {
	case err == nil, errors.Is(err, context.Canceled):
	default:
		log.Warn("queue store: building an index the upgrade added failed; the next start builds it again", "error", err.Error())
	}
}

func openQueueBackend(ctx context.Context, c QueueStoreConfig) (queue.Backend, func() error, error) {
	switch c.Type {
	case "sqs":
		return openSQSBackend(ctx, c.SQS)
	case "nats":
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		nc, err := nats.Connect(c.NATS.URL, nats.Timeout(5*time.Second), nats.Name("levee"))
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: queue store nats %s: %w", config.RedactDSN(c.NATS.URL), err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("gateway: queue store nats: %w", err)
		}
		bk, err := natsqueue.New(ctx, js, natsqueue.Options{Prefix: c.NATS.Prefix, AckWait: c.NATS.AckWait.D()})
		if err != nil {
			nc.Close()
			return nil, nil, fmt.Errorf("gateway: queue store nats: %w", err)
		}
		return bk, func() error { err := bk.Close(); nc.Drain(); return err }, nil
	case "postgres":
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		pool, err := newPGPool(ctx, c.Postgres.URL) // sized as the store's: 4 flushers, each queue's claims and a background index build share it
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: queue store postgres: %w", err)
		}
		bk, err := pgqueue.New(pool, pgqueue.Options{Schema: c.Postgres.Schema})
		if err == nil {
			err = bk.Migrate(ctx)
		}
		if err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("gateway: queue store postgres: %w", err)
		}
		return bk, func() error { err := bk.Close(); pool.Close(); return err }, nil
	default:
		path := c.SQLite.Path
		if c.storePath != "" {
			legacy, err := legacyQueueFile(c.storePath, path)
			if err != nil {
				return nil, nil, fmt.Errorf("gateway: queue store sqlite: choosing the queue file: %w", err)
			}
			if legacy {
				path = c.storePath
			}
		}
		bk, err := sqlitequeue.Open(path, sqlitequeue.Options{})
		if err != nil {
			return nil, nil, fmt.Errorf("gateway: queue store sqlite %s: %w", path, err)
		}
		return bk, bk.Close, nil
	}
}

// Start starts every queue's worker. ctx bounds nothing after Start
// returns: Stop stops the workers.
func (qs *Queues) Start(ctx context.Context) error {
	for _, name := range qs.order {
		if err := qs.byName[name].w.Start(ctx); err != nil {
			return fmt.Errorf("gateway: queue %s: %w", name, err)
		}
	}
	qs.started = true
	return nil
}

// Stop stops the workers (in-flight deliveries are cancelled and released
// without counting the attempt) and closes the queue store. Call it
// before closing the idempotency store.
func (qs *Queues) Stop() error {
	for _, name := range qs.order {
		qs.byName[name].w.Stop()
	}
	return qs.closeBk()
}

// Queue returns the queue named name, or nil.
func (qs *Queues) Queue(name string) *queue.Queue {
	if qs == nil {
		return nil
	}
	if gq := qs.byName[name]; gq != nil {
		return gq.q
	}
	return nil
}

// Names lists the queues in config order.
func (qs *Queues) Names() []string {
	if qs == nil {
		return nil
	}
	return qs.order
}

// deliver POSTs one message to its target (or sends it with the method
// an upstream's queue fallback kept, queueMethodHeader). A 2xx acknowledges it; 410
// disables the target; 408, 425, 429 and 5xx are retried (honouring
// Retry-After); any other status is a permanent failure (a 400 will not
// turn into a 200 by retrying); a network error is retried.
func (gq *gwQueue) deliver(ctx context.Context, d *queue.Delivery) error {
	name := gq.cfg.Name
	m := gq.parent.m
	client, target, err := gq.client(d.Target)
	if err != nil {
		m.failed.WithLabelValues(name, "network").Inc()
		gq.maybeDead(d)
		return err
	}
	method := http.MethodPost
	if m := d.Headers.Get(queueMethodHeader); m != "" {
		method = m // a write an upstream's queue fallback accepted
	}
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(d.Payload))
	if err != nil {
		m.failed.WithLabelValues(name, "permanent").Inc()
		gq.countDead()
		return queue.Permanent(fmt.Errorf("gateway: queue %s: target %q: %w", name, d.Target, err))
	}
	for k, vs := range d.Headers {
		if k != queueMethodHeader {
			req.Header[k] = vs
		}
	}
	req.Header.Set("X-Levee-Message-Id", d.ID)
	req.Header.Set("X-Levee-Attempt", fmt.Sprint(d.Attempt))
	resp, err := client.Do(req)
	if errors.Is(err, resilience.ErrRejected) {
		// One of the upstream's policies refused before anything was
		// sent (open breaker, full bulkhead, adaptive throttling, no
		// quota slot or a pause beyond the wait bound): not an attempt.
		// Tried again after the policy's delay (the breaker's cooldown,
		// the quota's wait), or backoff_base when it names none.
		ra, ok := resilience.RetryAfter(err, time.Now())
		if !ok || ra <= 0 {
			ra = gq.cfg.BackoffBase.D()
		}
		m.deferred.WithLabelValues(name, refusalKind(err)).Inc()
		return queue.Defer(ra, fmt.Errorf("gateway: queue %s: not sent: %w", name, err))
	}
	if ra, ok := resilience.RetryAfter(err, time.Now()); ok {
		// The upstream answered with a Retry-After above the cap: an
		// attempt, retryable after that delay (capped by
		// max_retry_after).
		m.failed.WithLabelValues(name, "refused").Inc()
		gq.maybeDead(d)
		return queue.RetryAfter(max(ra, time.Millisecond), fmt.Errorf("gateway: queue %s: deliver: %w", name, err))
	}
	if err != nil {
		m.failed.WithLabelValues(name, "network").Inc()
		gq.maybeDead(d)
		return fmt.Errorf("gateway: queue %s: deliver: %w", name, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, queue.MaxBodyBytes))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		m.delivered.WithLabelValues(name).Inc()
		return nil
	}
	he := &queue.HTTPError{Status: resp.StatusCode, Body: body}
	if ra, ok := resilience.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		he.RetryAfter = ra
	}
	m.failed.WithLabelValues(name, fmt.Sprintf("%dxx", resp.StatusCode/100)).Inc()
	switch s := resp.StatusCode; {
	case s == http.StatusGone:
		gq.countDead()
		return he
	case s == http.StatusRequestTimeout || s == http.StatusTooEarly || s == http.StatusTooManyRequests || s >= 500:
		gq.maybeDead(d)
		return he
	default:
		gq.countDead()
		return queue.Permanent(he)
	}
}

// refusalKind names the policy that refused a delivery locally.
func refusalKind(err error) string {
	switch {
	case errors.Is(err, resilience.ErrBreakerOpen):
		return "circuit_open" // as levee_upstream_errors_total names it
	case errors.Is(err, resilience.ErrBulkheadFull):
		return "bulkhead_full"
	case errors.Is(err, resilience.ErrThrottled):
		return "throttled"
	case errors.Is(err, resilience.ErrPaced):
		return "paced"
	}
	return "other"
}

// client returns the client and URL a delivery to target uses: the
// queue's plain client for a URL; for a named upstream ("name/path"),
// one sending through that upstream's executor (resilience.Transport)
// in the running config. An upstream not (yet) known is a retryable
// error.
func (gq *gwQueue) client(target string) (*http.Client, string, error) {
	if gq.cfg.upstreamRef == "" || strings.Contains(target, "://") {
		return gq.parent.client, target, nil
	}
	name, rest, _ := strings.Cut(target, "/")
	var (
		exec    *resilience.Executor
		base    *url.URL
		dedupes bool
	)
	if f := gq.parent.upstream.Load(); f != nil {
		exec, base, dedupes = (*f)(name)
	}
	if exec == nil || base == nil {
		return nil, "", fmt.Errorf("gateway: queue %s: upstream %q is not running", gq.cfg.Name, name)
	}
	u := *base
	rest, query, _ := strings.Cut(rest, "?")
	if rest != "" {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + rest
		u.RawPath = ""
	}
	if query != "" {
		u.RawQuery = query
	}
	c := *gq.parent.client
	// As on the routes' ReverseProxy path (upstream_proxy.go): unless the
	// upstream deduplicates by the key, the executor does not see the
	// message's key (which would make a sent POST retryable), and each
	// attempt puts it back on the wire.
	kh := http.CanonicalHeaderKey(exec.KeyHeader())
	c.Transport = hideKey{rt: &resilience.Transport{Base: attemptTransport{base: gq.parent.client.Transport, keyHeader: kh}, Executor: exec},
		keyHeader: kh, pass: dedupes}
	return &c, u.String(), nil
}

func (gq *gwQueue) maybeDead(d *queue.Delivery) {
	if d.Attempt >= gq.cfg.MaxAttempts {
		gq.countDead()
	}
}

func (gq *gwQueue) countDead() { gq.parent.m.dead.WithLabelValues(gq.cfg.Name).Inc() }

// engineDeduper is queue.Deduper over the idempotency engine
// (docs/queue.md, "Wiring it to the idempotency engine").
type engineDeduper struct{ e *idempotency.Engine }

func deliveredKey(key string) string { return "levee:queue:" + key }

func (d engineDeduper) Begin(ctx context.Context, key string) (queue.Finish, error) {
	lease, rec, err := d.e.Begin(ctx, deliveredKey(key), idempotency.FingerprintOf(nil))
	switch {
	case errors.Is(err, idempotency.ErrInFlight):
		return nil, queue.ErrInProgress
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		return nil, queue.ErrOutcomeUnknown
	case err != nil:
		return nil, err
	case rec != nil:
		return nil, queue.ErrProcessed
	}
	return func(ctx context.Context, herr error) error {
		if herr != nil {
			return lease.Release(ctx)
		}
		return lease.Complete(ctx, idempotency.Response{Status: http.StatusOK})
	}, nil
}

// enqueueHandler serves a queue's path: POST enqueues (202 + id +
// Location), GET path/{id} reports a message's status.
func (gq *gwQueue) enqueueHandler(idem func(http.Handler) http.Handler) http.Handler {
	var post http.Handler = http.HandlerFunc(gq.serveEnqueue)
	if idem != nil {
		post = idem(post)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == gq.cfg.Path && r.Method == http.MethodPost:
			post.ServeHTTP(w, r)
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, gq.cfg.Path+"/"):
			gq.serveStatus(w, r, strings.TrimPrefix(r.URL.Path, gq.cfg.Path+"/"))
		default:
			w.Header().Set("Allow", "POST")
			problem.Write(w, problem.Problem{Type: problem.RouteNotFound, Status: http.StatusNotFound,
				Title: "No route matches this request", Detail: fmt.Sprintf("POST %s enqueues; GET %s/{id} reports a message", gq.cfg.Path, gq.cfg.Path)})
		}
	})
}

func (gq *gwQueue) serveEnqueue(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			problem.Write(w, problem.Problem{Type: problem.RequestBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
				Title: "Request body too large", Detail: fmt.Sprintf("the limit is %d bytes", mbe.Limit)})
			return
		}
		problem.Write(w, problem.Problem{Type: problem.RequestCanceled, Status: http.StatusBadRequest,
			Title: "Request body could not be read", Detail: "the request body could not be read"})
		return
	}
	id, err := gq.enqueue(r.Context(), r.Header, body, gq.cfg.Target, "", "enqueue")
	if err != nil {
		w.Header().Set("Retry-After", "1")
		problem.Write(w, problem.Problem{Type: problem.UpstreamUnavailable, Status: http.StatusServiceUnavailable,
			Title: "Queue unavailable", Detail: "the message was not stored; retry later"})
		return
	}
	b := gq.accepted(w.Header(), id)
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(b)
}

// queueMethodHeader carries, in a stored message, the method it is
// delivered with when not POST (an upstream's queue fallback keeps the
// request's own); it is not sent.
const queueMethodHeader = "Levee-Queue-Method"

// enqueue stores one message for target: body, the queue's headers of
// in (and any of extra), X-Request-Id, and the delivery method when not
// POST. source labels levee_queue_enqueued_total. A failure is logged
// and returned; nothing was stored.
func (gq *gwQueue) enqueue(ctx context.Context, in http.Header, body []byte, target, method, source string, extra ...string) (string, error) {
	h := http.Header{}
	for _, names := range [2][]string{gq.cfg.Headers, extra} {
		for _, k := range names {
			if vs := in.Values(k); len(vs) > 0 {
				h[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
			}
		}
	}
	if id := in.Get("X-Request-Id"); id != "" {
		h.Set("X-Request-Id", id)
	}
	if method != "" && method != http.MethodPost {
		h.Set(queueMethodHeader, method)
	}
	msg := &queue.Message{Target: target, Payload: body, Headers: h}
	res, err := gq.q.Enqueue(ctx, msg)
	if err != nil {
		gq.parent.log.LogAttrs(ctx, slog.LevelError, "enqueue failed", slog.String("queue", gq.cfg.Name), slog.String("source", source), slog.String("error", err.Error()))
		return "", err
	}
	if !res[0].Duplicate {
		gq.parent.m.enqueued.WithLabelValues(gq.cfg.Name, source).Inc()
	}
	return res[0].ID, nil
}

// accepted sets in h the headers of a 202 answering the enqueue of
// message id (Location to its status when the queue has a path) and
// returns its JSON body.
func (gq *gwQueue) accepted(h http.Header, id string) []byte {
	if gq.cfg.Path != "" {
		h.Set("Location", gq.cfg.Path+"/"+id)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	b, _ := json.Marshal(map[string]string{"id": id, "queue": gq.cfg.Name, "status": "queued"})
	return append(b, '\n')
}

// MessageStatus is what GET <queue path>/{id} answers.
type MessageStatus struct {
	ID    string `json:"id"`
	Queue string `json:"queue"`
	// Status is delivered, delivering, dead (in the DLQ), unknown (the
	// delivery's outcome was lost) or pending (queued, in backoff, or an
	// id levee does not know: the queue does not index live messages).
	Status   string    `json:"status"`
	Reason   string    `json:"reason,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
	DeadAt   time.Time `json:"dead_at,omitzero"`
}

func (gq *gwQueue) serveStatus(w http.ResponseWriter, r *http.Request, id string) {
	st := MessageStatus{ID: id, Queue: gq.cfg.Name, Status: "pending"}
	if dm, err := gq.q.Get(r.Context(), id); err == nil {
		st.Status, st.Reason, st.Attempts, st.DeadAt = "dead", string(dm.Reason), dm.Attempts, dm.DeadAt
	} else if rec, err := gq.parent.store.Lookup(r.Context(), deliveredKey(gq.cfg.Name+"/"+id), time.Now()); err == nil {
		switch rec.State {
		case idempotency.StateCompleted:
			st.Status = "delivered"
		case idempotency.StateInProgress:
			st.Status = "delivering"
		default:
			st.Status = "unknown"
		}
	}
	writeStatusJSON(w, http.StatusOK, st)
}

func writeStatusJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// depther is implemented by the queue backends that can count (both of
// levee's).
type depther interface {
	Depth(ctx context.Context, queue string) (queued, dead int64, err error)
}

var depthDesc = prometheus.NewDesc("levee_queue_depth",
	"Messages in a queue now, by queue and state (queued: ready, in backoff or being delivered; dead: in the DLQ). Counted at scrape time; absent when the count fails.",
	[]string{"queue", "state"}, nil)

// depthCollector counts each queue's messages at scrape time, bounded by
// 2s; a queue whose count fails is left out of that scrape.
type depthCollector struct {
	qs *Queues
	d  depther
}

func (c depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- depthDesc }

func (c depthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, name := range c.qs.order {
		queued, dead, err := c.d.Depth(ctx, name)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(queued), name, "queued")
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(dead), name, "dead")
	}
}

// queueFileBeside is the default queue file for the idempotency store's
// file: "-queue" before the extension.
func queueFileBeside(storePath string) string {
	ext := filepath.Ext(storePath)
	return strings.TrimSuffix(storePath, ext) + "-queue" + ext
}

// legacyQueueFile reports whether the queues should stay in storePath: the
// default queue file does not exist yet and storePath already has levee's
// queue tables. A file it cannot examine is an error, never a "no": a
// wrong "no" would open an empty queue file beside the store and leave the
// messages accepted into the store file undelivered for good.
func legacyQueueFile(storePath, queuePath string) (bool, error) {
	if _, err := os.Stat(queuePath); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if _, err := os.Stat(storePath); errors.Is(err, fs.ErrNotExist) {
		return false, nil // a first start: neither file exists
	} else if err != nil {
		return false, err
	}
	ok, err := sqlitequeue.HasQueueTables(storePath)
	if err != nil {
		return false, fmt.Errorf("%s: %w", storePath, err)
	}
	return ok, nil
}
