// Command payments is a payments API as an AWS Lambda function: POST
// /v1/charges behind API Gateway (HTTP API), a Function URL or an ALB,
// with levee's idempotency middleware on DynamoDB, so a retried request —
// by the client, or by API Gateway itself — never charges twice, and a
// charge still running when the function times out holds its key instead
// of running again.
//
// Build and deploy with AWS SAM (template.yaml beside this file):
//
//	sam build && sam deploy --guided
//	curl -i -X POST "$URL/v1/charges" -H 'Idempotency-Key: k1' -H 'Authorization: Bearer t1' -d '{"amount":100}'
//	curl -i -X POST "$URL/v1/charges" -H 'Idempotency-Key: k1' -H 'Authorization: Bearer t1' -d '{"amount":100}'   # replayed
//
// Environment: LEVEE_TABLE (the DynamoDB table, required), LEVEE_RATE
// (per-credential rate limit, default 20/s).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"sync/atomic"

	awslambda "github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/config"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/lambda"
	"github.com/leveehq/levee/ratelimit"
	"github.com/leveehq/levee/store/dynamodb"
)

func main() {
	h, err := newHandler(context.Background(), os.Getenv("LEVEE_TABLE"), envOr("LEVEE_RATE", "20/s"))
	if err != nil {
		log.Fatal(err)
	}
	awslambda.Start(h)
}

// newHandler is the function's init: the DynamoDB store, a rate limit per
// credential in front, and the idempotency middleware on the charges API.
func newHandler(ctx context.Context, table, rate string) (*lambda.HTTPHandler, error) {
	if table == "" {
		return nil, fmt.Errorf("payments: LEVEE_TABLE is not set")
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("payments: AWS config: %w", err)
	}
	store, err := dynamodb.New(ddb.NewFromConfig(cfg), dynamodb.Options{Table: table})
	if err != nil {
		return nil, err
	}
	return newAPI(store, rate)
}

// newAPI composes the function from a store (the tests use store/memory).
func newAPI(store idempotency.Store, rate string) (*lambda.HTTPHandler, error) {
	policy, err := ratelimit.ParsePolicy(rate)
	if err != nil {
		return nil, err
	}
	policy.Name = "per-credential"
	limit, err := ratelimit.Middleware(ratelimit.Options{Rules: []ratelimit.Rule{
		{Policy: policy, Key: ratelimit.Header("Authorization")},
	}})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/charges", &provider{})
	return lambda.NewHTTPHandler(mux, lambda.HTTPOptions{
		Config: lambda.Config{
			Store: store,
			Options: idempotency.Options{OnEvent: func(ctx context.Context, ev idempotency.Event) {
				level := slog.LevelInfo
				if ev.Outcome == idempotency.OutcomeUnknown {
					level = slog.LevelWarn // an operator must reconcile and resolve this key
				}
				slog.Log(ctx, level, "idempotency", "outcome", ev.Outcome, "key", ev.Key, "err", ev.Err)
			}},
		},
		HTTP:       idempotency.HTTPOptions{Required: true, TenantHeader: "Authorization", Scope: "charges"},
		Middleware: []func(http.Handler) http.Handler{limit},
	})
}

// provider stands in for the payment provider: it numbers its charges.
type provider struct{ charges atomic.Int64 }

func (p *provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Amount int64 `json:"amount"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Amount <= 0 {
		http.Error(w, `{"error":"amount must be a positive integer"}`, http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":"ch_%d","amount":%d,"status":"succeeded"}`, p.charges.Add(1), req.Amount)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
