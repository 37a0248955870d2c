package dynamodb_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/truora/minidyn/server"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/idempotency/idemtest"
	"github.com/leveehq/levee/internal/dynalite"
	"github.com/leveehq/levee/store/dynamodb"
)

// ---- emulators ----

// startMinidyn serves minidyn's DynamoDB HTTP API on 127.0.0.1 for the
// life of tb.
func startMinidyn(tb testing.TB) string {
	srv := httptest.NewServer(&tableLock{h: server.NewServer()})
	tb.Cleanup(srv.Close)
	return srv.URL
}

// tableLock runs minidyn's table operations alone: minidyn v0.8.2 locks
// its item operations but reads and writes its table map from
// CreateTable, DeleteTable, UpdateTable and DescribeTable without a lock,
// which races when tests create tables while others use theirs.
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

// startDynalite runs dynalite for the life of t, or skips (see
// internal/dynalite).
func startDynalite(t testing.TB) string { return dynalite.Start(t) }

// ---- clients and tables ----

// countingTransport counts HTTP requests: the store's round trips,
// counted at the client, SDK retries included.
type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.base.RoundTrip(r)
}

// newClient returns a DynamoDB client with its own connection pool,
// counting its requests in n (which may be nil).
func newClient(tb testing.TB, endpoint string, n *atomic.Int64) *ddb.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tb.Cleanup(tr.CloseIdleConnections)
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

func randomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// newTable creates a dedicated table of its own for tb with CreateTable
// and deletes it when tb ends.
func newTable(tb testing.TB, endpoint string) string {
	return newTableFor(tb, endpoint, dynamodb.Options{}).Table
}

// singleTable is the single-table layout the tests use: a composite key
// with names unlike the defaults, and a prefix.
var singleTable = dynamodb.Options{PartitionKey: "PK", SortKey: "SK", PartitionKeyPrefix: "IDEMPOTENCY#", SortKeyValue: "levee", TTLAttribute: "expiresAt"}

// layouts are the table layouts every store test runs on.
var layouts = []struct {
	name string
	opts dynamodb.Options
}{{"dedicated", dynamodb.Options{}}, {"single-table", singleTable}}

// newTableFor creates a table of its own for tb with CreateTable and the
// layout of opts (whose Table is ignored), deletes it when tb ends, and
// returns opts with Table set.
func newTableFor(tb testing.TB, endpoint string, opts dynamodb.Options) dynamodb.Options {
	table := randomName("levee-test-")
	opts.Table = table
	admin := newClient(tb, endpoint, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dynamodb.CreateTable(ctx, admin, opts); err != nil {
		tb.Fatalf("CreateTable(%s) at %s: %v", table, endpoint, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := admin.DeleteTable(ctx, &ddb.DeleteTableInput{TableName: aws.String(table)})
		var nf *types.ResourceNotFoundException
		if err != nil && !errors.As(err, &nf) {
			tb.Errorf("deleting table %s: %v", table, err)
		}
	})
	return opts
}

// counted is a store with its own client and request counter.
type counted struct {
	*dynamodb.Store
	opts  dynamodb.Options
	trips *atomic.Int64
}

// withoutAllOld hides the item a failed condition returns, to exercise
// the store's fallback read on a server that returns it.
type withoutAllOld struct{ dynamodb.API }

func (w withoutAllOld) UpdateItem(ctx context.Context, in *ddb.UpdateItemInput, optFns ...func(*ddb.Options)) (*ddb.UpdateItemOutput, error) {
	out, err := w.API.UpdateItem(ctx, in, optFns...)
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		ccf.Item = nil
	}
	return out, err
}

func openStore(tb testing.TB, endpoint, table string, hideAllOld bool) *counted {
	return openStoreOpts(tb, endpoint, dynamodb.Options{Table: table}, hideAllOld)
}

func openStoreOpts(tb testing.TB, endpoint string, opts dynamodb.Options, hideAllOld bool) *counted {
	n := new(atomic.Int64)
	var api dynamodb.API = newClient(tb, endpoint, n)
	if hideAllOld {
		api = withoutAllOld{api}
	}
	s, err := dynamodb.New(api, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return &counted{Store: s, opts: opts, trips: n}
}

// returnsAllOld probes whether the server returns the existing item from a
// failed conditional UpdateItem (ReturnValuesOnConditionCheckFailure).
func returnsAllOld(t *testing.T, endpoint string) bool {
	table := newTable(t, endpoint)
	c := newClient(t, endpoint, nil)
	ctx := context.Background()
	key := map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "probe"}}
	update := func() error {
		_, err := c.UpdateItem(ctx, &ddb.UpdateItemInput{
			TableName:                           aws.String(table),
			Key:                                 key,
			UpdateExpression:                    aws.String("SET v = :v"),
			ConditionExpression:                 aws.String("attribute_not_exists(pk)"),
			ExpressionAttributeValues:           map[string]types.AttributeValue{":v": &types.AttributeValueMemberN{Value: "1"}},
			ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
		})
		return err
	}
	if err := update(); err != nil {
		t.Fatalf("probe: first UpdateItem: %v", err)
	}
	err := update()
	var ccf *types.ConditionalCheckFailedException
	if !errors.As(err, &ccf) {
		t.Fatalf("probe: second UpdateItem = %v, want ConditionalCheckFailedException", err)
	}
	return len(ccf.Item) > 0
}

func harness(endpoint string, layout dynamodb.Options, hideAllOld bool, replayTrips int64) idemtest.Harness {
	return idemtest.Harness{
		NewStore: func(tb testing.TB) idempotency.Store {
			return openStoreOpts(tb, endpoint, newTableFor(tb, endpoint, layout), hideAllOld)
		},
		Replica: func(tb testing.TB, s idempotency.Store) idempotency.Store {
			return openStoreOpts(tb, endpoint, s.(*counted).opts, hideAllOld)
		},
		RoundTrips:       func(s idempotency.Store) int64 { return s.(*counted).trips.Load() },
		ReplayRoundTrips: replayTrips,
	}
}

func runSuite(t *testing.T, endpoint string) {
	replay := int64(2)
	if returnsAllOld(t, endpoint) {
		replay = 1
		t.Logf("%s returns ALL_OLD on a failed condition: ReplayRoundTrips = 1", t.Name())
	} else {
		t.Logf("%s does not return ALL_OLD on a failed condition: ReplayRoundTrips = 2 (UpdateItem + GetItem)", t.Name())
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) { idemtest.Run(t, harness(endpoint, l.opts, false, replay)) })
	}
}

// ---- the conformance suite, on each emulator ----

func TestConformance(t *testing.T) {
	t.Run("minidyn", func(t *testing.T) { runSuite(t, startMinidyn(t)) })
	t.Run("minidyn-without-ALL_OLD", func(t *testing.T) {
		idemtest.Run(t, harness(startMinidyn(t), dynamodb.Options{}, true, 2))
	})
	t.Run("dynalite", func(t *testing.T) { runSuite(t, startDynalite(t)) })
}

// ---- store-specific behaviour ----

// forEachServer runs fn against minidyn and, when available, dynalite.
func forEachServer(t *testing.T, fn func(t *testing.T, endpoint string)) {
	t.Run("minidyn", func(t *testing.T) { fn(t, startMinidyn(t)) })
	t.Run("dynalite", func(t *testing.T) { fn(t, startDynalite(t)) })
}

func TestOptionsValidation(t *testing.T) {
	c := newClient(t, "http://127.0.0.1:1", nil)
	for _, tc := range []struct {
		opts  dynamodb.Options
		field string
	}{
		{dynamodb.Options{}, "Options.Table"},
		{dynamodb.Options{Table: "t", PartitionKey: "tok"}, "Options.PartitionKey"},
		{dynamodb.Options{Table: "t", TTLAttribute: "exp"}, "Options.TTLAttribute"},
		{dynamodb.Options{Table: "t", TTLAttribute: "pk"}, "Options.TTLAttribute"},
		{dynamodb.Options{Table: "t", SortKeyValue: "x"}, "Options.SortKey"},
		{dynamodb.Options{Table: "t", SortKey: "st"}, "Options.SortKey"},
		{dynamodb.Options{Table: "t", SortKey: "pk"}, "Options.SortKey"},
		{dynamodb.Options{Table: "t", SortKey: "ttl"}, "Options.SortKey"},
	} {
		_, err := dynamodb.New(c, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.field) || !strings.HasPrefix(err.Error(), "dynamodb: ") {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.opts, err, tc.field)
		}
		if err := dynamodb.CreateTable(context.Background(), c, tc.opts); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("CreateTable(%+v) = %v, want an error naming %s", tc.opts, err, tc.field)
		}
	}
	if _, err := dynamodb.New(nil, dynamodb.Options{Table: "t"}); err == nil {
		t.Error("New(nil client) succeeded")
	}
}

func TestCreateTable(t *testing.T) { forEachServer(t, testCreateTable) }

func testCreateTable(t *testing.T, endpoint string) {
	c := newClient(t, endpoint, nil)
	ctx := context.Background()
	table := newTable(t, endpoint)
	if err := dynamodb.CreateTable(ctx, c, dynamodb.Options{Table: table}); err != nil {
		t.Fatalf("CreateTable of an existing matching table = %v, want nil", err)
	}
	err := dynamodb.CreateTable(ctx, c, dynamodb.Options{Table: table, PartitionKey: "id"})
	if err == nil || !strings.Contains(err.Error(), "key schema") {
		t.Fatalf("CreateTable over a table with another key = %v, want a key schema error", err)
	}
	custom := randomName("levee-test-")
	opts := dynamodb.Options{Table: custom, PartitionKey: "id", TTLAttribute: "expires_at"}
	if err := dynamodb.CreateTable(ctx, c, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = c.DeleteTable(context.Background(), &ddb.DeleteTableInput{TableName: aws.String(custom)})
	})
	s, err := dynamodb.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	now := time.UnixMilli(1_900_000_000_123)
	req := idempotency.ClaimRequest{Key: "k", Token: 7, Now: now, LeaseUntil: now.Add(time.Second), ExpiresAt: now.Add(time.Hour)}
	if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
		t.Fatalf("Claim with custom attribute names: %+v, %v", res, err)
	}
	item := rawItem(t, c, custom, "id", "k")
	if _, ok := item["expires_at"]; !ok {
		t.Fatalf("item %v has no expires_at attribute", item)
	}
}

// rawItemOpts reads the item the store keeps for key under opts' layout.
func rawItemOpts(t *testing.T, c *ddb.Client, opts dynamodb.Options, key string) map[string]types.AttributeValue {
	t.Helper()
	k := map[string]types.AttributeValue{cmp.Or(opts.PartitionKey, "pk"): &types.AttributeValueMemberS{Value: opts.PartitionKeyPrefix + key}}
	if opts.SortKey != "" {
		k[opts.SortKey] = &types.AttributeValueMemberS{Value: opts.SortKeyValue}
	}
	out, err := c.GetItem(context.Background(), &ddb.GetItemInput{TableName: aws.String(opts.Table), Key: k, ConsistentRead: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	return out.Item
}

func rawItem(t *testing.T, c *ddb.Client, table, pk, key string) map[string]types.AttributeValue {
	t.Helper()
	out, err := c.GetItem(context.Background(), &ddb.GetItemInput{
		TableName:      aws.String(table),
		Key:            map[string]types.AttributeValue{pk: &types.AttributeValueMemberS{Value: key}},
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Item
}

func number(t *testing.T, item map[string]types.AttributeValue, name string) string {
	t.Helper()
	v, ok := item[name].(*types.AttributeValueMemberN)
	if !ok {
		t.Fatalf("attribute %s = %#v, want a number", name, item[name])
	}
	return v.Value
}

// TestItemLayout pins the documented attribute types and encodings.
func TestItemLayout(t *testing.T) { forEachServer(t, testItemLayout) }

func testItemLayout(t *testing.T, endpoint string) {
	table := newTable(t, endpoint)
	c := newClient(t, endpoint, nil)
	s, err := dynamodb.New(c, dynamodb.Options{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.UnixMilli(1_900_000_000_123).Add(456 * time.Microsecond)
	req := idempotency.ClaimRequest{
		Key: "layout", Fingerprint: idempotency.FingerprintOf([]byte("x")), Token: 1<<63 - 1, Now: now,
		LeaseUntil: now.Add(30 * time.Second), ExpiresAt: now.Add(24 * time.Hour),
	}
	if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
		t.Fatalf("Claim: %+v, %v", res, err)
	}
	item := rawItem(t, c, table, "pk", "layout")
	for name, want := range map[string]string{
		"st": "1",

		"lease": strconv.FormatInt(req.LeaseUntil.UnixMilli(), 10),
		"exp":   strconv.FormatInt(req.ExpiresAt.UnixMilli(), 10),
		"ttl":   strconv.FormatInt(req.ExpiresAt.Unix()+1+3600, 10), // rounded up, plus an hour
	} {
		if got := number(t, item, name); got != want {
			t.Errorf("%s = %s, want %s", name, got, want)
		}
	}
	if tok, ok := item["tok"].(*types.AttributeValueMemberS); !ok || tok.Value != "9223372036854775807" {
		t.Errorf("tok = %#v, want the token in decimal, of type S", item["tok"])
	}
	if fp, ok := item["fp"].(*types.AttributeValueMemberB); !ok || len(fp.Value) != 32 {
		t.Errorf("fp = %#v, want 32 bytes of type B", item["fp"])
	}
	if r, ok := item["resp"].(*types.AttributeValueMemberB); !ok || string(r.Value) != "\x00" {
		t.Errorf("in-progress resp = %#v, want one zero byte", item["resp"])
	}
	// Millisecond precision: the record reads back truncated to the ms.
	rec, err := s.Lookup(ctx, req.Key, now)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.LeaseUntil.Equal(req.LeaseUntil.Truncate(time.Millisecond)) || rec.Token != req.Token {
		t.Fatalf("record = %+v", rec)
	}
	// Complete with a small response: stored uncompressed in resp.
	small := idempotency.Response{Status: 201, Body: []byte(`{"ok":true}`)}
	if err := s.Complete(ctx, req.Key, req.Token, small, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	item = rawItem(t, c, table, "pk", "layout")
	if r, ok := item["resp"].(*types.AttributeValueMemberB); !ok || string(r.Value) != string(idempotency.MarshalResponse(small)) {
		t.Errorf("resp = %#v, want MarshalResponse bytes", item["resp"])
	}
	if got := number(t, item, "st"); got != "2" {
		t.Errorf("st = %s, want 2", got)
	}
	if got := number(t, item, "renc"); got != "0" {
		t.Errorf("renc = %s, want 0", got)
	}
	// A claim over the expired record removes the old response.
	later := now.Add(time.Hour)
	req2 := idempotency.ClaimRequest{Key: req.Key, Token: 5, Now: later, LeaseUntil: later.Add(time.Second), ExpiresAt: later.Add(time.Hour)}
	if res, err := s.Claim(ctx, req2); err != nil || !res.Claimed {
		t.Fatalf("Claim after expiry: %+v, %v", res, err)
	}
	item = rawItem(t, c, table, "pk", "layout")
	if r, ok := item["resp"].(*types.AttributeValueMemberB); !ok || string(r.Value) != "\x00" {
		t.Errorf("reclaimed item's resp = %#v, want one zero byte", item["resp"])
	}
}

// TestResponseSizes checks compression and the degradation of responses
// that cannot fit a 400 KB item.
func TestResponseSizes(t *testing.T) {
	forEachServer(t, func(t *testing.T, endpoint string) {
		for _, l := range layouts {
			t.Run(l.name, func(t *testing.T) { testResponseSizes(t, endpoint, l.opts) })
		}
	})
}

func testResponseSizes(t *testing.T, endpoint string, layout dynamodb.Options) {
	opts := newTableFor(t, endpoint, layout)
	c := newClient(t, endpoint, nil)
	s, err := dynamodb.New(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	pk, ttl := cmp.Or(opts.PartitionKey, "pk"), cmp.Or(opts.TTLAttribute, "ttl")
	ctx := context.Background()
	now := time.Now()
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	// The response budget for keys "size-N": DynamoDB's 400 KB less the
	// store's 512-byte reserve for the other attributes, the key value
	// (prefix included), the sort key and the names of the key and TTL
	// attributes. dynalite enforces the limit.
	budget := 400*1024 - 512 - len(opts.PartitionKeyPrefix) - len("size-0") - len(pk) - len(ttl) -
		len(opts.SortKey) - len(opts.SortKeyValue)
	json := []byte(strings.Repeat(`{"id":"ch_123","amount":100,"currency":"usd"},`, 2000)) // ~96 KB
	for i, tc := range []struct {
		name        string
		body        []byte
		compressed  bool
		bodyOmitted bool
	}{
		{"compressible", json, true, false},
		{"incompressible fits", random(300 << 10), false, false},
		{"incompressible too large", random(500 << 10), false, true},
		{"at the item budget", sized(budget, random), false, false},
		{"one byte over the item budget", sized(budget+1, random), false, true},
	} {
		key := "size-" + strconv.Itoa(i)
		req := idempotency.ClaimRequest{Key: key, Token: 9, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
		if _, err := s.Claim(ctx, req); err != nil {
			t.Fatal(err)
		}
		resp := idempotency.Response{Status: 200, Header: hdr, Body: tc.body}
		if err := s.Complete(ctx, key, req.Token, resp, now, now.Add(time.Hour)); err != nil {
			t.Fatalf("%s: Complete: %v", tc.name, err)
		}
		item := rawItemOpts(t, c, opts, key)
		if z := number(t, item, "renc") == "1"; z != tc.compressed {
			t.Errorf("%s: compressed = %v, want %v", tc.name, z, tc.compressed)
		}
		rec, err := s.Lookup(ctx, key, now)
		if err != nil {
			t.Fatalf("%s: Lookup: %v", tc.name, err)
		}
		got := rec.Response
		if got.Status != 200 || got.Header.Get("Content-Type") != "application/octet-stream" || got.BodyOmitted != tc.bodyOmitted {
			t.Errorf("%s: response = status %d header %v omitted %v", tc.name, got.Status, got.Header, got.BodyOmitted)
		}
		if !tc.bodyOmitted && string(got.Body) != string(tc.body) {
			t.Errorf("%s: body differs (%d bytes, want %d)", tc.name, len(got.Body), len(tc.body))
		}
		if tc.bodyOmitted && len(got.Body) != 0 {
			t.Errorf("%s: omitted body has %d bytes", tc.name, len(got.Body))
		}
	}
}

// TestClaimRetriedBySDK: a claim repeated with its own token (the SDK
// retrying after a lost answer) is recognized as claimed; another token is
// still blocked.
func TestClaimRetriedBySDK(t *testing.T) { forEachServer(t, testClaimRetriedBySDK) }

func testClaimRetriedBySDK(t *testing.T, endpoint string) {
	s := openStore(t, endpoint, newTable(t, endpoint), false)
	ctx := context.Background()
	now := time.Now()
	req := idempotency.ClaimRequest{Key: "retry", Token: 42, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	for i := range 2 {
		if res, err := s.Claim(ctx, req); err != nil || !res.Claimed {
			t.Fatalf("attempt %d: Claim = %+v, %v, want claimed", i, res, err)
		}
	}
	other := req
	other.Token = 43
	if res, err := s.Claim(ctx, other); err != nil || res.Claimed || res.Existing == nil || res.Existing.Token != 42 {
		t.Fatalf("Claim with another token = %+v, %v, want blocked by token 42", res, err)
	}
	if err := s.Complete(ctx, req.Key, req.Token, idempotency.Response{Status: 200}, now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Once completed, the same token no longer claims: it gets the replay.
	if res, err := s.Claim(ctx, req); err != nil || res.Claimed || res.Existing == nil || res.Existing.State != idempotency.StateCompleted {
		t.Fatalf("Claim after Complete = %+v, %v, want the completed record", res, err)
	}
}

// sized returns a random body whose encoded response (status 200 and the
// test's header) is exactly n bytes.
func sized(n int, random func(int) []byte) []byte {
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	body := random(n)
	for {
		enc := len(idempotency.MarshalResponse(idempotency.Response{Status: 200, Header: hdr, Body: body}))
		if enc == n {
			return body
		}
		body = body[:len(body)-(enc-n)]
	}
}

// TestCorruptItem checks that an undecodable item is an error, never
// "absent" (which would let a duplicate run).
func TestCorruptItem(t *testing.T) { forEachServer(t, testCorruptItem) }

func testCorruptItem(t *testing.T, endpoint string) {
	table := newTable(t, endpoint)
	c := newClient(t, endpoint, nil)
	s, err := dynamodb.New(c, dynamodb.Options{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = c.PutItem(ctx, &ddb.PutItemInput{TableName: aws.String(table), Item: map[string]types.AttributeValue{
		"pk":  &types.AttributeValueMemberS{Value: "bad"},
		"st":  &types.AttributeValueMemberN{Value: "1"},
		"exp": &types.AttributeValueMemberN{Value: "99999999999999"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "bad", time.Now()); err == nil || errors.Is(err, idempotency.ErrNotFound) || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Lookup of a corrupt item = %v, want a corrupt-item error", err)
	}
	now := time.Now()
	_, err = s.Claim(ctx, idempotency.ClaimRequest{Key: "bad", Token: 1, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)})
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Claim blocked by a corrupt item = %v, want a corrupt-item error", err)
	}
}

func TestUnreachable(t *testing.T) {
	s, err := dynamodb.New(newClient(t, "http://127.0.0.1:1", nil), dynamodb.Options{Table: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := time.Now()
	_, err = s.Claim(ctx, idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, LeaseUntil: now, ExpiresAt: now})
	if err == nil || !strings.HasPrefix(err.Error(), "dynamodb: claim: ") {
		t.Fatalf("Claim against nothing = %v, want a wrapped error", err)
	}
	if err := s.Release(ctx, "k", 1); err == nil || errors.Is(err, idempotency.ErrFenced) {
		t.Fatalf("Release against nothing = %v, want a store error, not ErrFenced", err)
	}
}

// BenchmarkStore runs the shared store benchmarks on minidyn and, when
// available, dynalite. Emulator numbers measure the store's and the SDK's
// overhead plus a loopback HTTP request, not DynamoDB's latency.
func BenchmarkStore(b *testing.B) {
	for _, srv := range []struct {
		name  string
		start func(testing.TB) string
	}{{"minidyn", startMinidyn}, {"dynalite", startDynalite}} {
		b.Run(srv.name, func(b *testing.B) {
			endpoint := srv.start(b)
			s, err := dynamodb.New(newClient(b, endpoint, nil), dynamodb.Options{Table: newTable(b, endpoint)})
			if err != nil {
				b.Fatal(err)
			}
			idemtest.Bench(b, s)
		})
	}
}
