package lambda

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/leveehq/levee/idempotency"
)

// ErrSkipped is reported (through BatchOptions.OnRecordError) for a record
// that was reported failed without running: an earlier record of its
// FIFO message group (or of its stream shard) failed in the same batch,
// or the invocation's margin had arrived.
var ErrSkipped = errors.New("lambda: record not processed")

// PanicError is a batch record's error when its handler panicked: the
// record is reported failed and its key released, and the batch goes on.
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
}

// Error includes the panic value.
func (e *PanicError) Error() string {
	return fmt.Sprintf("lambda: the record's handler panicked: %v", e.Value)
}

// BatchOptions configure the batch handlers (NewSQSHandler,
// NewKinesisHandler, NewDynamoDBHandler).
type BatchOptions struct {
	Config
	// KeyPath, if set, is a JMESPath expression over the record's body
	// parsed as JSON (SQS: body; Kinesis: data; DynamoDB Streams: the
	// record's "dynamodb" section) selecting its idempotency key — for
	// producers that may send one logical message twice under two message
	// ids. A record whose body is not JSON, or where it selects nothing,
	// fails (and reaches the queue's dead-letter queue after its
	// redeliveries). Default: the record's own id (SQS messageId, stream
	// eventID), which dedupes redeliveries.
	KeyPath string
	// ValidationPath, if set, is a JMESPath expression over the body
	// selecting what must be the same on a duplicate; default the whole
	// body (canonical JSON when it is JSON). A duplicate that differs
	// fails with idempotency.ErrMismatch without running.
	ValidationPath string
	// Scope names the consumer; keys are scoped by it. Default "".
	Scope string
	// OnRecordError, if set, is called for every record reported failed,
	// with its item identifier and why: the handler's error, an
	// idempotency error (ErrInFlight, ErrMismatch, ErrOutcomeUnknown,
	// ErrStoreUnavailable), a *DeadlineError, a *PanicError, ErrSkipped,
	// ErrNoKey or ErrEvent. It must be safe for concurrent use.
	OnRecordError func(ctx context.Context, id string, err error)
}

// batch is the record loop shared by SQS, Kinesis and DynamoDB Streams.
type batch struct {
	cfg     Config
	sel     selector // key is nil when records are keyed by id
	onError func(ctx context.Context, id string, err error)
}

func newBatch(who string, opts BatchOptions) (batch, error) {
	if err := opts.validate(who); err != nil {
		return batch{}, err
	}
	sel, err := newSelector(opts.Scope, opts.KeyPath, opts.ValidationPath)
	if err != nil {
		return batch{}, err
	}
	return batch{cfg: opts.Config, sel: sel, onError: opts.OnRecordError}, nil
}

// record is one record as the loop sees it.
type record struct {
	id    string // item identifier for the partial batch response
	key   string // default idempotency key (record id)
	group string // ordering group (FIFO message group, stream shard)
	body  []byte
}

// process runs fn on each record in order and returns the item
// identifiers of the records that did not succeed. With ordered, a
// failure fails the later records of its group without running them.
func (b *batch) process(ctx context.Context, recs []record, ordered bool, fn func(ctx context.Context, i int) error) []string {
	inv := b.cfg.begin(ctx)
	var failed []string
	var failedGroups map[string]bool
	out := false // the margin arrived: nothing more runs
	for i := range recs {
		r := &recs[i]
		var err error
		switch {
		case out:
			err = ErrSkipped
		case ordered && failedGroups[r.group]:
			err = fmt.Errorf("%w: an earlier record of message group %q failed in this batch", ErrSkipped, r.group)
		case !inv.guardAt.IsZero() && !time.Now().Before(inv.guardAt):
			out = true
			err = fmt.Errorf("%w: the invocation's deadline is near", ErrSkipped)
		default:
			err = b.one(ctx, &inv, r, func(ctx context.Context) error { return fn(ctx, i) })
			if errors.Is(err, ErrDeadline) {
				out = true
			}
		}
		if err == nil {
			continue
		}
		failed = append(failed, r.id)
		if ordered {
			if failedGroups == nil {
				failedGroups = make(map[string]bool)
			}
			failedGroups[r.group] = true
		}
		if b.onError != nil {
			b.onError(ctx, r.id, err)
		}
	}
	return failed
}

// one runs one record under its key. Success, a replay, and a success
// whose record could not be stored (it did take effect) are nil. A panic
// in fn (the engine has released the key by then) is the record's error,
// a *PanicError.
func (b *batch) one(ctx context.Context, inv *invocation, r *record, fn func(context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("lambda: record %s: %w", r.id, &PanicError{Value: p})
		}
	}()
	key, fp, err := b.keyOf(r)
	if err != nil {
		return err
	}
	res, err := inv.engine.Do(ctx, key, fp, func(ctx context.Context) ([]byte, error) {
		return run(ctx, inv, func(ctx context.Context) ([]byte, error) {
			if err := fn(ctx); err != nil {
				return nil, err
			}
			return []byte{}, nil
		})
	})
	if err != nil && res.Value == nil {
		return fmt.Errorf("lambda: record %s: %w", r.id, err)
	}
	return nil
}

// keyOf returns the record's scoped key and fingerprint.
func (b *batch) keyOf(r *record) (string, idempotency.Fingerprint, error) {
	var doc any
	if b.sel.key != nil || b.sel.validation != nil {
		if err := decodeJSON(r.body, &doc); err != nil {
			return "", idempotency.Fingerprint{}, fmt.Errorf("%w: record %s: the body is not JSON: %v", ErrEvent, r.id, err)
		}
	}
	var k []byte
	if b.sel.key != nil {
		var err error
		if k, err = b.sel.key.search(doc); err != nil {
			return "", idempotency.Fingerprint{}, err
		}
		if k == nil {
			return "", idempotency.Fingerprint{}, fmt.Errorf("%w (KeyPath %q, record %s)", ErrNoKey, b.sel.key.src, r.id)
		}
	} else {
		k = []byte(r.key)
	}
	var v []byte
	if b.sel.validation != nil {
		var err error
		if v, err = b.sel.validation.search(doc); err != nil {
			return "", idempotency.Fingerprint{}, err
		}
	} else {
		fp := idempotency.FingerprintOf(r.body)
		v = fp[:]
	}
	return idempotency.ScopedKey(b.sel.scope, "", string(k)), fingerprint(k, v), nil
}

// SQSHandler processes SQS batches record by record with per-record
// idempotency and partial batch responses (the event source mapping must
// have ReportBatchItemFailures on). It is safe for concurrent use.
type SQSHandler struct {
	b  batch
	fn func(context.Context, events.SQSMessage) error
}

// NewSQSHandler returns an SQSHandler running fn once per message key. It
// fails when opts.Store is nil or an expression does not compile
// (wrapping ErrExpression).
func NewSQSHandler(fn func(context.Context, events.SQSMessage) error, opts BatchOptions) (*SQSHandler, error) {
	b, err := newBatch("NewSQSHandler", opts)
	if err != nil {
		return nil, err
	}
	return &SQSHandler{b: b, fn: fn}, nil
}

// Handle processes ev in order and lists in BatchItemFailures exactly the
// messages that did not succeed, so that SQS deletes the others and
// redelivers only those. Per message:
//   - new: fn runs; success marks its key done; an error or a panic (a
//     *PanicError) releases the key, so the redelivery runs fn again — a
//     failed message is never marked done;
//   - already done (a redelivery, or a duplicate under KeyPath): fn does
//     not run, and the message succeeds;
//   - in flight in another invocation, held after an unknown outcome, a
//     mismatching duplicate, a store failure, no key: failed, fn not run;
//   - fn still running at the invocation's margin: failed, its key held
//     (idempotency.StateUnknown), and the messages after it fail without
//     running;
//   - FIFO queues (an eventSourceARN ending in .fifo, or a MessageGroupId
//     attribute): after the first failure in a message group, the group's
//     later messages in the batch fail without running, keeping order.
//
// The error is always nil: every failure is an item of the response.
func (h *SQSHandler) Handle(ctx context.Context, ev events.SQSEvent) (events.SQSEventResponse, error) {
	recs := make([]record, len(ev.Records))
	fifo := false
	for i, m := range ev.Records {
		g := m.Attributes["MessageGroupId"]
		if g != "" || strings.HasSuffix(m.EventSourceARN, ".fifo") {
			fifo = true
		}
		recs[i] = record{id: m.MessageId, key: m.MessageId, group: g, body: []byte(m.Body)}
	}
	failed := h.b.process(ctx, recs, fifo, func(ctx context.Context, i int) error { return h.fn(ctx, ev.Records[i]) })
	resp := events.SQSEventResponse{BatchItemFailures: make([]events.SQSBatchItemFailure, len(failed))}
	for i, id := range failed {
		resp.BatchItemFailures[i].ItemIdentifier = id
	}
	return resp, nil
}

// KinesisHandler processes Kinesis Data Streams batches with per-record
// idempotency and partial batch responses. A batch comes from one shard,
// whose order Lambda keeps by resuming at the lowest failed sequence
// number: after the first failure, the later records fail without
// running. It is safe for concurrent use.
type KinesisHandler struct {
	b  batch
	fn func(context.Context, events.KinesisEventRecord) error
}

// NewKinesisHandler returns a KinesisHandler running fn once per record
// key (default its eventID; KeyPath looks into the record's data). Errors
// as NewSQSHandler's.
func NewKinesisHandler(fn func(context.Context, events.KinesisEventRecord) error, opts BatchOptions) (*KinesisHandler, error) {
	b, err := newBatch("NewKinesisHandler", opts)
	if err != nil {
		return nil, err
	}
	return &KinesisHandler{b: b, fn: fn}, nil
}

// Handle is SQSHandler.Handle for a Kinesis batch; the item identifiers
// are sequence numbers. The error is always nil.
func (h *KinesisHandler) Handle(ctx context.Context, ev events.KinesisEvent) (events.KinesisEventResponse, error) {
	recs := make([]record, len(ev.Records))
	for i, r := range ev.Records {
		recs[i] = record{id: r.Kinesis.SequenceNumber, key: r.EventID, body: r.Kinesis.Data}
	}
	failed := h.b.process(ctx, recs, true, func(ctx context.Context, i int) error { return h.fn(ctx, ev.Records[i]) })
	resp := events.KinesisEventResponse{BatchItemFailures: make([]events.KinesisBatchItemFailure, len(failed))}
	for i, id := range failed {
		resp.BatchItemFailures[i].ItemIdentifier = id
	}
	return resp, nil
}

// DynamoDBHandler processes DynamoDB Streams batches like KinesisHandler
// (one shard, ordered). It is safe for concurrent use.
type DynamoDBHandler struct {
	b  batch
	fn func(context.Context, events.DynamoDBEventRecord) error
}

// NewDynamoDBHandler returns a DynamoDBHandler running fn once per record
// key (default its eventID; KeyPath looks into the record's "dynamodb"
// section, e.g. "Keys.pk.S"). Errors as NewSQSHandler's.
func NewDynamoDBHandler(fn func(context.Context, events.DynamoDBEventRecord) error, opts BatchOptions) (*DynamoDBHandler, error) {
	b, err := newBatch("NewDynamoDBHandler", opts)
	if err != nil {
		return nil, err
	}
	return &DynamoDBHandler{b: b, fn: fn}, nil
}

// Handle is KinesisHandler.Handle for a DynamoDB Streams batch; the item
// identifiers are the records' sequence numbers. A record whose change
// cannot be encoded as JSON fails (ErrEvent). The error is always nil.
func (h *DynamoDBHandler) Handle(ctx context.Context, ev events.DynamoDBEvent) (events.DynamoDBEventResponse, error) {
	recs := make([]record, len(ev.Records))
	for i, r := range ev.Records {
		body, err := json.Marshal(r.Change)
		if err != nil {
			body = nil // keyOf reports it when it needs the body
		}
		recs[i] = record{id: r.Change.SequenceNumber, key: r.EventID, body: body}
	}
	failed := h.b.process(ctx, recs, true, func(ctx context.Context, i int) error { return h.fn(ctx, ev.Records[i]) })
	resp := events.DynamoDBEventResponse{BatchItemFailures: make([]events.DynamoDBBatchItemFailure, len(failed))}
	for i, id := range failed {
		resp.BatchItemFailures[i].ItemIdentifier = id
	}
	return resp, nil
}
