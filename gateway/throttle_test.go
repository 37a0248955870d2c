package gateway

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/dynamodb"
	"github.com/leveehq/levee/store/memory"
)

type throttledStore struct{ idempotency.Store }

func (throttledStore) Claim(context.Context, idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	return idempotency.ClaimResult{}, &dynamodb.ThrottledError{Op: "claim", Reason: "ProvisionedThroughputExceededException"}
}

// A store throttled after the SDK's retries is counted with its reason,
// besides the store errors.
func TestStoreThrottledIsCountedWithItsReason(t *testing.T) {
	m := NewMetrics("test")
	st := instrumentedStore{Store: throttledStore{memory.New(memory.Options{})}, m: m}
	if _, err := st.Claim(context.Background(), idempotency.ClaimRequest{}); err == nil {
		t.Fatal("no error")
	}
	want := `levee_store_throttled_total{op="claim",reason="ProvisionedThroughputExceededException"} 1`
	if err := testutil.CollectAndCompare(m.storeThrottled, strings.NewReader("# HELP levee_store_throttled_total "+
		"Idempotency store operations the store throttled after the SDK's retries (DynamoDB), by operation and the AWS error code; they also count in levee_store_errors_total.\n"+
		"# TYPE levee_store_throttled_total counter\n"+want+"\n")); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.storeErrors.WithLabelValues("claim")); got != 1 {
		t.Fatalf("store errors %v, want 1", got)
	}
}

func TestDynamoDBLayoutFromYAML(t *testing.T) {
	cfg, err := Parse("x.yaml", []byte("store:\n  type: dynamodb\n  dynamodb: {table: shared, sort_key: sk, partition_key_prefix: \"IDEM#\"}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	if d := cfg.Store.DynamoDB; d.SortKey != "sk" || d.PartitionKeyPrefix != "IDEM#" {
		t.Fatalf("%+v", d)
	}
	if _, err := Parse("x.yaml", []byte("store:\n  type: dynamodb\n  dynamodb: {table: t, sort_key_value: x}\nroutes:\n  - name: a\n    match: {path: /a}\n    upstream: http://h\n"), func(string) (string, bool) { return "", false }); err == nil || !strings.Contains(err.Error(), "x.yaml:3: store.dynamodb.sort_key_value: needs dynamodb.sort_key") {
		t.Fatalf("err = %v", err)
	}
}
