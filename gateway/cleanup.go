package gateway

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Expired records are reclaimed in the background. Retention is decided on
// every read (an expired idempotency record is claimable again, an ended
// dedupe window no longer dedupes), so nothing waits for this clean-up; it
// only keeps the SQLite file and the PostgreSQL tables from growing with
// every request ever served. Redis and DynamoDB expire records themselves
// (TTL) and the memory store evicts; they have nothing to clean.
//
// Every store.cleanup_interval (default 1m; the first pass at a random
// point of the first interval, so replicas started together do not sweep
// together), each store deletes its expired rows in chunks of cleanupChunk,
// one statement per chunk through its expires_at index, pausing between
// chunks so that the writes of requests interleave with them, until a
// chunk comes back short or the pass has deleted cleanupPassMax rows (the
// rest waits for the next pass). Every replica sweeps; two replicas
// deleting the same rows delete each once. A failure is logged at WARN and
// counted, and the pass moves on to the next store.

const (
	cleanupChunk   = 1000
	cleanupPassMax = 1_000_000
	cleanupPause   = 20 * time.Millisecond
	cleanupTimeout = 30 * time.Second
)

// DefaultCleanupInterval is store.cleanup_interval's default.
const DefaultCleanupInterval = time.Minute

// idempotencyExpirer is an idempotency store that deletes its expired
// records (store/sqlite, store/postgres).
type idempotencyExpirer interface {
	DeleteExpired(ctx context.Context, now time.Time, limit int) (int64, error)
}

// queueExpirer is a queue backend that deletes its ended dedupe windows
// (store/sqlite/sqlitequeue, store/postgres/pgqueue).
type queueExpirer interface {
	DeleteExpired(ctx context.Context, now time.Time, limit int) (int, error)
}

// cleanupTarget is one store the clean-up sweeps.
type cleanupTarget struct {
	name string // the store label: idempotency or queue
	del  func(ctx context.Context, now time.Time, limit int) (int64, error)
}

// cleanupTargets lists what st and bk can clean (either may be nil).
func cleanupTargets(st, bk any) []cleanupTarget {
	var ts []cleanupTarget
	if e, ok := st.(idempotencyExpirer); ok {
		ts = append(ts, cleanupTarget{"idempotency", e.DeleteExpired})
	}
	if e, ok := bk.(queueExpirer); ok {
		ts = append(ts, cleanupTarget{"queue", func(ctx context.Context, now time.Time, limit int) (int64, error) {
			n, err := e.DeleteExpired(ctx, now, limit)
			return int64(n), err
		}})
	}
	return ts
}

// cleanupMetrics are the clean-up's counters.
type cleanupMetrics struct {
	deleted, failures *prometheus.CounterVec
}

func newCleanupMetrics(reg prometheus.Registerer) cleanupMetrics {
	m := cleanupMetrics{
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_store_expired_deleted_total",
			Help: "Expired rows the background clean-up deleted, by store (idempotency: records past their retention; queue: ended dedupe windows).",
		}, []string{"store"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levee_store_cleanup_failures_total",
			Help: "Clean-up statements that failed (the pass moves on; the rows wait for the next pass), by store.",
		}, []string{"store"}),
	}
	if reg != nil {
		reg.MustRegister(m.deleted, m.failures)
	}
	return m
}

// cleanup runs the passes until Stop.
type cleanup struct {
	targets  []cleanupTarget
	interval time.Duration
	m        cleanupMetrics
	log      *slog.Logger
	ctx      context.Context // canceled by Stop: the waits and a statement in flight end
	cancel   context.CancelFunc
	done     chan struct{}
}

// startCleanup starts the passes over targets every interval. It returns
// nil (nothing runs) when there is nothing to clean or interval is 0.
func startCleanup(targets []cleanupTarget, interval time.Duration, m cleanupMetrics, log *slog.Logger) *cleanup {
	if len(targets) == 0 || interval <= 0 {
		return nil
	}
	for _, t := range targets {
		m.deleted.WithLabelValues(t.name)
		m.failures.WithLabelValues(t.name)
	}
	c := &cleanup{targets: targets, interval: interval, m: m, log: log, done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.loop()
	return c
}

func (c *cleanup) loop() {
	defer close(c.done)
	wait := time.Duration(rand.Int64N(int64(c.interval))) + time.Millisecond
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(wait):
		}
		c.pass()
		wait = c.interval
	}
}

// pass sweeps each target once.
func (c *cleanup) pass() {
	for _, t := range c.targets {
		if c.ctx.Err() != nil {
			return
		}
		var total int64
		for total < cleanupPassMax {
			ctx, cancel := context.WithTimeout(c.ctx, cleanupTimeout)
			n, err := t.del(ctx, time.Now(), cleanupChunk)
			cancel()
			if n > 0 {
				total += n
				c.m.deleted.WithLabelValues(t.name).Add(float64(n))
			}
			if err != nil {
				if c.ctx.Err() != nil {
					return // stopped: not a failure
				}
				c.m.failures.WithLabelValues(t.name).Inc()
				c.log.Warn("store clean-up failed; the expired rows wait for the next pass", "store", t.name, "deleted", total, "error", err)
				break
			}
			if n < cleanupChunk {
				break
			}
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(cleanupPause):
			}
		}
		if total > 0 {
			c.log.Debug("store clean-up", "store", t.name, "deleted", total)
		}
	}
}

// Stop ends the passes, canceling a statement in flight, and waits for
// the goroutine. Safe on nil; call it once.
func (c *cleanup) Stop() {
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
}
