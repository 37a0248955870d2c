package lambda_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
)

// sqsBatch builds a batch from aws-lambda-go's sqs-event.json record,
// one message per (id, group, body).
func sqsBatch(t testing.TB, fifo bool, msgs ...[3]string) events.SQSEvent {
	t.Helper()
	var base events.SQSEvent
	if err := json.Unmarshal(eventFile(t, "sqs-event.json"), &base); err != nil {
		t.Fatal(err)
	}
	tmpl := base.Records[0]
	var ev events.SQSEvent
	for _, m := range msgs {
		r := tmpl
		r.MessageId, r.Body = m[0], m[2]
		r.Attributes = map[string]string{"ApproximateReceiveCount": "1"}
		if fifo {
			r.EventSourceARN = tmpl.EventSourceARN + ".fifo"
			r.Attributes["MessageGroupId"] = m[1]
		}
		ev.Records = append(ev.Records, r)
	}
	return ev
}

func failedIDs(resp events.SQSEventResponse) []string {
	var ids []string
	for _, f := range resp.BatchItemFailures {
		ids = append(ids, f.ItemIdentifier)
	}
	return ids
}

// runs records what the consumer ran, in order.
type runs struct {
	mu  sync.Mutex
	ids []string
}

func (r *runs) add(id string) {
	r.mu.Lock()
	r.ids = append(r.ids, id)
	r.mu.Unlock()
}

func (r *runs) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

func TestSQSBatchReportsExactlyTheFailedIDs(t *testing.T) {
	stores(t, func(t *testing.T, s idempotency.Store, _ *atomic.Int64) {
		var ran runs
		failing := map[string]bool{"m2": true, "m4": true}
		var mu sync.Mutex
		fn := func(_ context.Context, m events.SQSMessage) error {
			ran.add(m.MessageId)
			mu.Lock()
			defer mu.Unlock()
			if failing[m.MessageId] {
				return errors.New("downstream refused")
			}
			return nil
		}
		var reported []string
		h, err := lambda.NewSQSHandler(fn, lambda.BatchOptions{Config: lambda.Config{Store: s},
			OnRecordError: func(_ context.Context, id string, err error) { reported = append(reported, id) }})
		if err != nil {
			t.Fatal(err)
		}
		ev := sqsBatch(t, false, [3]string{"m1", "", `{"n":1}`}, [3]string{"m2", "", `{"n":2}`},
			[3]string{"m3", "", `{"n":3}`}, [3]string{"m4", "", `{"n":4}`}, [3]string{"m5", "", `{"n":5}`})
		resp, err := h.Handle(invocationCtx(t, time.Minute), ev)
		if err != nil {
			t.Fatal(err)
		}
		if got := failedIDs(resp); !slices.Equal(got, []string{"m2", "m4"}) || !slices.Equal(reported, got) {
			t.Fatalf("failures %v (reported %v); want [m2 m4]", got, reported)
		}
		// SQS redelivers the whole batch (say the partial response was
		// lost): the done messages do not run again; m2 is fixed now.
		mu.Lock()
		delete(failing, "m2")
		mu.Unlock()
		resp, _ = h.Handle(invocationCtx(t, time.Minute), ev)
		if got := failedIDs(resp); !slices.Equal(got, []string{"m4"}) {
			t.Fatalf("redelivery failures %v; want [m4]", got)
		}
		if got := ran.list(); !slices.Equal(got, []string{"m1", "m2", "m3", "m4", "m5", "m2", "m4"}) {
			t.Fatalf("ran %v", got)
		}
	})
}

// TestSQSFIFOGroupOrder: after the first failure in a message group, the
// group's later messages fail without running; other groups go on.
func TestSQSFIFOGroupOrder(t *testing.T) {
	var ran runs
	fn := func(_ context.Context, m events.SQSMessage) error {
		ran.add(m.MessageId)
		if m.MessageId == "a2" {
			return errors.New("boom")
		}
		return nil
	}
	var skipped []string
	h, _ := lambda.NewSQSHandler(fn, lambda.BatchOptions{Config: lambda.Config{Store: newMemory()},
		OnRecordError: func(_ context.Context, id string, err error) {
			if errors.Is(err, lambda.ErrSkipped) {
				skipped = append(skipped, id)
			}
		}})
	ev := sqsBatch(t, true, [3]string{"a1", "A", "1"}, [3]string{"b1", "B", "1"}, [3]string{"a2", "A", "2"},
		[3]string{"b2", "B", "2"}, [3]string{"a3", "A", "3"}, [3]string{"a4", "A", "4"}, [3]string{"b3", "B", "3"})
	resp, _ := h.Handle(invocationCtx(t, time.Minute), ev)
	if got := failedIDs(resp); !slices.Equal(got, []string{"a2", "a3", "a4"}) {
		t.Fatalf("failures %v; want [a2 a3 a4]", got)
	}
	if !slices.Equal(skipped, []string{"a3", "a4"}) {
		t.Fatalf("skipped %v; want [a3 a4]", skipped)
	}
	if got := ran.list(); !slices.Equal(got, []string{"a1", "b1", "a2", "b2", "b3"}) {
		t.Fatalf("ran %v", got)
	}
	// The same batch on a standard queue: no group rule.
	ran = runs{}
	std := sqsBatch(t, false, [3]string{"x1", "", "1"}, [3]string{"a2", "", "2"}, [3]string{"x3", "", "3"})
	resp, _ = h.Handle(invocationCtx(t, time.Minute), std)
	if got := failedIDs(resp); !slices.Equal(got, []string{"a2"}) {
		t.Fatalf("standard queue failures %v; want [a2]", got)
	}
}

// TestSQSTimeoutHoldsRecord: the record still running at the margin is
// failed and its key held; the records after it fail without running;
// the redelivery does not run the held record again.
func TestSQSTimeoutHoldsRecord(t *testing.T) {
	stores(t, func(t *testing.T, s idempotency.Store, _ *atomic.Int64) {
		var ran runs
		var slow atomic.Bool
		slow.Store(true)
		stuck := make(chan struct{})
		t.Cleanup(func() { close(stuck) })
		fn := func(ctx context.Context, m events.SQSMessage) error {
			ran.add(m.MessageId)
			if m.MessageId == "m2" && slow.Load() {
				<-stuck // the charge hangs past the deadline
			}
			return nil
		}
		errs := map[string]error{}
		h, _ := lambda.NewSQSHandler(fn, lambda.BatchOptions{Config: lambda.Config{Store: s, DeadlineMargin: 100 * time.Millisecond},
			OnRecordError: func(_ context.Context, id string, err error) { errs[id] = err }})
		ev := sqsBatch(t, false, [3]string{"m1", "", "1"}, [3]string{"m2", "", "2"}, [3]string{"m3", "", "3"})
		resp, _ := h.Handle(invocationCtx(t, 300*time.Millisecond), ev)
		if got := failedIDs(resp); !slices.Equal(got, []string{"m2", "m3"}) {
			t.Fatalf("failures %v; want [m2 m3]", got)
		}
		if !errors.Is(errs["m2"], lambda.ErrDeadline) || !errors.Is(errs["m3"], lambda.ErrSkipped) {
			t.Fatalf("errors %v", errs)
		}
		slow.Store(false)
		clear(errs)
		resp, _ = h.Handle(invocationCtx(t, time.Minute), ev)
		if got := failedIDs(resp); !slices.Equal(got, []string{"m2"}) || !errors.Is(errs["m2"], idempotency.ErrOutcomeUnknown) {
			t.Fatalf("redelivery failures %v (%v); want [m2] held", got, errs)
		}
		if got := ran.list(); !slices.Equal(got, []string{"m1", "m2", "m3"}) {
			t.Fatalf("ran %v; m2 must not run again", got)
		}
	})
}

// TestSQSKeyPath: two messages carrying one logical payment (a producer
// retry, two message ids) execute once.
func TestSQSKeyPath(t *testing.T) {
	var n atomic.Int64
	fn := func(context.Context, events.SQSMessage) error { n.Add(1); return nil }
	ev := sqsBatch(t, false, [3]string{"m1", "", `{"payment_id":"p1","amount":5,"sent":1}`},
		[3]string{"m2", "", `{"payment_id":"p1","amount":5,"sent":2}`},
		[3]string{"m3", "", `{"payment_id":"p1","amount":6}`},
		[3]string{"m4", "", `not json`},
		[3]string{"m5", "", `{"amount":6}`})
	errs := map[string]error{}
	h, err := lambda.NewSQSHandler(fn, lambda.BatchOptions{Config: lambda.Config{Store: newMemory()}, KeyPath: "payment_id", ValidationPath: "amount",
		OnRecordError: func(_ context.Context, id string, err error) { errs[id] = err }})
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := h.Handle(context.Background(), ev)
	if got := failedIDs(resp); !slices.Equal(got, []string{"m3", "m4", "m5"}) {
		t.Fatalf("failures %v; want [m3 m4 m5]", got)
	}
	if !errors.Is(errs["m3"], idempotency.ErrMismatch) || !errors.Is(errs["m4"], lambda.ErrEvent) || !errors.Is(errs["m5"], lambda.ErrNoKey) {
		t.Fatalf("errors %v", errs)
	}
	if n.Load() != 1 {
		t.Fatalf("ran %d times, want 1", n.Load())
	}
}

func TestKinesisAndDynamoDBStreams(t *testing.T) {
	var kin events.KinesisEvent
	if err := json.Unmarshal(eventFile(t, "kinesis-event.json"), &kin); err != nil {
		t.Fatal(err)
	}
	// Three records from the test event's two, failing the second.
	third := kin.Records[1]
	third.EventID += "-3"
	third.Kinesis.SequenceNumber += "3"
	kin.Records = append(kin.Records, third)
	bad := kin.Records[1].Kinesis.SequenceNumber
	var ran runs
	kh, err := lambda.NewKinesisHandler(func(_ context.Context, r events.KinesisEventRecord) error {
		ran.add(r.Kinesis.SequenceNumber)
		if r.Kinesis.SequenceNumber == bad {
			return errors.New("boom")
		}
		return nil
	}, lambda.BatchOptions{Config: lambda.Config{Store: newMemory()}})
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := kh.Handle(context.Background(), kin)
	var got []string
	for _, f := range resp.BatchItemFailures {
		got = append(got, f.ItemIdentifier)
	}
	if want := []string{bad, third.Kinesis.SequenceNumber}; !slices.Equal(got, want) {
		t.Fatalf("kinesis failures %v; want %v (the shard's order is kept)", got, want)
	}
	resp, _ = kh.Handle(context.Background(), kin) // the retry from the failed sequence number
	if want := []string{kin.Records[0].Kinesis.SequenceNumber, bad, bad}; !slices.Equal(ran.list(), want) || len(resp.BatchItemFailures) != 2 {
		t.Fatalf("ran %v, failures %v: the first record must not run again", ran.list(), resp.BatchItemFailures)
	}

	var ddbEv events.DynamoDBEvent
	if err := json.Unmarshal(eventFile(t, "dynamodb-event.json"), &ddbEv); err != nil {
		t.Fatal(err)
	}
	// Keyed by eventID (the default): each record once, a redelivery replays.
	// Keyed by the item's key with the keys as validation: the two
	// records of one item are one execution.
	for _, tc := range []struct {
		opts lambda.BatchOptions
		want int64
	}{
		{lambda.BatchOptions{}, 2},
		{lambda.BatchOptions{KeyPath: "Keys.key.S", ValidationPath: "Keys"}, 1},
	} {
		var n atomic.Int64
		tc.opts.Store = newMemory()
		dh, err := lambda.NewDynamoDBHandler(func(_ context.Context, r events.DynamoDBEventRecord) error {
			n.Add(1)
			return nil
		}, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			dresp, _ := dh.Handle(context.Background(), ddbEv)
			if len(dresp.BatchItemFailures) != 0 {
				t.Fatalf("%+v: dynamodb failures %v", tc.opts, dresp.BatchItemFailures)
			}
		}
		if n.Load() != tc.want {
			t.Fatalf("%+v: dynamodb records ran %d times, want %d", tc.opts, n.Load(), tc.want)
		}
	}
}

// TestSQSPanicFailsTheRecord: a handler that panics fails its record only;
// its key is released, so the redelivery runs it again.
func TestSQSPanicFailsTheRecord(t *testing.T) {
	var ran runs
	var calm atomic.Bool
	fn := func(_ context.Context, m events.SQSMessage) error {
		ran.add(m.MessageId)
		if m.MessageId == "m2" && !calm.Load() {
			panic("nil map")
		}
		return nil
	}
	var perr *lambda.PanicError
	h, _ := lambda.NewSQSHandler(fn, lambda.BatchOptions{Config: lambda.Config{Store: newMemory()},
		OnRecordError: func(_ context.Context, id string, err error) { errors.As(err, &perr) }})
	ev := sqsBatch(t, false, [3]string{"m1", "", "1"}, [3]string{"m2", "", "2"}, [3]string{"m3", "", "3"})
	resp, _ := h.Handle(invocationCtx(t, time.Minute), ev)
	if got := failedIDs(resp); !slices.Equal(got, []string{"m2"}) || perr == nil || perr.Value != "nil map" {
		t.Fatalf("failures %v, panic %v", got, perr)
	}
	calm.Store(true)
	resp, _ = h.Handle(invocationCtx(t, time.Minute), ev)
	if got := failedIDs(resp); len(got) != 0 || !slices.Equal(ran.list(), []string{"m1", "m2", "m3", "m2"}) {
		t.Fatalf("failures %v, ran %v", got, ran.list())
	}
}
