package gateway

import (
	"context"
	"fmt"
	"net/url"
	"regexp"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/leveehq/levee/internal/config"
	"github.com/leveehq/levee/queue"
	"github.com/leveehq/levee/store/sqs/sqsqueue"
)

// SQSConfig configures the SQS queue store (store/sqs/sqsqueue): queue N
// of queues: is the SQS standard queue Prefix+N, its dead letters
// Prefix+N+DLQSuffix; levee creates neither (deploy/aws does). Credentials
// come from the AWS SDK's default chain (environment, shared files, the
// instance or task role). Standard queues keep no dedupe ids: a queue's
// dedupe window holds only within one enqueue, so webhook dedupe rests on
// the idempotency store (docs/queue.md, "SQS").
type SQSConfig struct {
	// Region is the AWS region of the queues. Required.
	Region string `yaml:"region"`
	// Endpoint overrides the SQS service URL (emulators, VPC endpoints).
	// Default none: the region's endpoint.
	Endpoint string `yaml:"endpoint"`
	// Prefix starts every SQS queue name. Default "".
	Prefix string `yaml:"prefix"`
	// DLQSuffix ends each dead-letter queue's name. Default "-dlq".
	DLQSuffix string `yaml:"dlq_suffix"`
}

// sqsName is what an SQS queue name may hold (at most 80 of them).
var sqsName = regexp.MustCompile(`^[A-Za-z0-9_-]*$`)

const sqsNameMax = 80

func (c *SQSConfig) defaults() { config.Default(&c.DLQSuffix, "-dlq") }

func (c *SQSConfig) validate(r *config.Report, path string) {
	if c.Region == "" {
		r.Bad(config.Join(path, "region"), "required when queue_store.type is sqs, e.g. us-east-1")
	}
	if c.Endpoint != "" {
		if u, err := url.Parse(c.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			r.Bad(config.Join(path, "endpoint"), "must be an absolute http or https URL, got %q", c.Endpoint)
		}
	}
	for _, f := range []struct{ name, v string }{{"prefix", c.Prefix}, {"dlq_suffix", c.DLQSuffix}} {
		if !sqsName.MatchString(f.v) {
			r.Bad(config.Join(path, f.name), "SQS queue names hold only letters, digits, '-' and '_', got %q", f.v)
		}
	}
}

// validateName reports a queue whose SQS names (the queue's and its DLQ's)
// SQS would refuse.
func (c *SQSConfig) validateName(r *config.Report, path, name string) {
	full := c.Prefix + name + c.DLQSuffix
	switch {
	case !sqsName.MatchString(name):
		r.Bad(path, "an SQS queue name holds only letters, digits, '-' and '_', got %q", name)
	case len(full) > sqsNameMax:
		r.Bad(path, "the SQS dead-letter queue name %q is %d characters, more than SQS's %d", full, len(full), sqsNameMax)
	}
}

// openSQSBackend opens the SQS queue store. It makes no request: the
// queues are looked up on first use, so a missing queue is reported by
// the first enqueue or claim.
func openSQSBackend(ctx context.Context, c SQSConfig) (queue.Backend, func() error, error) {
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(c.Region))
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: queue store sqs: %w", err)
	}
	client := awssqs.NewFromConfig(awsCfg, func(o *awssqs.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	})
	bk, err := sqsqueue.New(client, sqsqueue.Options{Prefix: c.Prefix, DLQSuffix: c.DLQSuffix})
	if err != nil {
		return nil, nil, fmt.Errorf("gateway: queue store sqs: %w", err)
	}
	return bk, func() error { return nil }, nil
}
