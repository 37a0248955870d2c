package dynamodb_test

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/dynamodb"
)

// TestSingleTable: in a shared table the store's items sit at
// (prefix+key, SortKeyValue) and the table's other items, even under the
// same partition key, are never read, overwritten or deleted.
func TestSingleTable(t *testing.T) { forEachServer(t, testSingleTable) }

func testSingleTable(t *testing.T, endpoint string) {
	opts := newTableFor(t, endpoint, singleTable)
	c := newClient(t, endpoint, nil)
	ctx := context.Background()
	s, err := dynamodb.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	str := func(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
	// Other entities: one under the same partition key, one whose key is
	// the idempotency key without the prefix.
	others := []map[string]types.AttributeValue{
		{"PK": str("IDEMPOTENCY#k"), "SK": str("profile"), "name": str("same partition")},
		{"PK": str("k"), "SK": str("levee"), "name": str("no prefix")},
	}
	for _, it := range others {
		if _, err := c.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(opts.Table), Item: it}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	req := idempotency.ClaimRequest{Key: "k", Token: 3, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
		t.Fatalf("Claim beside other items = %+v, %v, want claimed", res, err)
	}
	item := rawItemOpts(t, c, opts, "k")
	if _, ok := item["expiresAt"]; !ok || number(t, item, "st") != "1" {
		t.Fatalf("store item = %v, want an in-progress item with TTL attribute expiresAt", item)
	}
	if err := s.Complete(ctx, "k", 3, idempotency.Response{Status: 201, Body: []byte("ok")}, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	rec, err := s.Lookup(ctx, "k", now)
	if err != nil || rec.Response == nil || string(rec.Response.Body) != "ok" {
		t.Fatalf("Lookup = %+v, %v", rec, err)
	}
	// A new claim after expiry and a release delete only the store's item.
	later := now.Add(2 * time.Hour)
	if res, err := s.Claim(ctx, idempotency.ClaimRequest{Key: "k", Token: 4, Now: later, LeaseUntil: later.Add(time.Minute), ExpiresAt: later.Add(time.Hour)}); err != nil || !res.Claimed {
		t.Fatalf("reclaim = %+v, %v", res, err)
	}
	if err := s.Release(ctx, "k", 4); err != nil {
		t.Fatal(err)
	}
	if item := rawItemOpts(t, c, opts, "k"); len(item) != 0 {
		t.Fatalf("released item still there: %v", item)
	}
	for _, want := range others {
		out, err := c.GetItem(ctx, &ddb.GetItemInput{TableName: aws.String(opts.Table), ConsistentRead: aws.Bool(true),
			Key: map[string]types.AttributeValue{"PK": want["PK"], "SK": want["SK"]}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Item) != 3 || out.Item["name"].(*types.AttributeValueMemberS).Value != want["name"].(*types.AttributeValueMemberS).Value {
			t.Errorf("other item %v became %v", want, out.Item)
		}
	}
	// The key schemas must match the options, both ways.
	err = dynamodb.CreateTable(ctx, c, dynamodb.Options{Table: opts.Table, PartitionKey: "PK"})
	if err == nil || !strings.Contains(err.Error(), "key schema") {
		t.Errorf("CreateTable(dedicated) over a single table = %v, want a key schema error", err)
	}
	dedicated := newTable(t, endpoint)
	withSK := singleTable
	withSK.Table = dedicated
	withSK.PartitionKey = "pk"
	if err := dynamodb.CreateTable(ctx, c, withSK); err == nil || !strings.Contains(err.Error(), `sort key "SK"`) {
		t.Errorf("CreateTable(single-table) over a dedicated table = %v, want a key schema error", err)
	}
	if err := dynamodb.CreateTable(ctx, c, opts); err != nil {
		t.Errorf("CreateTable over the matching single table = %v", err)
	}
}

// BenchmarkCalls reports DynamoDB requests per engine operation, counted at
// the HTTP client (SDK retries included), per layout on minidyn: a new
// request (Claim + Complete) and a replay (Claim answered by ALL_OLD).
func BenchmarkCalls(b *testing.B) {
	endpoint := startMinidyn(b)
	for _, l := range layouts {
		s := openStoreOpts(b, endpoint, newTableFor(b, endpoint, l.opts), false)
		ctx := context.Background()
		now := time.Now()
		resp := idempotency.Response{Status: 201, Body: []byte(`{"id":"ch_1"}`)}
		b.Run(l.name+"/NewRequest", func(b *testing.B) {
			start := s.trips.Load()
			i := 0
			for b.Loop() {
				i++
				key := "new-" + strconv.Itoa(i)
				req := idempotency.ClaimRequest{Key: key, Token: uint64(i), Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
				if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
					b.Fatal(res, err)
				}
				if err := s.Complete(ctx, key, uint64(i), resp, now, now.Add(time.Hour)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(s.trips.Load()-start)/float64(i), "calls/op")
		})
		b.Run(l.name+"/Replay", func(b *testing.B) {
			req := idempotency.ClaimRequest{Key: "replay", Token: 1, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
			if _, err := s.Claim(ctx, req); err != nil {
				b.Fatal(err)
			}
			if err := s.Complete(ctx, "replay", 1, resp, now, now.Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
			req.Token = 2
			start := s.trips.Load()
			i := 0
			for b.Loop() {
				i++
				if res, err := s.Claim(ctx, req); err != nil || res.Existing == nil {
					b.Fatal(res, err)
				}
			}
			b.ReportMetric(float64(s.trips.Load()-start)/float64(i), "calls/op")
		})
	}
}

// TestTooLargeForAnItemRunsOnce: through the HTTP middleware, a response
// that fits the middleware's cap but not a DynamoDB item (even
// compressed) is sent whole the first time; its retry is the 409
// response-not-stored problem with the original status, and the handler
// never runs again. Both layouts; dynalite enforces the 400 KB limit.
func TestTooLargeForAnItemRunsOnce(t *testing.T) {
	forEachServer(t, func(t *testing.T, endpoint string) {
		for _, l := range layouts {
			t.Run(l.name, func(t *testing.T) {
				s := openStoreOpts(t, endpoint, newTableFor(t, endpoint, l.opts), false)
				engine := idempotency.New(s, idempotency.Options{})
				body := make([]byte, 600<<10)
				_, _ = rand.Read(body) // incompressible
				var runs atomic.Int64
				h := engine.Middleware(idempotency.HTTPOptions{MaxStoredBody: 1 << 20})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					runs.Add(1)
					w.Header().Set("Content-Type", "application/octet-stream")
					w.WriteHeader(http.StatusCreated)
					_, _ = w.Write(body)
				}))
				send := func() *httptest.ResponseRecorder {
					r := httptest.NewRequest(http.MethodPost, "/exports", strings.NewReader(`{"n":1}`))
					r.Header.Set("Idempotency-Key", "export-1")
					w := httptest.NewRecorder()
					h.ServeHTTP(w, r)
					return w
				}
				first := send()
				if first.Code != http.StatusCreated || first.Body.Len() != len(body) {
					t.Fatalf("first: %d, %d bytes", first.Code, first.Body.Len())
				}
				retry := send()
				if retry.Code != http.StatusConflict || !strings.Contains(retry.Body.String(), "idempotency-response-not-stored") ||
					!strings.Contains(retry.Body.String(), `"original_status":201`) || retry.Header().Get("Idempotent-Replayed") != "true" {
					t.Fatalf("retry: %d %s", retry.Code, retry.Body.String())
				}
				if n := runs.Load(); n != 1 {
					t.Fatalf("handler ran %d times, want 1", n)
				}
			})
		}
	})
}
