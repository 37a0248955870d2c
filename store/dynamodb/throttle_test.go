package dynamodb_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/dynamodb"
)

// awsError is a fake DynamoDB endpoint on 127.0.0.1 that answers its
// first fail requests with the AWS JSON 1.0 error code (DynamoDB's wire
// format) and every later one with an empty 200, which is a valid
// UpdateItem, DeleteItem and GetItem (no item) answer.
type awsError struct {
	code string
	fail int64
	n    atomic.Int64
}

func (a *awsError) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	if a.n.Add(1) > a.fail {
		_, _ = w.Write([]byte(`{}`))
		return
	}
	w.Header().Set("X-Amzn-ErrorType", a.code)
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, `{"__type":"com.amazonaws.dynamodb.v20120810#%s","message":"fake %s"}`, a.code, a.code)
}

// fakeClient is a client of srv whose standard retryer (the SDK's) makes
// 3 attempts with a backoff capped at a millisecond, so that tests stay
// fast; rl replaces its retry token bucket when not nil.
func fakeClient(t *testing.T, srv *httptest.Server, rl retry.RateLimiter) *ddb.Client {
	return ddb.New(ddb.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("levee-test", "levee-test", ""),
		BaseEndpoint: aws.String(srv.URL),
		HTTPClient:   srv.Client(),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 3
			o.MaxBackoff = time.Millisecond
			if rl != nil {
				o.RateLimiter = rl
			}
		}),
	})
}

func throttleServer(t *testing.T, code string, fail int64) (*awsError, *httptest.Server) {
	a := &awsError{code: code, fail: fail}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	return a, srv
}

// TestThrottling: every throttle code the SDK knows is retried by the
// SDK (3 attempts reach the server) and then surfaced as a
// *ThrottledError with the code as Reason, from every operation; never as
// a duplicate, ErrFenced or ErrNotFound.
func TestThrottling(t *testing.T) {
	now := time.Now()
	req := idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}
	ops := []struct {
		op   string
		call func(*dynamodb.Store) error
	}{
		{"claim", func(s *dynamodb.Store) error {
			res, err := s.Claim(context.Background(), req)
			if res.Claimed || res.Existing != nil {
				return fmt.Errorf("throttled claim returned %+v", res)
			}
			return err
		}},
		{"renew", func(s *dynamodb.Store) error { return s.Renew(context.Background(), "k", 1, now, now, now) }},
		{"complete", func(s *dynamodb.Store) error {
			return s.Complete(context.Background(), "k", 1, idempotency.Response{Status: 200}, now, now)
		}},
		{"release", func(s *dynamodb.Store) error { return s.Release(context.Background(), "k", 1) }},
		{"mark unknown", func(s *dynamodb.Store) error { return s.MarkUnknown(context.Background(), "k", 1, now, now) }},
		{"lookup", func(s *dynamodb.Store) error { _, err := s.Lookup(context.Background(), "k", now); return err }},
	}
	for _, code := range []string{"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"} {
		for _, o := range ops {
			t.Run(code+"/"+o.op, func(t *testing.T) {
				fake, srv := throttleServer(t, code, 1<<30)
				s, err := dynamodb.New(fakeClient(t, srv, nil), dynamodb.Options{Table: "t"})
				if err != nil {
					t.Fatal(err)
				}
				err = o.call(s)
				var te *dynamodb.ThrottledError
				if !errors.As(err, &te) || !errors.Is(err, dynamodb.ErrThrottled) {
					t.Fatalf("%s = %v, want a *ThrottledError", o.op, err)
				}
				if te.Reason != code || te.Op != o.op || te.Attempts != 3 || te.RetryQuotaExceeded {
					t.Errorf("ThrottledError = %+v, want Reason %s, Op %s, 3 attempts", te, code, o.op)
				}
				if errors.Is(err, idempotency.ErrFenced) || errors.Is(err, idempotency.ErrNotFound) {
					t.Errorf("%s = %v: a throttle read as a fencing failure or a missing record", o.op, err)
				}
				if !strings.HasPrefix(err.Error(), "dynamodb: "+o.op+": throttled ("+code+")") {
					t.Errorf("message %q", err)
				}
				if got := fake.n.Load(); got != 3 {
					t.Errorf("server saw %d requests, want 3 (the SDK's retries)", got)
				}
			})
		}
	}
	t.Run("typed", func(t *testing.T) {
		_, srv := throttleServer(t, "ProvisionedThroughputExceededException", 1<<30)
		s, _ := dynamodb.New(fakeClient(t, srv, nil), dynamodb.Options{Table: "t"})
		_, err := s.Claim(context.Background(), req)
		var pte *types.ProvisionedThroughputExceededException
		if !errors.As(err, &pte) {
			t.Fatalf("Claim = %v, want the SDK's typed error inside", err)
		}
	})
}

// TestThrottlingRecovers: throttling that ends within the SDK's attempts
// is invisible: the claim succeeds.
func TestThrottlingRecovers(t *testing.T) {
	fake, srv := throttleServer(t, "ThrottlingException", 2)
	s, _ := dynamodb.New(fakeClient(t, srv, nil), dynamodb.Options{Table: "t"})
	now := time.Now()
	res, err := s.Claim(context.Background(), idempotency.ClaimRequest{Key: "k", Token: 1, Now: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)})
	if err != nil || !res.Claimed {
		t.Fatalf("Claim = %+v, %v, want claimed on the third attempt", res, err)
	}
	if got := fake.n.Load(); got != 3 {
		t.Fatalf("server saw %d requests, want 3", got)
	}
}

// TestThrottlingRetryQuota: when the SDK's client-side retry quota is dry
// it stops before its attempts run out; the error says so.
func TestThrottlingRetryQuota(t *testing.T) {
	fake, srv := throttleServer(t, "ProvisionedThroughputExceededException", 1<<30)
	s, _ := dynamodb.New(fakeClient(t, srv, ratelimit.NewTokenRateLimit(1)), dynamodb.Options{Table: "t"})
	_, err := s.Lookup(context.Background(), "k", time.Now())
	var te *dynamodb.ThrottledError
	if !errors.As(err, &te) || !te.RetryQuotaExceeded || te.Reason != "ProvisionedThroughputExceededException" {
		t.Fatalf("Lookup = %v (%+v), want a throttle with the retry quota exhausted", err, te)
	}
	if got := fake.n.Load(); got != 1 {
		t.Fatalf("server saw %d requests, want 1 (no token for a retry)", got)
	}
}

// TestNotThrottling: other AWS errors are plain wrapped errors.
func TestNotThrottling(t *testing.T) {
	_, srv := throttleServer(t, "ValidationException", 1<<30)
	s, _ := dynamodb.New(fakeClient(t, srv, nil), dynamodb.Options{Table: "t"})
	_, err := s.Lookup(context.Background(), "k", time.Now())
	if err == nil || errors.Is(err, dynamodb.ErrThrottled) || !strings.HasPrefix(err.Error(), "dynamodb: lookup: ") {
		t.Fatalf("Lookup = %v, want a wrapped non-throttle error", err)
	}
}

// TestThrottledRequestNeverRuns: through the engine's HTTP middleware a
// throttled claim is a 503 and the handler does not run; the engine's
// error still carries the Reason for metrics.
func TestThrottledRequestNeverRuns(t *testing.T) {
	_, srv := throttleServer(t, "ProvisionedThroughputExceededException", 1<<30)
	s, _ := dynamodb.New(fakeClient(t, srv, nil), dynamodb.Options{Table: "t"})
	engine := idempotency.New(s, idempotency.Options{})
	var ran atomic.Int64
	h := engine.Middleware(idempotency.HTTPOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ran.Add(1) }))
	r := httptest.NewRequest(http.MethodPost, "/charges", strings.NewReader(`{}`))
	r.Header.Set("Idempotency-Key", "k1")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusServiceUnavailable || ran.Load() != 0 {
		t.Fatalf("status %d, handler ran %d times; want 503 and 0", w.Code, ran.Load())
	}
	_, _, err := engine.Begin(context.Background(), "k2", idempotency.Fingerprint{})
	var te *dynamodb.ThrottledError
	if !errors.Is(err, idempotency.ErrStoreUnavailable) || !errors.As(err, &te) || te.Reason != "ProvisionedThroughputExceededException" {
		t.Fatalf("Begin = %v, want a StoreError carrying the throttle reason", err)
	}
}
