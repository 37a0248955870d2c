package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of Config.
const (
	DefaultQueueName    = "default"
	DefaultDedupeWindow = 24 * time.Hour
	DefaultReplayRate   = rate.Limit(50)
)

// Config configures a Queue. The zero value selects the defaults.
type Config struct {
	// Name is the queue's name. Default DefaultQueueName. At most 255 bytes.
	Name string
	// DedupeWindow is how long a message's DedupeID keeps equal DedupeIDs
	// out. Default DefaultDedupeWindow (24h); negative is invalid.
	DedupeWindow time.Duration
	// ReplayRate is how many dead messages per second Replay moves back.
	// Default DefaultReplayRate (50/s); negative is invalid.
	ReplayRate rate.Limit
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger receives one Info record per Replay and Purge (queue, filter,
	// count), for the operators' audit trail. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = DefaultQueueName
	}
	if len(c.Name) > 255 {
		return c, errors.New("queue: Config.Name is longer than 255 bytes")
	}
	if c.DedupeWindow < 0 {
		return c, fmt.Errorf("queue: Config.DedupeWindow %v is negative", c.DedupeWindow)
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = DefaultDedupeWindow
	}
	if c.ReplayRate < 0 {
		return c, fmt.Errorf("queue: Config.ReplayRate %v is negative", c.ReplayRate)
	}
	if c.ReplayRate == 0 {
		c.ReplayRate = DefaultReplayRate
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Queue is one named queue over a Backend: it enqueues, operates the
// dead-letter queue and makes Workers. It is safe for concurrent use.
// Several Queues (in several processes) may share one backend and name;
// all state is in the backend, except the one-replay-at-a-time guard and
// the wake-up of local workers, which are per Queue value.
type Queue struct {
	b   Backend
	cfg Config

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every local enqueue
	gen     uint64        // notifications so far
	// recent is a ring of the last maxNotices notifications (notification
	// g at g % maxNotices): the targets of an enqueue, or nil for anything
	// else (a replay, a target enabled again).
	recent    [maxNotices][]string
	replaying bool
}

// maxNotices bounds the notifications a Queue remembers for workers asking
// what woke them (wokenFor); asking about an older one answers "anything".
const maxNotices = 256

// New returns a Queue on b, or an error naming the invalid Config field.
func New(b Backend, cfg Config) (*Queue, error) {
	if b == nil {
		return nil, errors.New("queue: nil Backend")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Queue{b: b, cfg: cfg, changed: make(chan struct{})}, nil
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.cfg.Name }

// NewID returns a new message id: 32 hex digits, the first 12 the
// current Unix time in milliseconds and the other 20 random (80 bits, from
// crypto/rand), the layout of a UUIDv7 without its version bits. Ids made
// later sort after, so that the backends' unique index on the id takes a
// new message next to the last one (and an ack removes one among the
// oldest), where a fully random id put each on a random page of the index
// (a page write per enqueue and per ack, on SQLite one more WAL frame
// each).
func NewID() string {
	var b [16]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Enqueue stores the messages durably and returns when the backend has
// committed them (for SQLite, fsynced), one result per message in order.
// It fills in ID (when empty), Queue and EnqueuedAt on the messages given.
// On error none, some or all of the messages may have been stored (as with
// any commit whose answer is lost); enqueueing them again with the same
// DedupeID is safe. A message with an ID over 255 bytes fails the call
// before anything is stored.
func (q *Queue) Enqueue(ctx context.Context, msgs ...*Message) ([]EnqueueResult, error) {
	return q.EnqueueDedupe(ctx, q.cfg.DedupeWindow, msgs...)
}

// EnqueueDedupe is Enqueue with these messages' DedupeIDs remembered for
// window instead of Config.DedupeWindow (a webhook route dedupes event ids
// for its own retention). Backends that keep dedupe ids for a window of
// their own (JetStream's stream setting) or none (SQS) ignore it.
func (q *Queue) EnqueueDedupe(ctx context.Context, window time.Duration, msgs ...*Message) ([]EnqueueResult, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	now := q.cfg.Now()
	for i, m := range msgs {
		if m == nil {
			return nil, fmt.Errorf("queue: enqueue: message %d is nil", i)
		}
		if m.ID == "" {
			m.ID = NewID()
		}
		if len(m.ID) > 255 || len(m.DedupeID) > 255 {
			return nil, fmt.Errorf("queue: enqueue: message %d: ID or DedupeID longer than 255 bytes", i)
		}
		m.Queue = q.cfg.Name
		m.EnqueuedAt = now
	}
	res, err := q.b.Enqueue(ctx, EnqueueRequest{Messages: msgs, Now: now, DedupeUntil: now.Add(window)})
	if err != nil {
		return nil, fmt.Errorf("queue: enqueue: %w", err)
	}
	targets := make([]string, 0, 1)
	for _, m := range msgs {
		if !slices.Contains(targets, m.Target) {
			targets = append(targets, m.Target)
		}
	}
	q.notifyTargets(targets)
	return res, nil
}

// notify wakes the local workers for anything but an enqueue.
func (q *Queue) notify() { q.notifyTargets(nil) }

// notifyTargets wakes the local workers; targets are the enqueued
// messages' (nil: not an enqueue).
func (q *Queue) notifyTargets(targets []string) {
	q.mu.Lock()
	q.gen++
	q.recent[q.gen%maxNotices] = targets
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}

// wake returns a channel closed at the next local enqueue or replay, and
// the notifications so far (for wokenFor).
func (q *Queue) wake() (<-chan struct{}, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.changed, q.gen
}

// rewake is for a worker woken after gen: when wokenFor(gen, skip) is
// false it returns false, a new wake channel and the generation it
// follows, atomically (no notification falls between the check and the
// new channel); otherwise true.
func (q *Queue) rewake(gen uint64, skip map[string]bool) (bool, <-chan struct{}, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.wokenForLocked(gen, skip) {
		return true, nil, 0
	}
	return false, q.changed, q.gen
}

// wokenForLocked reports whether a notification after gen could concern
// a target outside skip: false only when every one since was an enqueue
// for targets in skip (a worker that found nothing to claim but those
// targets' messages, all at their share, then has no reason to claim
// again). q.mu is held.
func (q *Queue) wokenForLocked(gen uint64, skip map[string]bool) bool {
	if q.gen-gen > maxNotices {
		return true // forgotten
	}
	for g := gen + 1; g <= q.gen; g++ {
		targets := q.recent[g%maxNotices]
		if targets == nil {
			return true
		}
		for _, t := range targets {
			if !skip[t] {
				return true
			}
		}
	}
	return false
}

// DeadPage is one page of a DLQ listing.
type DeadPage struct {
	Messages []DeadMessage
	// Next is the cursor for the next page (DeadFilter.AfterSeq), 0 when
	// this page is the last.
	Next int64
}

// List returns the dead messages matching f (its Queue is replaced by this
// queue's name), oldest first, f.Limit per page (default 100). A backend
// error is returned wrapped.
func (q *Queue) List(ctx context.Context, f DeadFilter) (DeadPage, error) {
	f.Queue = q.cfg.Name
	if f.Limit <= 0 {
		f.Limit = 100
	}
	limit := f.Limit
	f.Limit++ // one more to know whether a next page exists
	ms, err := q.b.ListDead(ctx, f)
	if err != nil {
		return DeadPage{}, fmt.Errorf("queue: list dead: %w", err)
	}
	p := DeadPage{Messages: ms}
	if len(ms) > limit {
		p.Messages = ms[:limit]
		p.Next = ms[limit-1].Seq
	}
	return p, nil
}

// Get returns one dead message with its attempt history, ErrNotFound
// (wrapped) when it is not in the DLQ, or a wrapped backend error.
func (q *Queue) Get(ctx context.Context, id string) (*DeadMessage, error) {
	m, err := q.b.GetDead(ctx, q.cfg.Name, id)
	if err != nil {
		return nil, fmt.Errorf("queue: get dead %q: %w", id, err)
	}
	return m, nil
}

// Replay moves the dead messages matching f (one: IDs; a filter; or all:
// the zero filter, f.Queue is ignored) back to the queue, oldest first, at
// most Config.ReplayRate per second, with their attempts reset and their
// message ids kept (so an idempotent consumer still dedupes them). It
// returns how many it moved. Only one Replay per Queue runs at a time; a
// second gets ErrReplayRunning. When ctx ends the replay stops and returns
// the count so far with ctx's error; a backend error stops it likewise.
// A message that fails again while the replay runs is not replayed twice
// by it.
func (q *Queue) Replay(ctx context.Context, f DeadFilter) (int, error) {
	q.mu.Lock()
	if q.replaying {
		q.mu.Unlock()
		return 0, ErrReplayRunning
	}
	q.replaying = true
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		q.replaying = false
		q.mu.Unlock()
	}()

	f.Queue = q.cfg.Name
	done := 0
	defer func() {
		q.cfg.Logger.Info("queue: replay", "queue", q.cfg.Name, "filter", f, "replayed", done)
	}()
	max := f.Limit
	replayed := map[string]bool{}
	lim := rate.NewLimiter(q.cfg.ReplayRate, max1(int(q.cfg.ReplayRate)))
	for max <= 0 || done < max {
		page := f
		page.Limit = 100
		if max > 0 {
			page.Limit = min(page.Limit, max-done)
		}
		ms, err := q.b.ListDead(ctx, page)
		if err != nil {
			return done, fmt.Errorf("queue: replay: %w", err)
		}
		if len(ms) == 0 {
			return done, nil
		}
		for _, m := range ms {
			if replayed[m.ID] {
				// It failed again since this replay moved it: everything
				// from here on died during the replay.
				return done, nil
			}
			if err := lim.Wait(ctx); err != nil {
				return done, fmt.Errorf("queue: replay: %w", err)
			}
			n, err := q.b.Requeue(ctx, q.cfg.Name, []string{m.ID}, q.cfg.Now())
			if err != nil {
				return done, fmt.Errorf("queue: replay %q: %w", m.ID, err)
			}
			done += n
			replayed[m.ID] = true
			f.AfterSeq = m.Seq
			q.notify()
		}
	}
	return done, nil
}

func max1(n int) int { return max(n, 1) }

// Purge deletes the dead messages matching f (f.Queue is ignored; the zero
// filter purges the whole DLQ of this queue) and returns how many. A
// backend error is returned wrapped, and nothing was deleted.
func (q *Queue) Purge(ctx context.Context, f DeadFilter) (int, error) {
	f.Queue = q.cfg.Name
	n, err := q.b.DeleteDead(ctx, f)
	if err != nil {
		return 0, fmt.Errorf("queue: purge: %w", err)
	}
	q.cfg.Logger.Info("queue: purge", "queue", q.cfg.Name, "filter", f, "purged", n)
	return n, nil
}

// DisableTarget stops deliveries to target (its messages wait, nothing is
// dropped) and records reason. A backend error is returned wrapped.
func (q *Queue) DisableTarget(ctx context.Context, target, reason string) error {
	err := q.b.SetTarget(ctx, TargetState{Queue: q.cfg.Name, Target: target, Disabled: true, Reason: reason, Since: q.cfg.Now()})
	if err != nil {
		return fmt.Errorf("queue: disable target %q: %w", target, err)
	}
	return nil
}

// EnableTarget resumes deliveries to target. A backend error is returned
// wrapped.
func (q *Queue) EnableTarget(ctx context.Context, target string) error {
	err := q.b.SetTarget(ctx, TargetState{Queue: q.cfg.Name, Target: target, Since: q.cfg.Now()})
	if err != nil {
		return fmt.Errorf("queue: enable target %q: %w", target, err)
	}
	q.notify()
	return nil
}

// Targets reports the targets whose state was ever set (disabled ones, and
// ones enabled again). A backend error is returned wrapped.
func (q *Queue) Targets(ctx context.Context) ([]TargetState, error) {
	ts, err := q.b.Targets(ctx, q.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("queue: targets: %w", err)
	}
	return ts, nil
}

// Backend returns the backend the queue runs on.
func (q *Queue) Backend() Backend { return q.b }
