package lambda_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/truora/minidyn/server"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/dynalite"
	"github.com/leveehq/levee/store/dynamodb"
	"github.com/leveehq/levee/store/memory"
)

// eventFile reads one of aws-lambda-go's own test events
// (events/testdata in its module directory).
func eventFile(t testing.TB, name string) []byte {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/aws/aws-lambda-go").Output()
	if err != nil {
		t.Fatalf("locating aws-lambda-go in the module cache: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "events", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stores runs fn against the memory store and DynamoDB (minidyn, in
// process, and dynalite when scripts/test installed it), each counting
// its round trips in n.
func stores(t *testing.T, fn func(t *testing.T, s idempotency.Store, n *atomic.Int64)) {
	t.Run("memory", func(t *testing.T) {
		var n atomic.Int64
		fn(t, countingStore{Store: memory.New(memory.Options{}), n: &n}, &n)
	})
	t.Run("dynamodb", func(t *testing.T) {
		var n atomic.Int64
		fn(t, newDynamo(t, &n), &n)
	})
	t.Run("dynalite", func(t *testing.T) {
		endpoint := dynalite.Start(t)
		var b [6]byte
		_, _ = rand.Read(b[:])
		table := "levee-lambda-" + hex.EncodeToString(b[:])
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := dynamodb.CreateTable(ctx, newDynamoClient(t, endpoint, nil), dynamodb.Options{Table: table}); err != nil {
			t.Fatalf("CreateTable: %v", err)
		}
		var n atomic.Int64
		s, err := dynamodb.New(newDynamoClient(t, endpoint, &n), dynamodb.Options{Table: table})
		if err != nil {
			t.Fatal(err)
		}
		fn(t, s, &n)
	})
}

// replayRoundTrips is what a replay costs the store under test: 1, and 2
// on dynalite, which lacks ReturnValuesOnConditionCheckFailure (the store
// falls back to a consistent read; see docs/idempotency.md).
func replayRoundTrips(t *testing.T) int64 {
	if strings.Contains(t.Name(), "/dynalite") {
		return 2
	}
	return 1
}

// countingStore counts the store calls the engine makes, as idemtest's
// round-trip counting does.
type countingStore struct {
	idempotency.Store
	n *atomic.Int64
}

func (c countingStore) Claim(ctx context.Context, r idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	c.n.Add(1)
	return c.Store.Claim(ctx, r)
}

func (c countingStore) Renew(ctx context.Context, key string, token uint64, now, leaseUntil, expiresAt time.Time) error {
	c.n.Add(1)
	return c.Store.Renew(ctx, key, token, now, leaseUntil, expiresAt)
}

func (c countingStore) Complete(ctx context.Context, key string, token uint64, resp idempotency.Response, now, expiresAt time.Time) error {
	c.n.Add(1)
	return c.Store.Complete(ctx, key, token, resp, now, expiresAt)
}

func (c countingStore) Release(ctx context.Context, key string, token uint64) error {
	c.n.Add(1)
	return c.Store.Release(ctx, key, token)
}

func (c countingStore) MarkUnknown(ctx context.Context, key string, token uint64, now, expiresAt time.Time) error {
	c.n.Add(1)
	return c.Store.MarkUnknown(ctx, key, token, now, expiresAt)
}

func (c countingStore) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	c.n.Add(1)
	return c.Store.Lookup(ctx, key, now)
}

// newDynamo returns a store/dynamodb Store on a fresh table of an
// in-process minidyn, counting HTTP requests (SDK retries included) in n.
func newDynamo(t testing.TB, n *atomic.Int64) idempotency.Store {
	t.Helper()
	endpoint, table := newDynamoTable(t)
	s, err := dynamodb.New(newDynamoClient(t, endpoint, n), dynamodb.Options{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newDynamoTable starts an in-process minidyn on 127.0.0.1 with a fresh
// levee table, and returns its endpoint and the table's name.
func newDynamoTable(t testing.TB) (endpoint, table string) {
	t.Helper()
	srv := httptest.NewServer(&tableLock{h: server.NewServer()})
	t.Cleanup(srv.Close)
	var b [6]byte
	_, _ = rand.Read(b[:])
	table = "levee-lambda-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dynamodb.CreateTable(ctx, newDynamoClient(t, srv.URL, nil), dynamodb.Options{Table: table}); err != nil {
		t.Fatalf("CreateTable: %v", err)
	}
	return srv.URL, table
}

// newDynamoClient returns a DynamoDB client for endpoint with its own
// connection pool, counting its requests in n (which may be nil).
func newDynamoClient(t testing.TB, endpoint string, n *atomic.Int64) *ddb.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	var rt http.RoundTripper = tr
	if n != nil {
		rt = countingTransport{base: tr, n: n}
	}
	return ddb.New(ddb.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("levee-test", "levee-test", ""),
		BaseEndpoint: aws.String(endpoint),
		HTTPClient:   &http.Client{Transport: rt},
	})
}

// tableLock serialises minidyn's table operations (see store/dynamodb's
// tests: minidyn v0.8.2 reads its table map without a lock).
type tableLock struct {
	mu sync.RWMutex
	h  http.Handler
}

func (l *tableLock) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.Header.Get("X-Amz-Target"), "Table") {
		l.mu.Lock()
		defer l.mu.Unlock()
	} else {
		l.mu.RLock()
		defer l.mu.RUnlock()
	}
	l.h.ServeHTTP(w, r)
}

type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.base.RoundTrip(r)
}

// editJSON decodes b, lets fn change it, and encodes it again.
func editJSON(t testing.TB, b []byte, fn func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	fn(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// invocation returns a ctx with a Lambda-like deadline d from now.
func invocationCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newMemory() idempotency.Store { return memory.New(memory.Options{}) }
