package sqsqueue_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"go.uber.org/goleak"

	"github.com/leveehq/levee/internal/goaws"
	"github.com/leveehq/levee/store/sqs/sqsqueue"
)

// ---- goaws, the SQS emulator, behind its AWS JSON front ----

// buildGoaws and startGoaws: internal/goaws, shared with the gateway's
// tests.
func buildGoaws(t testing.TB) string             { return goaws.Build(t) }
func startGoaws(t testing.TB, bin string) string { return goaws.Start(t, bin) }

func newClient(tb testing.TB, endpoint string) *sqs.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tb.Cleanup(tr.CloseIdleConnections)
	return sqs.New(sqs.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("levee-test", "levee-test", ""),
		BaseEndpoint: aws.String(endpoint),
		HTTPClient:   &http.Client{Transport: tr},
	})
}

func randomPrefix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:]) + "-"
}

// createQueues creates prefix+name and its DLQ for each name, with a
// visibility timeout of visSec (goaws ignores a receive's own
// VisibilityTimeout, see fidelity below) and, if maxReceives > 0, a
// redrive policy to the DLQ.
func createQueues(t testing.TB, c *sqs.Client, prefix string, visSec, maxReceives int, names ...string) {
	t.Helper()
	ctx := context.Background()
	for _, n := range names {
		dlq, err := c.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(prefix + n + "-dlq")})
		if err != nil {
			t.Fatalf("CreateQueue: %v", err)
		}
		attrs := map[string]string{"VisibilityTimeout": strconv.Itoa(visSec)}
		if maxReceives > 0 {
			a, err := c.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl,
				AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameQueueArn}})
			if err != nil {
				t.Fatal(err)
			}
			attrs["RedrivePolicy"] = fmt.Sprintf(`{"maxReceiveCount":"%d","deadLetterTargetArn":"%s"}`, maxReceives, a.Attributes["QueueArn"])
		}
		if _, err := c.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(prefix + n), Attributes: attrs}); err != nil {
			t.Fatalf("CreateQueue: %v", err)
		}
	}
}

// ---- what goaws lacks, in process ----

// fidelity wraps the goaws client with what goaws v0.4.5 lacks, each
// declared here rather than skipped:
//
//   - ApproximateReceiveCount: goaws always answers 1; fidelity counts
//     receives per SQS message id and answers the count, as SQS does.
//   - TagQueue / ListQueueTags (target states): kept in memory per queue
//     URL.
//   - StartMessageMoveTask (Redrive): performed in process, by receiving
//     every message of the source queue and sending it to the destination,
//     as SQS's move task does.
//
// goaws also ignores a receive's VisibilityTimeout (it applies the
// queue's), which the tests meet by creating queues with the lease they
// use.
type fidelity struct {
	*sqs.Client
	mu       sync.Mutex
	calls    int // ReceiveMessage calls
	receives map[string]int
	tags     map[string]map[string]string
	arns     map[string]string // ARN -> URL
}

func newFidelity(c *sqs.Client) *fidelity {
	return &fidelity{Client: c, receives: map[string]int{}, tags: map[string]map[string]string{}, arns: map[string]string{}}
}

func (f *fidelity) ReceiveMessage(ctx context.Context, in *sqs.ReceiveMessageInput, optFns ...func(*sqs.Options)) (*sqs.ReceiveMessageOutput, error) {
	out, err := f.Client.ReceiveMessage(ctx, in, optFns...)
	if err != nil {
		return out, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	for i := range out.Messages {
		m := &out.Messages[i]
		id := aws.ToString(m.MessageId)
		f.receives[id]++
		if m.Attributes == nil {
			m.Attributes = map[string]string{}
		}
		m.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)] = strconv.Itoa(f.receives[id])
	}
	return out, nil
}

func (f *fidelity) TagQueue(_ context.Context, in *sqs.TagQueueInput, _ ...func(*sqs.Options)) (*sqs.TagQueueOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := aws.ToString(in.QueueUrl)
	if f.tags[u] == nil {
		f.tags[u] = map[string]string{}
	}
	for k, v := range in.Tags {
		if len(k) > 128 || len(v) > 256 {
			return nil, fmt.Errorf("fidelity: tag %q too long", k)
		}
		f.tags[u][k] = v
	}
	if len(f.tags[u]) > 50 {
		return nil, fmt.Errorf("fidelity: more than 50 tags")
	}
	return &sqs.TagQueueOutput{}, nil
}

func (f *fidelity) ListQueueTags(_ context.Context, in *sqs.ListQueueTagsInput, _ ...func(*sqs.Options)) (*sqs.ListQueueTagsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tags := map[string]string{}
	for k, v := range f.tags[aws.ToString(in.QueueUrl)] {
		tags[k] = v
	}
	return &sqs.ListQueueTagsOutput{Tags: tags}, nil
}

func (f *fidelity) GetQueueAttributes(ctx context.Context, in *sqs.GetQueueAttributesInput, optFns ...func(*sqs.Options)) (*sqs.GetQueueAttributesOutput, error) {
	out, err := f.Client.GetQueueAttributes(ctx, in, optFns...)
	if err == nil {
		if arn := out.Attributes["QueueArn"]; arn != "" {
			f.mu.Lock()
			f.arns[arn] = aws.ToString(in.QueueUrl)
			f.mu.Unlock()
		}
	}
	return out, err
}

func (f *fidelity) StartMessageMoveTask(ctx context.Context, in *sqs.StartMessageMoveTaskInput, _ ...func(*sqs.Options)) (*sqs.StartMessageMoveTaskOutput, error) {
	f.mu.Lock()
	src, dst := f.arns[aws.ToString(in.SourceArn)], f.arns[aws.ToString(in.DestinationArn)]
	f.mu.Unlock()
	if src == "" || dst == "" {
		return nil, fmt.Errorf("fidelity: unknown ARN")
	}
	for {
		r, err := f.Client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{QueueUrl: aws.String(src), MaxNumberOfMessages: 10})
		if err != nil {
			return nil, err
		}
		if len(r.Messages) == 0 {
			return &sqs.StartMessageMoveTaskOutput{TaskHandle: aws.String("fidelity-task")}, nil
		}
		for _, m := range r.Messages {
			if _, err := f.Client.SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: aws.String(dst), MessageBody: m.Body}); err != nil {
				return nil, err
			}
			if _, err := f.Client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(src), ReceiptHandle: m.ReceiptHandle}); err != nil {
				return nil, err
			}
		}
	}
}

var _ sqsqueue.API = (*fidelity)(nil)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
