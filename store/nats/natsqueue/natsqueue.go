// Package natsqueue is a queue.Backend on NATS JetStream.
//
// Messages live in one work-queue stream per Backend (subject
// <Prefix>.m.<queue>), read by one durable pull consumer per queue; the
// consumer's AckWait is the visibility lease, NakWithDelay is the backoff
// (and Retry-After), the stream's duplicate window with a Nats-Msg-Id per
// message is the dedupe window. JetStream has no dead-letter queue, so
// levee keeps its own: a second stream (<Prefix>_DLQ) whose entries hold
// the payload, headers, target and every attempt's error. Three KV buckets
// hold what JetStream does not: the attempt history of messages being
// retried, the target states, and which message id a DedupeID first
// belonged to.
//
// JetStream runs leases, delays and windows on the server's clock: the
// times a queue.Backend call passes in are not honoured (see
// docs/queue.md, "NATS JetStream"), and the backend declares
// queuetest.Features.ServerClock.
package natsqueue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leveehq/levee/queue"
)

// Defaults of Options.
const (
	DefaultPrefix       = "LEVEE"
	DefaultAckWait      = 30 * time.Second
	DefaultDedupeWindow = queue.DefaultDedupeWindow
	// DefaultHandBackDelay is how long a message claimed for a target that
	// is disabled, excluded or over its share waits before it is offered
	// again.
	DefaultHandBackDelay = 250 * time.Millisecond
)

// Options configures a Backend. The zero value selects the defaults.
type Options struct {
	// Prefix names the streams (<Prefix>_Q, <Prefix>_DLQ), the KV buckets
	// (<Prefix>_STATE, <Prefix>_TARGETS, <Prefix>_DEDUPE) and the subjects
	// (<Prefix>.m.…, <Prefix>.dlq.…). Letters, digits, '-' and '_'.
	// Default DefaultPrefix.
	Prefix string
	// AckWait is the consumer's AckWait: how long the server waits for a
	// claimed message's outcome, after the last sign of life, before it
	// redelivers it. A claim asking for a longer lease (the worker's Lease)
	// is kept alive by "in progress" acks every AckWait/3 until its lease
	// ends, so AckWait is how soon a crashed process's messages come back.
	// Default DefaultAckWait (30s).
	AckWait time.Duration
	// DedupeWindow is the stream's duplicate window (Nats-Msg-Id); it
	// replaces queue.Config.DedupeWindow, which should be set equal.
	// Default DefaultDedupeWindow (24h).
	DedupeWindow time.Duration
	// MaxDeliver, when positive, is the consumer's MaxDeliver: a backstop
	// after which the server stops delivering a message (it then stays in
	// the stream, and JetStream emits a MAX_DELIVERIES advisory). Deliveries
	// count hand-backs too, so it must be far above the workers'
	// MaxAttempts, which is what dead-letters a message. Default 0:
	// unlimited.
	MaxDeliver int
	// HandBackDelay is how long a message for a disabled, excluded or
	// saturated target waits before it is offered again. Default
	// DefaultHandBackDelay.
	HandBackDelay time.Duration
	// Now is the clock used to turn Nack.AvailableAt into a delay. Default
	// time.Now.
	Now func() time.Time
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Backend is a queue.Backend on JetStream. Its methods are safe for
// concurrent use. Several Backends (processes) with the same Prefix share
// the queues.
type Backend struct {
	js   jetstream.JetStream
	opts Options

	msgs, dlq, stateStream   jetstream.Stream
	state, targetKV, dedupKV jetstream.KeyValue

	mu        sync.Mutex
	consumers map[string]jetstream.Consumer // by queue
	held      map[string]*held              // by queue + "\x00" + id
	targets   map[string]map[string]queue.TargetState
	watchers  map[string]jetstream.KeyWatcher
	closed    bool
	stop      chan struct{}
	beating   sync.WaitGroup
}

// held is a message claimed by this Backend and not yet settled.
type held struct {
	msg      *nats.Msg // from the claim's inbox: the legacy ack methods
	token    int64
	seq      uint64
	attempts int    // attempts recorded before this claim
	deliv    uint64 // NumDelivered of this delivery
	stateful bool   // a state record may exist
	// deadline is when the server may redeliver it, on this process's
	// clock (a margin early); beatUntil is when the requested lease ends.
	deadline, beatUntil time.Time
}

// ErrClosed is returned by every call after Close.
var ErrClosed = errors.New("natsqueue: backend closed")

// New creates (or binds to) the streams and buckets named by opts.Prefix
// on js and returns the Backend. It fails on an invalid Option or when
// JetStream refuses a stream or bucket (for instance one created earlier
// with an incompatible configuration); the error is wrapped.
func New(ctx context.Context, js jetstream.JetStream, opts Options) (*Backend, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !namePattern.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("natsqueue: Options.Prefix %q: want 1-64 letters, digits, '-' or '_'", opts.Prefix)
	}
	if opts.AckWait < 0 || opts.DedupeWindow < 0 || opts.HandBackDelay < 0 || opts.MaxDeliver < 0 {
		return nil, errors.New("natsqueue: negative Options field")
	}
	if opts.AckWait == 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.DedupeWindow == 0 {
		opts.DedupeWindow = DefaultDedupeWindow
	}
	if opts.HandBackDelay == 0 {
		opts.HandBackDelay = DefaultHandBackDelay
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b := &Backend{js: js, opts: opts, consumers: map[string]jetstream.Consumer{}, held: map[string]*held{},
		targets: map[string]map[string]queue.TargetState{}, watchers: map[string]jetstream.KeyWatcher{}, stop: make(chan struct{})}
	p := opts.Prefix
	var err error
	if b.msgs, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: p + "_Q", Subjects: []string{p + ".m.*"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Duplicates: opts.DedupeWindow,
	}); err != nil {
		return nil, fmt.Errorf("natsqueue: stream %s_Q: %w", p, err)
	}
	if b.dlq, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: p + "_DLQ", Subjects: []string{p + ".dlq.*.*"}, Storage: jetstream.FileStorage,
		MaxMsgsPerSubject: 1, // one entry per message id
	}); err != nil {
		return nil, fmt.Errorf("natsqueue: stream %s_DLQ: %w", p, err)
	}
	kv := func(name string, ttl time.Duration) (jetstream.KeyValue, error) {
		k, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: p + "_" + name, TTL: ttl, Storage: jetstream.FileStorage})
		if err != nil {
			return nil, fmt.Errorf("natsqueue: bucket %s_%s: %w", p, name, err)
		}
		return k, nil
	}
	if b.state, err = kv("STATE", 0); err != nil {
		return nil, err
	}
	if b.stateStream, err = js.Stream(ctx, "KV_"+p+"_STATE"); err != nil {
		return nil, fmt.Errorf("natsqueue: bucket %s_STATE: %w", p, err)
	}
	if b.targetKV, err = kv("TARGETS", 0); err != nil {
		return nil, err
	}
	if b.dedupKV, err = kv("DEDUPE", opts.DedupeWindow); err != nil {
		return nil, err
	}
	b.beating.Add(1)
	go b.heartbeat()
	return b, nil
}

// settleTimeout bounds the bucket calls that settle deliveries a claim
// already received (their state read, a hand-back's state write).
const settleTimeout = 10 * time.Second

// margin is how much earlier than the server this process considers a
// lease over (the server's timer starts before the delivery arrives).
func (b *Backend) margin() time.Duration { return b.opts.AckWait / 20 }

// heartbeat sends "in progress" for held messages whose requested lease
// is longer than AckWait, and forgets held messages whose lease is over.
func (b *Backend) heartbeat() {
	defer b.beating.Done()
	t := time.NewTicker(max(b.opts.AckWait/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		var beat []*held
		b.mu.Lock()
		for k, h := range b.held {
			switch {
			case now.After(h.deadline):
				delete(b.held, k) // lost: the server redelivers it
			case now.Before(h.beatUntil):
				beat = append(beat, h)
			}
		}
		b.mu.Unlock()
		for _, h := range beat {
			if h.msg.InProgress() == nil {
				b.mu.Lock()
				h.deadline = now.Add(b.opts.AckWait - b.margin())
				b.mu.Unlock()
			}
		}
	}
}

// Prefix returns the prefix the Backend's streams and buckets are named by.
func (b *Backend) Prefix() string { return b.opts.Prefix }

// Close stops the heartbeat and the target watchers; later calls return
// ErrClosed. It does not close the NATS connection or delete anything;
// messages it holds are redelivered after AckWait. It always returns nil;
// a second Close does nothing.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.stop)
	for _, w := range b.watchers {
		_ = w.Stop()
	}
	b.watchers = map[string]jetstream.KeyWatcher{}
	b.mu.Unlock()
	b.beating.Wait()
	return nil
}

// Destroy deletes the streams and buckets of prefix (everything a Backend
// with that Prefix created). Meant for tests; a missing one is skipped.
func Destroy(ctx context.Context, js jetstream.JetStream, prefix string) error {
	var errs []error
	for _, s := range []string{prefix + "_Q", prefix + "_DLQ"} {
		if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			errs = append(errs, err)
		}
	}
	for _, k := range []string{"STATE", "TARGETS", "DEDUPE"} {
		if err := js.DeleteKeyValue(ctx, prefix+"_"+k); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("natsqueue: destroy %s: %w", prefix, err)
	}
	return nil
}

// tok turns a name into a subject token / KV key part.
func tok(s string) string {
	if namePattern.MatchString(s) && len(s) <= 32 {
		return "n" + s
	}
	return "h" + hash(s)
}

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:16])
}

// hMeta is the header carrying a message's metadata as one JSON object:
// JSON escapes every control character, so no id, target or header value
// can break the NATS header block (CR/LF) or inject a header.
const hMeta = "Levee-Meta"

type meta struct {
	ID         string      `json:"id"`
	Target     string      `json:"target,omitempty"`
	DedupeID   string      `json:"dedupe_id,omitempty"`
	EnqueuedAt time.Time   `json:"enqueued_at"`
	Headers    http.Header `json:"headers,omitempty"`
}

func (b *Backend) subject(q string) string { return b.opts.Prefix + ".m." + tok(q) }

func (b *Backend) dlqSubject(q, id string) string {
	return b.opts.Prefix + ".dlq." + tok(q) + "." + hash(id)
}

// validUTF8 reports whether the message's strings survive JSON unchanged.
func validUTF8(m *queue.Message) bool {
	if !utf8.ValidString(m.ID) || !utf8.ValidString(m.Target) || !utf8.ValidString(m.DedupeID) {
		return false
	}
	for k, vs := range m.Headers {
		if !utf8.ValidString(k) {
			return false
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return false
			}
		}
	}
	return true
}

// ErrInvalidUTF8 is returned (wrapped) by Enqueue for a message whose ID,
// Target, DedupeID or headers are not valid UTF-8; nothing of the call is
// stored.
var ErrInvalidUTF8 = errors.New("natsqueue: ID, Target, DedupeID and headers must be valid UTF-8")

func (b *Backend) natsMsg(m *queue.Message) (*nats.Msg, error) {
	if !validUTF8(m) {
		return nil, fmt.Errorf("natsqueue: message %q: %w", m.ID, ErrInvalidUTF8)
	}
	mj, err := json.Marshal(meta{ID: m.ID, Target: m.Target, DedupeID: m.DedupeID, EnqueuedAt: m.EnqueuedAt.UTC(), Headers: m.Headers})
	if err != nil {
		return nil, fmt.Errorf("natsqueue: message %q: %w", m.ID, err)
	}
	nm := nats.NewMsg(b.subject(m.Queue))
	nm.Data = m.Payload
	nm.Header.Set(hMeta, string(mj))
	return nm, nil
}

// parseMessage reads a message natsMsg wrote; anything else is an error.
func parseMessage(q string, h nats.Header, data []byte) (queue.Message, error) {
	var md meta
	if err := json.Unmarshal([]byte(h.Get(hMeta)), &md); err != nil {
		return queue.Message{}, fmt.Errorf("natsqueue: message without a valid %s header: %w", hMeta, err)
	}
	if md.ID == "" {
		return queue.Message{}, errors.New("natsqueue: message without an id")
	}
	return queue.Message{ID: md.ID, Queue: q, Target: md.Target, DedupeID: md.DedupeID, EnqueuedAt: md.EnqueuedAt,
		Headers: md.Headers, Payload: data}, nil
}

func (b *Backend) check() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	return nil
}

// Enqueue publishes the messages (asynchronously, then waits for every
// PubAck: each is in the server's file store when its ack arrives) with
// Nats-Msg-Id "d:<queue>:<hash of DedupeID>" or, without a DedupeID,
// "i:<queue>:<hash of ID>". A message with invalid UTF-8 fails the call
// (ErrInvalidUTF8) before anything is published.
// A duplicate within the stream's window is reported with the first
// message's ID (from the DEDUPE bucket, or the original still in the
// stream). A message whose ID equals its DedupeID (as the gateway's webhook
// messages) writes no DEDUPE entry: one publish per message instead of
// two, and its duplicates are reported with that ID. req.Now and
// req.DedupeUntil are not used: the window is the server's. An error (publish refused, ack timeout, ctx) may come after
// some messages were stored; a retry with the same ids is deduplicated.
func (b *Backend) Enqueue(ctx context.Context, req queue.EnqueueRequest) ([]queue.EnqueueResult, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	nms := make([]*nats.Msg, len(req.Messages))
	for i, m := range req.Messages {
		var err error
		if nms[i], err = b.natsMsg(m); err != nil {
			return nil, err // before anything is published
		}
	}
	futs := make([]jetstream.PubAckFuture, len(req.Messages))
	var kvFuts []jetstream.PubAckFuture
	for i, m := range req.Messages {
		nm := nms[i]
		var err error
		// Hashed: an id is any UTF-8, a header value must not hold CR/LF.
		msgID := "i:" + tok(m.Queue) + ":" + hash(m.ID)
		if m.DedupeID != "" {
			msgID = "d:" + tok(m.Queue) + ":" + hash(m.DedupeID)
		}
		if futs[i], err = b.js.PublishMsgAsync(nm, jetstream.WithMsgID(msgID)); err != nil {
			return nil, fmt.Errorf("natsqueue: enqueue %q: %w", m.ID, err)
		}
	}
	res := make([]queue.EnqueueResult, len(req.Messages))
	var dups []int
	origSeq := make([]uint64, len(req.Messages))
	for i, f := range futs {
		m := req.Messages[i]
		select {
		case ack := <-f.Ok():
			res[i] = queue.EnqueueResult{ID: m.ID, Duplicate: ack.Duplicate}
			if ack.Duplicate {
				if m.DedupeID != "" {
					dups = append(dups, i)
					origSeq[i] = ack.Sequence // the first message's
				}
				continue
			}
			if m.DedupeID != "" && m.ID != m.DedupeID {
				// Remember whose DedupeID it is, for the duplicates' results.
				// (A message whose ID is its DedupeID needs no entry: its
				// duplicates name the same ID.)
				kf, err := b.js.PublishAsync("$KV."+b.opts.Prefix+"_DEDUPE."+tok(m.Queue)+"."+hash(m.DedupeID), []byte(m.ID))
				if err != nil {
					return nil, fmt.Errorf("natsqueue: enqueue %q: dedupe entry: %w", m.ID, err)
				}
				kvFuts = append(kvFuts, kf)
			}
		case err := <-f.Err():
			return nil, fmt.Errorf("natsqueue: enqueue %q: %w", m.ID, err)
		case <-ctx.Done():
			return nil, fmt.Errorf("natsqueue: enqueue: %w", ctx.Err())
		}
	}
	for _, f := range kvFuts {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return nil, fmt.Errorf("natsqueue: enqueue: dedupe entry: %w", err)
		case <-ctx.Done():
			return nil, fmt.Errorf("natsqueue: enqueue: %w", ctx.Err())
		}
	}
	for _, i := range dups {
		m := req.Messages[i]
		e, err := b.dedupKV.Get(ctx, tok(m.Queue)+"."+hash(m.DedupeID))
		if err == nil {
			res[i].ID = string(e.Value())
			continue
		}
		// No entry: the first message may still be queued.
		if rm, gerr := b.msgs.GetMsg(ctx, origSeq[i]); gerr == nil {
			if first, perr := parseMessage(m.Queue, rm.Header, rm.Data); perr == nil && first.DedupeID == m.DedupeID {
				res[i].ID = first.ID
				continue
			}
		}
		// Gone: the first wrote no entry because its ID was its DedupeID
		// (or its writer died after the PubAck, the one case this could
		// misname, and only for a DedupeID used both ways).
		if m.ID == m.DedupeID {
			res[i].ID = m.ID
			continue
		}
		return nil, fmt.Errorf("natsqueue: enqueue %q: first message of dedupe id %q: %w", m.ID, m.DedupeID, err)
	}
	return res, nil
}

// msgState is what the STATE bucket keeps for a message being retried.
type msgState struct {
	Attempts int             `json:"attempts"`
	Settled  uint64          `json:"settled"` // NumDelivered when Attempts was recorded
	History  []queue.Attempt `json:"history,omitempty"`
}

func (b *Backend) stateKey(q string, seq uint64) string {
	return tok(q) + "." + strconv.FormatUint(seq, 10)
}

func (b *Backend) consumer(ctx context.Context, q string) (jetstream.Consumer, error) {
	b.mu.Lock()
	c := b.consumers[q]
	b.mu.Unlock()
	if c != nil {
		return c, nil
	}
	cfg := jetstream.ConsumerConfig{
		Durable: "q_" + tok(q), FilterSubject: b.subject(q), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: b.opts.AckWait, MaxAckPending: -1, MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if b.opts.MaxDeliver > 0 {
		cfg.MaxDeliver = b.opts.MaxDeliver
	}
	c, err := b.msgs.CreateOrUpdateConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("natsqueue: consumer for queue %q: %w", q, err)
	}
	if err := b.watchTargets(q); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.consumers[q] = c
	b.mu.Unlock()
	return c, nil
}

// watchTargets keeps b.targets[q] in step with the TARGETS bucket, so that
// other processes' SetTarget calls reach this one's claims.
func (b *Backend) watchTargets(q string) error {
	b.mu.Lock()
	if _, ok := b.watchers[q]; ok {
		b.mu.Unlock()
		return nil
	}
	b.mu.Unlock()
	w, err := b.targetKV.Watch(context.Background(), tok(q)+".*")
	if err != nil {
		return fmt.Errorf("natsqueue: watch targets of %q: %w", q, err)
	}
	b.mu.Lock()
	if _, ok := b.watchers[q]; ok || b.closed {
		b.mu.Unlock()
		_ = w.Stop()
		return nil
	}
	b.watchers[q] = w
	b.mu.Unlock()
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			var s queue.TargetState
			if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &s) != nil {
				continue
			}
			b.mu.Lock()
			b.setTargetLocked(s)
			b.mu.Unlock()
		}
	}()
	return nil
}

func (b *Backend) setTargetLocked(s queue.TargetState) {
	m := b.targets[s.Queue]
	if m == nil {
		m = map[string]queue.TargetState{}
		b.targets[s.Queue] = m
	}
	if old, ok := m[s.Target]; ok && old.Since.After(s.Since) {
		return
	}
	m[s.Target] = s
}

func heldKey(q, id string) string { return q + "\x00" + id }

// Claim fetches up to req.Limit messages the server offers now (no wait).
// A message for a disabled or excluded target, or beyond req.PerTarget, is
// handed back (NakWithDelay(HandBackDelay)) without counting an attempt,
// and the claim fetches again past it, up to claimScan messages in all.
// The lease is the consumer's AckWait from the server's delivery, extended
// by heartbeats to req.LeaseUntil-req.Now (measured on this process's
// clock from the claim); req.Now is not otherwise used. Order is the stream's
// (publish order; redeliveries first). A fetch error is returned wrapped.
// ctx bounds the fetch only: what the server delivered is returned (or
// handed back uncounted) even when ctx ends meanwhile.
func (b *Backend) Claim(ctx context.Context, req queue.ClaimRequest) ([]queue.Claimed, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if req.Limit <= 0 {
		return nil, nil
	}
	c, err := b.consumer(ctx, req.Queue)
	if err != nil {
		return nil, err
	}
	batch, fetchErr := b.fetch(req.Queue, c, req.Limit)
	if fetchErr != nil && len(batch) == 0 {
		return nil, fmt.Errorf("natsqueue: claim from %q: %w", req.Queue, fetchErr)
	}
	firstFetch, callerDone := true, ctx.Done()
	// From here on the server has counted every message of the batch as
	// delivered: each must be returned, or handed back with its state
	// recorded, even when the caller's ctx ends meanwhile (a Worker
	// stopping while it claims). Failing the state read of a delivery
	// because ctx ended made the delivery count as an attempt (the
	// "stopped delivery comes back as an attempt" issue, docs/queue.md).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	excluded := map[string]bool{}
	for _, t := range req.Exclude {
		excluded[t] = true
	}
	perTarget := map[string]int{}
	lease := req.LeaseUntil.Sub(req.Now)
	var out []queue.Claimed
	var firstErr error
	// A message for a saturated, excluded or disabled target is handed
	// back (with a delay, so that it is not fetched again in this call) and
	// the claim fetches again past it, up to claimScan messages in all:
	// fetching only req.Limit would let a backlog for one hanging target
	// fill every fetch, and other targets' messages behind it would wait
	// for that backlog to cycle through, a few messages per poll.
	for scanned, want := 0, req.Limit; len(out) < req.Limit && scanned < claimScan; {
		if !firstFetch {
			select {
			case <-callerDone:
				return out, nil // stopping: fetch nothing more
			default:
			}
			batch, fetchErr = b.fetch(req.Queue, c, want)
		}
		firstFetch = false
		firstErr = firstOf(firstErr, fetchErr)
		handed := 0
		for _, jm := range batch {
			meta, err := jm.Metadata()
			if err != nil {
				firstErr = firstOf(firstErr, err)
				continue
			}
			m, err := parseMessage(req.Queue, jm.Header, jm.Data)
			if err != nil {
				// Not written by levee (no valid Levee-Meta): terminate it, so
				// that it is never redelivered and cannot wedge the queue
				// (JetStream reports it with a MSG_TERMINATED advisory).
				_ = jm.Term()
				firstErr = firstOf(firstErr, err)
				continue
			}
			st := msgState{}
			stateful := meta.NumDelivered > 1
			if stateful {
				if e, err := b.state.Get(ctx, b.stateKey(req.Queue, meta.Sequence.Stream)); err == nil {
					if err := json.Unmarshal(e.Value(), &st); err != nil {
						firstErr = firstOf(firstErr, fmt.Errorf("natsqueue: state of %q: %w", m.ID, err))
					}
				} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
					_ = jm.Nak()
					firstErr = firstOf(firstErr, fmt.Errorf("natsqueue: state of %q: %w", m.ID, err))
					continue
				}
			}
			b.mu.Lock()
			disabled := b.targets[req.Queue][m.Target].Disabled
			b.mu.Unlock()
			blocked := disabled || excluded[m.Target] || (req.PerTarget > 0 && perTarget[m.Target] >= req.PerTarget)
			if blocked || len(out) >= req.Limit {
				// A claimable message fetched beyond the limit goes back
				// at once; one blocked waits HandBackDelay, so that this
				// call's next fetches reach past it.
				delay := time.Duration(0)
				if blocked {
					delay = b.opts.HandBackDelay
				}
				if err := b.handBack(ctx, req.Queue, jm, meta, st, delay); err != nil {
					firstErr = firstOf(firstErr, err)
				}
				handed++
				continue
			}
			perTarget[m.Target]++
			// Deliveries since the last recorded outcome count as attempts
			// (a worker that vanished holding one lost its attempt).
			attempt := st.Attempts + int(meta.NumDelivered-st.Settled)
			now := time.Now()
			h := &held{msg: jm, token: int64(meta.Sequence.Consumer), seq: meta.Sequence.Stream, attempts: st.Attempts,
				deliv: meta.NumDelivered, stateful: stateful, deadline: now.Add(b.opts.AckWait - b.margin()), beatUntil: now.Add(lease)}
			b.mu.Lock()
			b.held[heldKey(req.Queue, m.ID)] = h
			b.mu.Unlock()
			out = append(out, queue.Claimed{Message: m, Token: h.token, Attempt: attempt, History: st.History})
		}
		scanned += len(batch)
		if fetchErr != nil || len(batch) < want {
			break // the stream has nothing more available now
		}
		// Past a run of handed-back messages, fetch in growing batches;
		// once this batch claimed something, only what is still wanted
		// (every hand-back costs a state write and a Nak).
		want = req.Limit - len(out)
		if handed == len(batch) {
			want = max(want, 2*handed)
		}
		want = min(want, claimScan-scanned)
	}
	if len(out) == 0 && firstErr != nil {
		return nil, fmt.Errorf("natsqueue: claim from %q: %w", req.Queue, firstErr)
	}
	return out, nil
}

// claimScan bounds the messages one Claim fetches, handed back ones
// included.
const claimScan = 256

// fetchWait is how long a claim waits for the server's answer to its
// pull request.
const fetchWait = time.Second

// fetch sends the consumer a no-wait pull request for up to limit messages
// and returns those that arrive within fetchWait, and the error a status
// answer carried (404 and 408, the request's normal end, are none).
//
// It replaces jetstream's FetchNoWait, which stops listening 1s after it
// sent the request and drops what arrives later: the server has counted
// those messages delivered, so each came back only after AckWait, as an
// attempt nobody made (a loaded machine answering late made a delivery that
// Worker.Stop released look like a crashed attempt). Here a goroutine keeps
// listening to the request's inbox until the request ends (at most AckWait,
// after which the server redelivers anyway) and hands each late message
// back at once without counting it.
func (b *Backend) fetch(q string, c jetstream.Consumer, limit int) ([]*nats.Msg, error) {
	nc := b.js.Conn()
	ch := make(chan *nats.Msg, limit+2) // limit messages and a status
	sub, err := nc.ChanSubscribe(nc.NewInbox(), ch)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(struct {
		Batch  int  `json:"batch"`
		NoWait bool `json:"no_wait"`
	}{limit, true})
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	if err := nc.PublishRequest(b.apiPrefix()+"CONSUMER.MSG.NEXT."+b.opts.Prefix+"_Q."+c.CachedInfo().Name, sub.Subject, body); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	var out []*nats.Msg
	t := time.NewTimer(fetchWait)
	defer t.Stop()
	for len(out) < limit {
		select {
		case m := <-ch:
			end, err := pullStatus(m)
			if end {
				_ = sub.Unsubscribe()
				return out, err
			}
			if m.Reply != "" {
				out = append(out, m)
			}
		case <-t.C:
			b.mu.Lock()
			closed := b.closed
			if !closed {
				b.beating.Add(1)
			}
			b.mu.Unlock()
			if closed {
				_ = sub.Unsubscribe()
				return out, nil
			}
			go b.handBackLate(q, sub, ch, limit-len(out))
			return out, nil
		}
	}
	_ = sub.Unsubscribe()
	return out, nil
}

// pullStatus reports whether m is a status answer ending a pull request,
// and the error it carries (none for 404 No Messages and 408 Request
// Timeout, a no-wait request's normal end).
func pullStatus(m *nats.Msg) (bool, error) {
	if len(m.Data) > 0 || m.Header.Get("Status") == "" {
		return false, nil
	}
	switch m.Header.Get("Status") {
	case "100": // heartbeat, flow control
		return false, nil
	case "404", "408":
		return true, nil
	default:
		return true, fmt.Errorf("natsqueue: pull request answered %s %s", m.Header.Get("Status"), m.Header.Get("Description"))
	}
}

// handBackLate reads the rest of a pull request's answer after its claim
// stopped waiting and hands each message back uncounted, until the request
// ends, left messages arrived, AckWait passed or the Backend closed.
func (b *Backend) handBackLate(q string, sub *nats.Subscription, ch chan *nats.Msg, left int) {
	defer b.beating.Done()
	defer func() { _ = sub.Unsubscribe() }()
	t := time.NewTimer(b.opts.AckWait)
	defer t.Stop()
	for left > 0 {
		select {
		case <-b.stop:
			return
		case <-t.C:
			return
		case m := <-ch:
			if end, _ := pullStatus(m); end {
				return
			}
			if m.Reply == "" {
				continue
			}
			left--
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
			st := msgState{}
			if meta.NumDelivered > 1 {
				if e, err := b.state.Get(ctx, b.stateKey(q, meta.Sequence.Stream)); err == nil {
					_ = json.Unmarshal(e.Value(), &st)
				} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
					_ = m.Nak()
					cancel()
					continue
				}
			}
			_ = b.handBack(ctx, q, m, meta, st, 0)
			cancel()
		}
	}
}

// apiPrefix is the JetStream API subject prefix of b.js.
func (b *Backend) apiPrefix() string {
	o := b.js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}

func firstOf(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// handBack returns a delivery without counting it as an attempt.
func (b *Backend) handBack(ctx context.Context, q string, jm *nats.Msg, meta *nats.MsgMetadata, st msgState, delay time.Duration) error {
	// The next delivery (NumDelivered+1) gets this one's attempt number.
	st.Attempts += int(meta.NumDelivered-st.Settled) - 1
	st.Settled = meta.NumDelivered
	if err := b.putState(ctx, q, meta.Sequence.Stream, st); err != nil {
		_ = jm.Nak()
		return err
	}
	if err := jm.NakWithDelay(delay); err != nil {
		return fmt.Errorf("natsqueue: hand back: %w", err)
	}
	return nil
}

func (b *Backend) putState(ctx context.Context, q string, seq uint64, st msgState) error {
	v, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("natsqueue: state: %w", err)
	}
	if _, err := b.state.Put(ctx, b.stateKey(q, seq), v); err != nil {
		return fmt.Errorf("natsqueue: state: %w", err)
	}
	return nil
}

// take removes and returns the held message for (q, id) when token matches
// and its lease has not run out on this process's clock; else ErrLeaseLost.
func (b *Backend) take(q, id string, token int64) (*held, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	k := heldKey(q, id)
	h := b.held[k]
	if h == nil || h.token != token {
		return nil, queue.ErrLeaseLost
	}
	delete(b.held, k)
	if time.Now().After(h.deadline) {
		return nil, queue.ErrLeaseLost
	}
	return h, nil
}

// Ack acknowledges the delivery (DoubleAck: the server confirms it) and
// deletes the message's state record. ErrLeaseLost when this Backend does
// not hold (q, id) under token, or its AckWait has (nearly) run out.
func (b *Backend) Ack(ctx context.Context, q, id string, token int64) error {
	h, err := b.take(q, id, token)
	if err != nil {
		return err
	}
	if err := h.msg.AckSync(nats.Context(ctx)); err != nil {
		return fmt.Errorf("natsqueue: ack %q: %w", id, err)
	}
	b.dropState(ctx, q, h)
	return nil
}

func (b *Backend) dropState(ctx context.Context, q string, h *held) {
	if h.stateful || h.attempts > 0 {
		// Purge the subject (no KV tombstone left behind); a leftover
		// record is harmless, it is keyed by a stream sequence never reused.
		_ = b.stateStream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+b.opts.Prefix+"_STATE."+b.stateKey(q, h.seq)))
	}
}

// Nack records n.Attempts and n.History in the STATE bucket, then
// NakWithDelay(n.AvailableAt - Options.Now()) (at least 0). ErrLeaseLost as
// for Ack; a bucket or server error is returned wrapped and the message
// comes back after AckWait.
func (b *Backend) Nack(ctx context.Context, n queue.Nack) error {
	h, err := b.take(n.Queue, n.ID, n.Token)
	if err != nil {
		return err
	}
	if err := b.putState(ctx, n.Queue, h.seq, msgState{Attempts: n.Attempts, Settled: h.deliv, History: n.History}); err != nil {
		return fmt.Errorf("natsqueue: nack %q: %w", n.ID, err)
	}
	if err := h.msg.NakWithDelay(max(0, n.AvailableAt.Sub(b.opts.Now()))); err != nil {
		return fmt.Errorf("natsqueue: nack %q: %w", n.ID, err)
	}
	return nil
}

// deadRecord is a DLQ entry's body.
type deadRecord struct {
	ID         string          `json:"id"`
	Target     string          `json:"target"`
	Payload    []byte          `json:"payload"`
	Headers    http.Header     `json:"headers,omitempty"`
	DedupeID   string          `json:"dedupe_id,omitempty"`
	EnqueuedAt time.Time       `json:"enqueued_at"`
	Reason     queue.Reason    `json:"reason"`
	Attempts   int             `json:"attempts"`
	History    []queue.Attempt `json:"history"`
	DeadAt     time.Time       `json:"dead_at"`
}

// Bury publishes the message with its history to the DLQ stream (waiting
// for the PubAck), then acknowledges the original. ErrLeaseLost as for Ack;
// a failure to store the DLQ entry is returned wrapped and the message
// comes back after AckWait (nothing is lost). If the acknowledgement is
// lost after the DLQ entry was stored, the redelivered message can die
// again: the DLQ keeps one entry per id (the last).
func (b *Backend) Bury(ctx context.Context, bu queue.Burial) error {
	h, err := b.take(bu.Queue, bu.ID, bu.Token)
	if err != nil {
		return err
	}
	m, err := parseMessage(bu.Queue, h.msg.Header, h.msg.Data)
	if err != nil {
		return err
	}
	rec := deadRecord{ID: m.ID, Target: m.Target, Payload: m.Payload, Headers: m.Headers, DedupeID: m.DedupeID,
		EnqueuedAt: m.EnqueuedAt, Reason: bu.Reason, Attempts: bu.Attempts, History: bu.History, DeadAt: bu.At}
	body, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("natsqueue: bury %q: %w", bu.ID, err)
	}
	if _, err := b.js.Publish(ctx, b.dlqSubject(bu.Queue, bu.ID), body); err != nil {
		return fmt.Errorf("natsqueue: bury %q: %w", bu.ID, err)
	}
	if err := h.msg.AckSync(nats.Context(ctx)); err != nil {
		return fmt.Errorf("natsqueue: bury %q: ack: %w", bu.ID, err)
	}
	b.dropState(ctx, bu.Queue, h)
	return nil
}

func toDead(q string, seq uint64, data []byte) (queue.DeadMessage, error) {
	var r deadRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return queue.DeadMessage{}, fmt.Errorf("natsqueue: dead message %d: %w", seq, err)
	}
	d := queue.DeadMessage{
		Message: queue.Message{ID: r.ID, Queue: q, Target: r.Target, Payload: r.Payload, Headers: r.Headers, DedupeID: r.DedupeID, EnqueuedAt: r.EnqueuedAt},
		Seq:     int64(seq), Reason: r.Reason, Attempts: r.Attempts, History: r.History, DeadAt: r.DeadAt,
	}
	if len(r.History) > 0 {
		d.FirstFailure, d.LastFailure = r.History[0].FailedAt, r.History[len(r.History)-1].FailedAt
	}
	return d, nil
}

func matches(d queue.DeadMessage, f queue.DeadFilter) bool {
	switch {
	case f.Target != "" && d.Target != f.Target,
		f.Reason != "" && d.Reason != f.Reason,
		!f.DeadBefore.IsZero() && !d.DeadAt.Before(f.DeadBefore),
		!f.DeadAfter.IsZero() && !d.DeadAt.After(f.DeadAfter):
		return false
	}
	return true
}

// ListDead reads the DLQ stream from f.AfterSeq on (one direct get per
// entry, filtering client-side), by sequence ascending. A server error is
// returned wrapped.
func (b *Backend) ListDead(ctx context.Context, f queue.DeadFilter) ([]queue.DeadMessage, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	var out []queue.DeadMessage
	if len(f.IDs) > 0 {
		for _, id := range f.IDs {
			d, err := b.GetDead(ctx, f.Queue, id)
			if errors.Is(err, queue.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if d.Seq > f.AfterSeq && matches(*d, f) {
				out = append(out, *d)
			}
		}
		sortDead(out)
		if f.Limit > 0 && len(out) > f.Limit {
			out = out[:f.Limit]
		}
		return out, nil
	}
	subj := b.opts.Prefix + ".dlq." + tok(f.Queue) + ".*"
	seq := uint64(max(f.AfterSeq, 0)) + 1
	for f.Limit <= 0 || len(out) < f.Limit {
		rm, err := b.dlq.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("natsqueue: list dead of %q: %w", f.Queue, err)
		}
		seq = rm.Sequence + 1
		d, err := toDead(f.Queue, rm.Sequence, rm.Data)
		if err != nil {
			return nil, err
		}
		if matches(d, f) {
			out = append(out, d)
		}
	}
	return out, nil
}

func sortDead(ds []queue.DeadMessage) {
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && ds[j].Seq < ds[j-1].Seq; j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

// GetDead returns the DLQ entry of (q, id), or queue.ErrNotFound.
func (b *Backend) GetDead(ctx context.Context, q, id string) (*queue.DeadMessage, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	rm, err := b.dlq.GetLastMsgForSubject(ctx, b.dlqSubject(q, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, queue.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("natsqueue: get dead %q: %w", id, err)
	}
	d, err := toDead(q, rm.Sequence, rm.Data)
	if err != nil {
		return nil, err
	}
	if d.ID != id {
		return nil, queue.ErrNotFound // a hash collision, in theory
	}
	return &d, nil
}

// Requeue republishes each dead message to the queue (Nats-Msg-Id
// "r:<queue>:<hash of id>:<dlq seq>", so a retried Requeue is deduplicated and the
// original's dedupe entry does not drop it; the id and DedupeID are kept),
// then deletes its DLQ entry. now is not used (available at once). An
// error stops it; the count so far is returned with it.
func (b *Backend) Requeue(ctx context.Context, q string, ids []string, now time.Time) (int, error) {
	n := 0
	for _, id := range ids {
		d, err := b.GetDead(ctx, q, id)
		if errors.Is(err, queue.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		nm, err := b.natsMsg(&d.Message)
		if err != nil {
			return n, err
		}
		if _, err := b.js.PublishMsg(ctx, nm, jetstream.WithMsgID("r:"+tok(q)+":"+hash(id)+":"+strconv.FormatInt(d.Seq, 10))); err != nil {
			return n, fmt.Errorf("natsqueue: requeue %q: %w", id, err)
		}
		if err := b.dlq.DeleteMsg(ctx, uint64(d.Seq)); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return n, fmt.Errorf("natsqueue: requeue %q: delete dead entry: %w", id, err)
		}
		n++
	}
	return n, nil
}

// DeleteDead deletes the DLQ entries matching f and returns how many. An
// error stops it; the count so far is returned with it.
func (b *Backend) DeleteDead(ctx context.Context, f queue.DeadFilter) (int, error) {
	ds, err := b.ListDead(ctx, f)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range ds {
		if err := b.dlq.DeleteMsg(ctx, uint64(d.Seq)); err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			return n, fmt.Errorf("natsqueue: delete dead %q: %w", d.ID, err)
		}
		n++
	}
	return n, nil
}

// SetTarget stores the target's state in the TARGETS bucket (every
// Backend on the prefix sees it through a KV watch) and in this Backend at
// once. A bucket error is returned wrapped.
func (b *Backend) SetTarget(ctx context.Context, s queue.TargetState) error {
	if err := b.check(); err != nil {
		return err
	}
	v, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("natsqueue: set target: %w", err)
	}
	if _, err := b.targetKV.Put(ctx, tok(s.Queue)+"."+hash(s.Target), v); err != nil {
		return fmt.Errorf("natsqueue: set target %q: %w", s.Target, err)
	}
	b.mu.Lock()
	b.setTargetLocked(s)
	b.mu.Unlock()
	return nil
}

// Targets reads the queue's target states from the TARGETS bucket. A
// bucket error is returned wrapped.
func (b *Backend) Targets(ctx context.Context, q string) ([]queue.TargetState, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	lister, err := b.targetKV.ListKeysFiltered(ctx, tok(q)+".*")
	if err != nil {
		return nil, fmt.Errorf("natsqueue: targets of %q: %w", q, err)
	}
	var out []queue.TargetState
	for k := range lister.Keys() {
		e, err := b.targetKV.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("natsqueue: targets of %q: %w", q, err)
		}
		var s queue.TargetState
		if err := json.Unmarshal(e.Value(), &s); err != nil {
			return nil, fmt.Errorf("natsqueue: targets of %q: %w", q, err)
		}
		out = append(out, s)
	}
	return out, nil
}

var _ queue.Backend = (*Backend)(nil)
