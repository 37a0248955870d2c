// Package sqsqueue is a queue.Backend on Amazon SQS (standard queues),
// through the AWS SDK for Go v2, for teams whose delivery queue should be
// an AWS service rather than a database.
//
// # Layout
//
// A levee queue named N is the SQS queue Options.Prefix+N, and its
// dead-letter queue is Options.Prefix+N+Options.DLQSuffix (default
// "-dlq"); both must exist (see deploy/aws). Configure the main queue's
// RedrivePolicy to the DLQ with a maxReceiveCount (5 is a good start):
// SQS then moves a message whose workers all died without recording an
// outcome (a crash loop) to the DLQ by itself. Every other move to the DLQ
// is levee's own (Bury), because SQS's DLQ keeps no reason and no history.
//
// Each SQS message body is a JSON envelope holding the levee message (id,
// target, headers, payload, dedupe id, enqueue time) and levee's state:
// the attempts made, every failed attempt's record (queue.Attempt: error,
// HTTP status, the start of the body), the time it is due, and once dead,
// the reason and time of death. SQS messages cannot be changed, so every
// change of levee's state (Nack, Bury, Requeue, a message handed back by
// Claim) sends a new copy and then deletes the old one: a crash between
// the two leaves both, and the message is delivered twice, never lost
// (consumers dedupe on the message ID, which the copy keeps; see
// queue.Idempotent).
//
// # Clocks and leases
//
// SQS keeps visibility timeouts and delays on its own clock. The backend
// turns the times it is given into durations: a claim's lease is
// LeaseUntil-Now (whole seconds, rounded up, at most 12 hours) and a
// retry's delay AvailableAt-now (at most SQS's 15 minutes per hop; a later
// message is handed back, still hidden, until it is due). Whether a
// message is due is also checked against the envelope with the caller's
// clock, to the second (SQS's delays are whole seconds: a message due
// within a second of the claim's Now is claimed). A lease held by this process ends at the real time
// Options.Clock reports; Ack, Nack and Bury on a lapsed lease return
// queue.ErrLeaseLost and change nothing, because SQS may have handed the
// message to another worker. Tokens are this process's own (SQS's receipt
// handles stay inside it): a lease is settled by the process that claimed
// it, which is how queue.Worker works.
//
// # Attempts lost to crashes
//
// A message received again after its lease lapsed has an SQS
// ApproximateReceiveCount above 1; each extra receive is an attempt whose
// worker died, and Claim counts it in Claimed.Attempt (queue.Worker then
// records it in the history as a lost lease). Because every hand-back is a
// fresh copy, the receive count counts lost leases only.
//
// # What SQS cannot do
//
//   - Dedupe across calls: SQS standard queues keep no dedupe ids, so
//     Enqueue reports Duplicate only within one call. FIFO queues are not
//     supported (their 5-minute window and per-group ordering do not match
//     levee's window and fair scheduling).
//   - Order: SQS standard queues are not FIFO; "oldest available first"
//     is best effort.
//   - Per-target limits, excluded and disabled targets are applied after
//     receiving: a message over its target's share is handed back (a new
//     copy), so a hot target costs requests, not correctness.
//   - The DLQ cannot be listed or read by id: ListDead, GetDead, Requeue
//     and DeleteDead scan it (receiving every message under
//     Options.ScanVisibility, then releasing those they do not remove).
//     A scan sees what another scan holds only after that one releases it;
//     scans in this process take turns. Keep DLQs small, or use Redrive
//     (StartMessageMoveTask) to move a whole DLQ back natively.
//   - Target states are kept as tags on the main queue (at most 50 per
//     queue, SQS's tag limit), read at most every Options.TargetRefresh.
//
// # Failures
//
// An SQS error is returned wrapped with the operation, prefixed
// "sqsqueue:"; a partial SendMessageBatch failure fails the Enqueue (the
// messages stored before it stay stored: retrying the call may store them
// twice under the same ID, which consumers dedupe). A message whose body
// is not a levee envelope is left alone by Claim (its lease lapses and
// SQS's redrive eventually moves it to the DLQ, where scans report it with
// ReasonUndecodable).
package sqsqueue

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/leveehq/levee/queue"
)

// API is the part of the SQS client the Backend uses. *sqs.Client from
// github.com/aws/aws-sdk-go-v2/service/sqs implements it.
type API interface {
	GetQueueUrl(ctx context.Context, in *sqs.GetQueueUrlInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueUrlOutput, error)
	GetQueueAttributes(ctx context.Context, in *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error)
	SendMessage(ctx context.Context, in *sqs.SendMessageInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageOutput, error)
	SendMessageBatch(ctx context.Context, in *sqs.SendMessageBatchInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageBatchOutput, error)
	ReceiveMessage(ctx context.Context, in *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error)
	DeleteMessage(ctx context.Context, in *sqs.DeleteMessageInput, optFns ...func(*sqs.Options)) (*sqs.DeleteMessageOutput, error)
	ChangeMessageVisibility(ctx context.Context, in *sqs.ChangeMessageVisibilityInput, optFns ...func(*sqs.Options)) (*sqs.ChangeMessageVisibilityOutput, error)
	TagQueue(ctx context.Context, in *sqs.TagQueueInput, optFns ...func(*sqs.Options)) (*sqs.TagQueueOutput, error)
	ListQueueTags(ctx context.Context, in *sqs.ListQueueTagsInput, optFns ...func(*sqs.Options)) (*sqs.ListQueueTagsOutput, error)
	StartMessageMoveTask(ctx context.Context, in *sqs.StartMessageMoveTaskInput, optFns ...func(*sqs.Options)) (*sqs.StartMessageMoveTaskOutput, error)
}

// Reasons a scan reports for messages SQS moved to the DLQ by itself.
const (
	// ReasonMaxReceives: SQS's redrive policy moved the message after
	// maxReceiveCount receives without an outcome (workers that died).
	ReasonMaxReceives queue.Reason = "max_receives"
	// ReasonUndecodable: the DLQ holds a message that is not a levee
	// envelope.
	ReasonUndecodable queue.Reason = "undecodable"
)

// Options configure a Backend. The zero value selects the defaults.
type Options struct {
	// Prefix is prepended to a levee queue's name to form its SQS queue
	// name. Default "".
	Prefix string
	// DLQSuffix is appended to the SQS queue name to form its DLQ's name.
	// Default "-dlq".
	DLQSuffix string
	// ScanVisibility is how long a DLQ scan holds the messages it reads
	// (they are released when the scan ends; this bounds how long a crashed
	// scan hides them). Default 30s.
	ScanVisibility time.Duration
	// ScanWait is the long-poll wait of each DLQ receive. SQS's short poll
	// samples a subset of its servers and may answer empty while messages
	// exist; a long poll asks them all. Default 1s; negative: short poll
	// (for emulators, which are exact).
	ScanWait time.Duration
	// TargetRefresh bounds how stale the target states Claim applies may
	// be when another process changed them (this process's SetTarget
	// applies at once). Default 5s.
	TargetRefresh time.Duration
	// Clock is the real clock leases are timed by. Default time.Now.
	Clock func() time.Time
}

// Backend is a queue.Backend on SQS. It is safe for concurrent use. It
// holds the receipt handles of the leases it granted; nothing else is
// kept outside SQS.
type Backend struct {
	api  API
	opts Options

	mu      sync.Mutex
	urls    map[string]queueURLs    // levee queue name -> URLs
	leases  map[int64]*lease        // token -> lease
	next    int64                   // last token granted
	lastSeq int64                   // last dead-letter Seq assigned
	targets map[string]*targetCache // levee queue name -> cache
	scanMu  sync.Mutex              // one DLQ scan at a time
}

type queueURLs struct{ main, dlq string }

type lease struct {
	queue, id string
	receipt   string
	deadline  time.Time // on opts.Clock
	// claimNow and claimReal relate the caller's clock to the real one:
	// the caller's now is claimNow + (Clock() - claimReal).
	claimNow, claimReal time.Time
	env                 envelope
}

type targetCache struct {
	states  map[string]queue.TargetState
	fetched time.Time // on opts.Clock
}

// envelope is the SQS message body.
type envelope struct {
	ID          string          `json:"id"`
	Target      string          `json:"target"`
	Payload     []byte          `json:"payload,omitempty"`
	Headers     http.Header     `json:"headers,omitempty"`
	DedupeID    string          `json:"dedupe_id,omitempty"`
	EnqueuedAt  time.Time       `json:"enqueued_at"`
	AvailableAt time.Time       `json:"available_at"`
	Attempts    int             `json:"attempts,omitempty"`
	History     []queue.Attempt `json:"history,omitempty"`
	Reason      queue.Reason    `json:"reason,omitempty"`
	DeadAt      time.Time       `json:"dead_at,omitzero"`
	Seq         int64           `json:"seq,omitempty"`
}

// New returns a Backend on client. It makes no request; queue URLs are
// looked up (GetQueueUrl) on first use and kept.
func New(client API, opts Options) (*Backend, error) {
	if client == nil {
		return nil, errors.New("sqsqueue: client is nil")
	}
	if opts.DLQSuffix == "" {
		opts.DLQSuffix = "-dlq"
	}
	if opts.ScanVisibility == 0 {
		opts.ScanVisibility = 30 * time.Second
	}
	if opts.ScanVisibility < time.Second || opts.ScanVisibility > 12*time.Hour {
		return nil, fmt.Errorf("sqsqueue: Options.ScanVisibility %v is outside SQS's 1s..12h", opts.ScanVisibility)
	}
	if opts.ScanWait == 0 {
		opts.ScanWait = time.Second
	}
	if opts.ScanWait > 20*time.Second {
		return nil, fmt.Errorf("sqsqueue: Options.ScanWait %v is above SQS's 20s", opts.ScanWait)
	}
	if opts.TargetRefresh == 0 {
		opts.TargetRefresh = 5 * time.Second
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	return &Backend{
		api: client, opts: opts,
		urls: map[string]queueURLs{}, leases: map[int64]*lease{}, targets: map[string]*targetCache{},
	}, nil
}

// urlsOf returns the SQS queue URLs of a levee queue.
func (b *Backend) urlsOf(ctx context.Context, name string) (queueURLs, error) {
	b.mu.Lock()
	u, ok := b.urls[name]
	b.mu.Unlock()
	if ok {
		return u, nil
	}
	main := b.opts.Prefix + name
	if strings.HasSuffix(main, ".fifo") {
		return queueURLs{}, fmt.Errorf("sqsqueue: queue %q: FIFO queues are not supported", main)
	}
	get := func(n string) (string, error) {
		out, err := b.api.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(n)})
		if err != nil {
			return "", fmt.Errorf("sqsqueue: queue URL of %q: %w", n, err)
		}
		return aws.ToString(out.QueueUrl), nil
	}
	var err error
	if u.main, err = get(main); err != nil {
		return u, err
	}
	if u.dlq, err = get(main + b.opts.DLQSuffix); err != nil {
		return u, err
	}
	b.mu.Lock()
	b.urls[name] = u
	b.mu.Unlock()
	return u, nil
}

// seconds converts d to whole seconds, rounded up, within [0, max].
func seconds(d time.Duration, maxSec int32) int32 {
	if d <= 0 {
		return 0
	}
	s := math.Ceil(d.Seconds())
	if s > float64(maxSec) {
		return maxSec
	}
	return int32(s)
}

// enqueueDelay is the SQS delay of a message available d after the
// enqueue's Now: none below a second (a message due within a second is
// due, as in Claim), else d rounded up, at most 15 minutes.
func enqueueDelay(d time.Duration) int32 {
	if d < time.Second {
		return 0
	}
	return seconds(d, maxDelay)
}

const (
	maxDelay      = 900   // SQS's DelaySeconds limit
	maxVisibility = 43200 // SQS's visibility timeout limit (12 h)
	maxBatch      = 10    // SQS's batch and receive limit
)

func encode(e *envelope) (string, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return "", fmt.Errorf("sqsqueue: encoding message %q: %w", e.ID, err)
	}
	return string(b), nil
}

func decode(body string) (envelope, error) {
	var e envelope
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		return e, err
	}
	if e.ID == "" {
		return e, errors.New("no message id")
	}
	return e, nil
}

// Enqueue implements queue.Backend with SendMessageBatch, ten messages per
// request. Duplicates are recognized within the call only (see the package
// documentation).
func (b *Backend) Enqueue(ctx context.Context, req queue.EnqueueRequest) ([]queue.EnqueueResult, error) {
	res := make([]queue.EnqueueResult, len(req.Messages))
	byDedupe := map[string]string{}
	byID := map[string]bool{}
	type pending struct {
		i    int
		body string
		q    string
	}
	var send []pending
	for i, m := range req.Messages {
		key := m.Queue + "\x00" + m.DedupeID
		if first, ok := byDedupe[key]; ok && m.DedupeID != "" {
			res[i] = queue.EnqueueResult{ID: first, Duplicate: true}
			continue
		}
		if byID[m.Queue+"\x00"+m.ID] {
			res[i] = queue.EnqueueResult{ID: m.ID, Duplicate: true}
			continue
		}
		if m.DedupeID != "" {
			byDedupe[key] = m.ID
		}
		byID[m.Queue+"\x00"+m.ID] = true
		body, err := encode(&envelope{ID: m.ID, Target: m.Target, Payload: m.Payload, Headers: m.Headers,
			DedupeID: m.DedupeID, EnqueuedAt: m.EnqueuedAt, AvailableAt: m.EnqueuedAt})
		if err != nil {
			return nil, err
		}
		res[i] = queue.EnqueueResult{ID: m.ID}
		send = append(send, pending{i: i, body: body, q: m.Queue})
	}
	// One batch per run of messages to the same queue, at most ten each.
	for len(send) > 0 {
		n := 1
		for n < len(send) && n < maxBatch && send[n].q == send[0].q {
			n++
		}
		batch := send[:n]
		send = send[n:]
		u, err := b.urlsOf(ctx, batch[0].q)
		if err != nil {
			return nil, err
		}
		entries := make([]types.SendMessageBatchRequestEntry, len(batch))
		for j, p := range batch {
			m := req.Messages[p.i]
			entries[j] = types.SendMessageBatchRequestEntry{
				Id: aws.String(strconv.Itoa(j)), MessageBody: aws.String(p.body),
				DelaySeconds: enqueueDelay(m.EnqueuedAt.Sub(req.Now)),
			}
		}
		out, err := b.api.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: aws.String(u.main), Entries: entries})
		if err != nil {
			return nil, fmt.Errorf("sqsqueue: enqueue: %w", err)
		}
		if len(out.Failed) > 0 {
			f := out.Failed[0]
			return nil, fmt.Errorf("sqsqueue: enqueue: %d of %d messages not stored (first: %s %s)",
				len(out.Failed), len(batch), aws.ToString(f.Code), aws.ToString(f.Message))
		}
	}
	return res, nil
}

// Claim implements queue.Backend with ReceiveMessage (up to ten messages a
// request, at most as many requests as Limit needs, fewer when SQS answers
// less than asked).
// Messages not due yet, of excluded or disabled targets, or over their
// target's share are handed back as fresh copies.
func (b *Backend) Claim(ctx context.Context, req queue.ClaimRequest) ([]queue.Claimed, error) {
	if req.Limit <= 0 {
		return nil, nil
	}
	u, err := b.urlsOf(ctx, req.Queue)
	if err != nil {
		return nil, err
	}
	disabled, err := b.disabledTargets(ctx, req.Queue, u)
	if err != nil {
		return nil, err
	}
	excluded := map[string]bool{}
	for _, t := range req.Exclude {
		excluded[t] = true
	}
	perTarget := map[string]int{}
	vis := seconds(req.LeaseUntil.Sub(req.Now), maxVisibility)
	b.pruneLeases()
	var out []queue.Claimed
	// At most as many receives as Limit needs: a backlog of messages that
	// are all handed back (an excluded target's) must not keep one Claim
	// receiving.
	for rounds := (req.Limit + maxBatch - 1) / maxBatch; rounds > 0 && len(out) < req.Limit; rounds-- {
		want := int32(min(req.Limit-len(out), maxBatch))
		r, err := b.api.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl: aws.String(u.main), MaxNumberOfMessages: want, VisibilityTimeout: vis,
			MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameApproximateReceiveCount},
		})
		if err != nil {
			return out, fmt.Errorf("sqsqueue: claim: %w", err)
		}
		realNow := b.opts.Clock()
		for _, m := range r.Messages {
			env, err := decode(aws.ToString(m.Body))
			if err != nil {
				continue // left for SQS's redrive; see the package documentation
			}
			if !env.DeadAt.IsZero() {
				// Moved back from the DLQ natively (Redrive): a replay,
				// with attempts and history reset as Requeue does.
				env = envelope{ID: env.ID, Target: env.Target, Payload: env.Payload, Headers: env.Headers,
					DedupeID: env.DedupeID, EnqueuedAt: env.EnqueuedAt, AvailableAt: req.Now}
			}
			// Due by the caller's clock. A message due within a second
			// counts as due: SQS's delays are whole seconds, so handing it
			// back would hide it for a second (and a claim whose Now was
			// read just before an Enqueue would do that to every message).
			due := env.AvailableAt.Sub(req.Now) < time.Second
			if !due || disabled[env.Target] || excluded[env.Target] || (req.PerTarget > 0 && perTarget[env.Target] >= req.PerTarget) {
				var delay int32 // due: visible again at once
				if !due {
					delay = seconds(env.AvailableAt.Sub(req.Now), maxDelay)
				}
				if err := b.handBack(ctx, u.main, m, env, delay); err != nil {
					return out, err
				}
				continue
			}
			perTarget[env.Target]++
			received, _ := strconv.Atoi(m.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)])
			lost := max(received-1, 0)
			b.mu.Lock()
			b.next++
			tok := b.next
			b.leases[tok] = &lease{queue: req.Queue, id: env.ID, receipt: aws.ToString(m.ReceiptHandle),
				deadline: realNow.Add(time.Duration(vis) * time.Second), claimNow: req.Now, claimReal: realNow, env: env}
			b.mu.Unlock()
			out = append(out, queue.Claimed{
				Message: queue.Message{ID: env.ID, Queue: req.Queue, Target: env.Target, Payload: env.Payload,
					Headers: env.Headers, DedupeID: env.DedupeID, EnqueuedAt: env.EnqueuedAt},
				Token: tok, Attempt: env.Attempts + lost + 1, History: env.History,
			})
		}
		if len(r.Messages) < int(want) {
			break
		}
	}
	return out, nil
}

// handBack replaces a received message with a fresh copy, hidden for
// delay seconds, so that its receive count keeps counting lost leases
// only.
func (b *Backend) handBack(ctx context.Context, url string, m types.Message, env envelope, delay int32) error {
	body, err := encode(&env)
	if err != nil {
		return err
	}
	if _, err := b.api.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(url), MessageBody: aws.String(body),
		DelaySeconds: delay}); err != nil {
		return fmt.Errorf("sqsqueue: claim: handing back %q: %w", env.ID, err)
	}
	if _, err := b.api.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle}); err != nil {
		return fmt.Errorf("sqsqueue: claim: handing back %q: %w", env.ID, err)
	}
	return nil
}

// pruneLeases forgets lapsed leases that were never settled (their
// messages are SQS's again), so that the map stays bounded.
func (b *Backend) pruneLeases() {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.opts.Clock()
	for tok, l := range b.leases {
		if !now.Before(l.deadline) {
			delete(b.leases, tok)
		}
	}
}

// take returns the live lease for token, or queue.ErrLeaseLost (dropping
// a lapsed one).
func (b *Backend) take(q, id string, token int64) (*lease, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.leases[token]
	if !ok || l.queue != q || l.id != id {
		return nil, queue.ErrLeaseLost
	}
	if !b.opts.Clock().Before(l.deadline) {
		delete(b.leases, token)
		return nil, queue.ErrLeaseLost
	}
	return l, nil
}

func (b *Backend) drop(token int64) {
	b.mu.Lock()
	delete(b.leases, token)
	b.mu.Unlock()
}

// deleteLeased deletes the leased SQS message; an invalid receipt handle
// means the lease is gone.
func (b *Backend) deleteLeased(ctx context.Context, url string, l *lease, op string) error {
	_, err := b.api.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: aws.String(l.receipt)})
	var invalid *types.ReceiptHandleIsInvalid
	if errors.As(err, &invalid) {
		return queue.ErrLeaseLost
	}
	if err != nil {
		return fmt.Errorf("sqsqueue: %s: %w", op, err)
	}
	return nil
}

// Ack implements queue.Backend with DeleteMessage.
func (b *Backend) Ack(ctx context.Context, q, id string, token int64) error {
	l, err := b.take(q, id, token)
	if err != nil {
		return err
	}
	u, err := b.urlsOf(ctx, q)
	if err != nil {
		return err
	}
	if err := b.deleteLeased(ctx, u.main, l, "ack"); err != nil {
		if errors.Is(err, queue.ErrLeaseLost) {
			b.drop(token)
		}
		return err
	}
	b.drop(token)
	return nil
}

// callerNow is the caller's clock now, from the lease's claim.
func (b *Backend) callerNow(l *lease) time.Time {
	return l.claimNow.Add(b.opts.Clock().Sub(l.claimReal))
}

// Nack implements queue.Backend: a copy carrying n.Attempts and
// n.History, delayed until n.AvailableAt (at most 15 minutes per hop),
// then DeleteMessage of the leased one.
func (b *Backend) Nack(ctx context.Context, n queue.Nack) error {
	l, err := b.take(n.Queue, n.ID, n.Token)
	if err != nil {
		return err
	}
	u, err := b.urlsOf(ctx, n.Queue)
	if err != nil {
		return err
	}
	env := l.env
	env.Attempts, env.History, env.AvailableAt = n.Attempts, n.History, n.AvailableAt
	body, err := encode(&env)
	if err != nil {
		return err
	}
	if _, err := b.api.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(u.main), MessageBody: aws.String(body),
		DelaySeconds: seconds(n.AvailableAt.Sub(b.callerNow(l)), maxDelay)}); err != nil {
		return fmt.Errorf("sqsqueue: nack: %w", err)
	}
	err = b.deleteLeased(ctx, u.main, l, "nack")
	b.drop(n.Token)
	if errors.Is(err, queue.ErrLeaseLost) {
		// The copy is sent; the old message went to another worker:
		// delivered twice, never lost.
		return nil
	}
	return err
}

// Bury implements queue.Backend: a copy carrying the reason, the attempt
// count and every attempt's record goes to the DLQ, then the leased
// message is deleted.
func (b *Backend) Bury(ctx context.Context, bu queue.Burial) error {
	l, err := b.take(bu.Queue, bu.ID, bu.Token)
	if err != nil {
		return err
	}
	u, err := b.urlsOf(ctx, bu.Queue)
	if err != nil {
		return err
	}
	env := l.env
	env.Attempts, env.History, env.Reason, env.DeadAt = bu.Attempts, bu.History, bu.Reason, bu.At
	b.mu.Lock()
	env.Seq = max(bu.At.UnixNano(), b.lastSeq+1)
	b.lastSeq = env.Seq
	b.mu.Unlock()
	body, err := encode(&env)
	if err != nil {
		return err
	}
	if _, err := b.api.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(u.dlq), MessageBody: aws.String(body)}); err != nil {
		return fmt.Errorf("sqsqueue: bury: %w", err)
	}
	err = b.deleteLeased(ctx, u.main, l, "bury")
	b.drop(bu.Token)
	if errors.Is(err, queue.ErrLeaseLost) {
		return nil // dead-lettered; the old message may be delivered once more
	}
	return err
}

// dead is a DLQ message held by a scan.
type dead struct {
	msg     queue.DeadMessage
	receipt *string
}

// scan receives every message of q's DLQ, sorted by Seq, hands them to fn
// (which sets receipt to nil on those it removed) and releases the others.
// It returns fn's error after releasing.
func (b *Backend) scan(ctx context.Context, q string, fn func(u queueURLs, ds []dead) error) error {
	u, err := b.urlsOf(ctx, q)
	if err != nil {
		return err
	}
	b.scanMu.Lock()
	defer b.scanMu.Unlock()
	var ds []dead
	wait := int32(0)
	if b.opts.ScanWait > 0 {
		wait = seconds(b.opts.ScanWait, 20)
	}
	for {
		r, err := b.api.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl: aws.String(u.dlq), MaxNumberOfMessages: maxBatch, WaitTimeSeconds: wait,
			VisibilityTimeout: seconds(b.opts.ScanVisibility, maxVisibility),
			MessageSystemAttributeNames: []types.MessageSystemAttributeName{
				types.MessageSystemAttributeNameApproximateReceiveCount, types.MessageSystemAttributeNameSentTimestamp},
		})
		if err != nil {
			b.release(u.dlq, ds)
			return fmt.Errorf("sqsqueue: reading the DLQ: %w", err)
		}
		if len(r.Messages) == 0 {
			break
		}
		for _, m := range r.Messages {
			ds = append(ds, dead{msg: deadMessage(q, m), receipt: m.ReceiptHandle})
		}
	}
	slices.SortFunc(ds, func(x, y dead) int {
		if c := cmpInt(x.msg.Seq, y.msg.Seq); c != 0 {
			return c
		}
		return strings.Compare(x.msg.ID, y.msg.ID)
	})
	err = fn(u, ds)
	b.release(u.dlq, ds)
	return err
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// release makes the scanned messages not removed visible again. It runs
// on a context of its own: a canceled scan must still release.
func (b *Backend) release(url string, ds []dead) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, d := range ds {
		if d.receipt == nil {
			continue
		}
		// A failure leaves the message hidden until ScanVisibility ends.
		_, _ = b.api.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
			QueueUrl: aws.String(url), ReceiptHandle: d.receipt, VisibilityTimeout: 0})
	}
}

// deadMessage decodes a DLQ message, including ones SQS moved itself.
func deadMessage(q string, m types.Message) queue.DeadMessage {
	env, err := decode(aws.ToString(m.Body))
	sent, _ := strconv.ParseInt(m.Attributes[string(types.MessageSystemAttributeNameSentTimestamp)], 10, 64)
	if err != nil {
		return queue.DeadMessage{Message: queue.Message{ID: aws.ToString(m.MessageId), Queue: q, Payload: []byte(aws.ToString(m.Body))},
			Reason: ReasonUndecodable, Seq: time.UnixMilli(sent).UnixNano()}
	}
	d := queue.DeadMessage{
		Message: queue.Message{ID: env.ID, Queue: q, Target: env.Target, Payload: env.Payload, Headers: env.Headers,
			DedupeID: env.DedupeID, EnqueuedAt: env.EnqueuedAt},
		Seq: env.Seq, Reason: env.Reason, Attempts: env.Attempts, History: env.History, DeadAt: env.DeadAt,
	}
	if d.Reason == "" {
		// Moved by SQS's redrive policy: levee never buried it.
		d.Reason = ReasonMaxReceives
		d.Seq = time.UnixMilli(sent).UnixNano()
	}
	if len(env.History) > 0 {
		d.FirstFailure = env.History[0].FailedAt
		d.LastFailure = env.History[len(env.History)-1].FailedAt
	}
	return d
}

func matches(f queue.DeadFilter, d *queue.DeadMessage) bool {
	switch {
	case len(f.IDs) > 0 && !slices.Contains(f.IDs, d.ID),
		f.Target != "" && d.Target != f.Target,
		f.Reason != "" && d.Reason != f.Reason,
		!f.DeadBefore.IsZero() && !d.DeadAt.Before(f.DeadBefore),
		!f.DeadAfter.IsZero() && !d.DeadAt.After(f.DeadAfter),
		d.Seq <= f.AfterSeq:
		return false
	}
	return true
}

// ListDead implements queue.Backend by scanning the DLQ.
func (b *Backend) ListDead(ctx context.Context, f queue.DeadFilter) ([]queue.DeadMessage, error) {
	var out []queue.DeadMessage
	err := b.scan(ctx, f.Queue, func(_ queueURLs, ds []dead) error {
		for _, d := range ds {
			if matches(f, &d.msg) {
				out = append(out, d.msg)
				if f.Limit > 0 && len(out) == f.Limit {
					break
				}
			}
		}
		return nil
	})
	return out, err
}

// GetDead implements queue.Backend by scanning the DLQ.
func (b *Backend) GetDead(ctx context.Context, q, id string) (*queue.DeadMessage, error) {
	ds, err := b.ListDead(ctx, queue.DeadFilter{Queue: q, IDs: []string{id}, Limit: 1})
	if err != nil {
		return nil, err
	}
	if len(ds) == 0 {
		return nil, queue.ErrNotFound
	}
	return &ds[0], nil
}

// Requeue implements queue.Backend: each dead message found by a scan is
// sent back to the main queue, available at now with attempts and history
// reset and its ID kept, then deleted from the DLQ.
func (b *Backend) Requeue(ctx context.Context, q string, ids []string, now time.Time) (int, error) {
	n := 0
	err := b.scan(ctx, q, func(u queueURLs, ds []dead) error {
		for i := range ds {
			d := &ds[i]
			if !slices.Contains(ids, d.msg.ID) {
				continue
			}
			body, err := encode(&envelope{ID: d.msg.ID, Target: d.msg.Target, Payload: d.msg.Payload, Headers: d.msg.Headers,
				DedupeID: d.msg.DedupeID, EnqueuedAt: d.msg.EnqueuedAt, AvailableAt: now})
			if err != nil {
				return err
			}
			if _, err := b.api.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(u.main), MessageBody: aws.String(body)}); err != nil {
				return fmt.Errorf("sqsqueue: requeue: %w", err)
			}
			if _, err := b.api.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(u.dlq), ReceiptHandle: d.receipt}); err != nil {
				return fmt.Errorf("sqsqueue: requeue: deleting %q from the DLQ: %w", d.msg.ID, err)
			}
			d.receipt = nil
			n++
		}
		return nil
	})
	return n, err
}

// DeleteDead implements queue.Backend: the dead messages a scan finds
// matching f are deleted.
func (b *Backend) DeleteDead(ctx context.Context, f queue.DeadFilter) (int, error) {
	n := 0
	err := b.scan(ctx, f.Queue, func(u queueURLs, ds []dead) error {
		for i := range ds {
			d := &ds[i]
			if !matches(f, &d.msg) || (f.Limit > 0 && n == f.Limit) {
				continue
			}
			if _, err := b.api.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(u.dlq), ReceiptHandle: d.receipt}); err != nil {
				return fmt.Errorf("sqsqueue: delete dead: %w", err)
			}
			d.receipt = nil
			n++
		}
		return nil
	})
	return n, err
}

// Redrive starts SQS's own move of every message in q's DLQ back to q
// (StartMessageMoveTask), at most perSecond messages a second (0: SQS's
// own pace), and returns the task handle. Moved messages keep their
// envelope; Claim treats them as replays (attempts and history reset, as
// Requeue). Unlike Requeue it moves the whole DLQ without reading it.
func (b *Backend) Redrive(ctx context.Context, q string, perSecond int32) (string, error) {
	u, err := b.urlsOf(ctx, q)
	if err != nil {
		return "", err
	}
	arn := func(url string) (string, error) {
		out, err := b.api.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url),
			AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameQueueArn}})
		if err != nil {
			return "", fmt.Errorf("sqsqueue: redrive: queue ARN: %w", err)
		}
		return out.Attributes[string(types.QueueAttributeNameQueueArn)], nil
	}
	src, err := arn(u.dlq)
	if err != nil {
		return "", err
	}
	dst, err := arn(u.main)
	if err != nil {
		return "", err
	}
	in := &sqs.StartMessageMoveTaskInput{SourceArn: aws.String(src), DestinationArn: aws.String(dst)}
	if perSecond > 0 {
		in.MaxNumberOfMessagesPerSecond = aws.Int32(perSecond)
	}
	out, err := b.api.StartMessageMoveTask(ctx, in)
	if err != nil {
		return "", fmt.Errorf("sqsqueue: redrive: %w", err)
	}
	return aws.ToString(out.TaskHandle), nil
}

// Target states are queue tags: key "levee-target:"+hex(sha256(target))[:32],
// value the base64url (unpadded) JSON of the state, within SQS's 256
// characters and its allowed tag characters.
const tagPrefix = "levee-target:"

type tagState struct {
	Target   string    `json:"t"`
	Disabled bool      `json:"d,omitempty"`
	Reason   string    `json:"r,omitempty"`
	Since    time.Time `json:"s"`
}

// parseTag decodes a target-state tag value.
func parseTag(v string) (tagState, error) {
	var ts tagState
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err == nil {
		err = json.Unmarshal(raw, &ts)
	}
	return ts, err
}

func tagKey(target string) string {
	sum := sha256.Sum256([]byte(target))
	return tagPrefix + hex.EncodeToString(sum[:16])
}

// SetTarget implements queue.Backend with TagQueue on the main queue. The
// reason is shortened to fit SQS's 256-character tag value; a target too
// long to fit is an error.
func (b *Backend) SetTarget(ctx context.Context, s queue.TargetState) error {
	u, err := b.urlsOf(ctx, s.Queue)
	if err != nil {
		return err
	}
	ts := tagState{Target: s.Target, Disabled: s.Disabled, Reason: s.Reason, Since: s.Since.UTC()}
	var value string
	for {
		raw, _ := json.Marshal(ts) // plain strings, bools and a time: cannot fail
		value = base64.RawURLEncoding.EncodeToString(raw)
		if len(value) <= 256 {
			break
		}
		if ts.Reason == "" {
			return fmt.Errorf("sqsqueue: set target: target %q is too long for an SQS tag", s.Target)
		}
		ts.Reason = ts.Reason[:len(ts.Reason)*3/4]
	}
	if _, err := b.api.TagQueue(ctx, &sqs.TagQueueInput{QueueUrl: aws.String(u.main), Tags: map[string]string{tagKey(s.Target): value}}); err != nil {
		return fmt.Errorf("sqsqueue: set target: %w", err)
	}
	b.mu.Lock()
	if c := b.targets[s.Queue]; c != nil {
		c.states[s.Target] = queue.TargetState{Queue: s.Queue, Target: s.Target, Disabled: ts.Disabled, Reason: ts.Reason, Since: ts.Since}
	}
	b.mu.Unlock()
	return nil
}

// Targets implements queue.Backend with ListQueueTags.
func (b *Backend) Targets(ctx context.Context, q string) ([]queue.TargetState, error) {
	u, err := b.urlsOf(ctx, q)
	if err != nil {
		return nil, err
	}
	states, err := b.fetchTargets(ctx, q, u)
	if err != nil {
		return nil, err
	}
	out := make([]queue.TargetState, 0, len(states))
	for _, s := range states {
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y queue.TargetState) int { return strings.Compare(x.Target, y.Target) })
	return out, nil
}

func (b *Backend) fetchTargets(ctx context.Context, q string, u queueURLs) (map[string]queue.TargetState, error) {
	out, err := b.api.ListQueueTags(ctx, &sqs.ListQueueTagsInput{QueueUrl: aws.String(u.main)})
	if err != nil {
		return nil, fmt.Errorf("sqsqueue: target states: %w", err)
	}
	states := map[string]queue.TargetState{}
	for k, v := range out.Tags {
		if !strings.HasPrefix(k, tagPrefix) {
			continue
		}
		ts, err := parseTag(v)
		if err != nil {
			return nil, fmt.Errorf("sqsqueue: target states: tag %s: %w", k, err)
		}
		states[ts.Target] = queue.TargetState{Queue: q, Target: ts.Target, Disabled: ts.Disabled, Reason: ts.Reason, Since: ts.Since}
	}
	b.mu.Lock()
	b.targets[q] = &targetCache{states: maps.Clone(states), fetched: b.opts.Clock()}
	b.mu.Unlock()
	return states, nil
}

// disabledTargets returns q's disabled targets, from a cache at most
// Options.TargetRefresh old.
func (b *Backend) disabledTargets(ctx context.Context, q string, u queueURLs) (map[string]bool, error) {
	b.mu.Lock()
	c := b.targets[q]
	var states map[string]queue.TargetState
	if c != nil && b.opts.Clock().Sub(c.fetched) < b.opts.TargetRefresh {
		states = c.states
	}
	out := map[string]bool{}
	for t, s := range states {
		if s.Disabled {
			out[t] = true
		}
	}
	b.mu.Unlock()
	if states != nil {
		return out, nil
	}
	fetched, err := b.fetchTargets(ctx, q, u)
	if err != nil {
		return nil, err
	}
	for t, s := range fetched {
		if s.Disabled {
			out[t] = true
		}
	}
	return out, nil
}
