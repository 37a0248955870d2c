package gateway_test

import (
	"strings"
	"testing"

	"github.com/leveehq/levee/gateway"
)

// queue_store type sqs: a missing region, a bad endpoint, and names SQS
// would refuse (the prefix, a queue's name, a DLQ name over 80
// characters) are reported with the field at fault; a good one gets the
// DLQ suffix's default.
func TestSQSQueueStoreConfig(t *testing.T) {
	conf := func(sqs, name string) string {
		return "queue_store: {type: sqs, sqs: {" + sqs + "}}\n" + strings.Replace(asyncConfig("", "http://127.0.0.1:1/x"), "name: events", "name: "+name, 1)
	}
	cfg, err := gateway.Parse("x.yaml", []byte(conf("region: eu-west-1, prefix: prod-", "events")), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.QueueStore.SQS; s.Region != "eu-west-1" || s.Prefix != "prod-" || s.DLQSuffix != "-dlq" || s.Endpoint != "" {
		t.Fatalf("sqs settings %+v", s)
	}
	for _, c := range []struct{ sqs, name, want string }{
		{"prefix: prod-", "events", "queue_store.sqs.region: required"},
		{"region: us-east-1, endpoint: 'ftp://127.0.0.1:4100'", "events", "queue_store.sqs.endpoint"},
		{"region: us-east-1, prefix: 'prod.'", "events", "queue_store.sqs.prefix"},
		{"region: us-east-1, dlq_suffix: '.dlq'", "events", "queue_store.sqs.dlq_suffix"},
		{"region: us-east-1", "events.v2", "queues[0].name"},
		{"region: us-east-1, prefix: " + strings.Repeat("p", 70), "events", "more than SQS's 80"},
	} {
		_, err := gateway.Parse("x.yaml", []byte(conf(c.sqs, c.name)), noEnv)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sqs {%s}, queue %s: error %v, want it to name %q", c.sqs, c.name, err, c.want)
		}
	}
}
