// Command e2efn is the function the lambda package's end-to-end tests
// build as a bootstrap binary and run under the AWS Lambda Runtime
// Interface Emulator. It serves three kinds of event from one handler:
//
//   - {"ping":true}: answered at once, the runtime's own cost;
//   - an HTTP-shaped event: lambda.HTTPHandler in front of a charge that
//     appends a line to $LEVEE_E2E_LOG per execution, and hangs when the
//     body says {"hang":true} (a charge whose answer never comes);
//   - an SQS event: lambda.SQSHandler, failing the messages whose body
//     is "fail", logging every execution.
//
// The idempotency records live in DynamoDB at $LEVEE_DDB_ENDPOINT, table
// $LEVEE_TABLE, so that they outlive the process. With $LEVEE_E2E_BARE
// set it is a bare aws-lambda-go function answering {} (the cold-start
// baseline).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"

	"github.com/aws/aws-lambda-go/events"
	awslambda "github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/leveehq/levee/lambda"
	"github.com/leveehq/levee/store/dynamodb"
)

func main() {
	if os.Getenv("LEVEE_E2E_BARE") != "" {
		// The baseline for the cold-start benchmark: the runtime alone.
		awslambda.Start(func(context.Context, json.RawMessage) (struct{}, error) { return struct{}{}, nil })
		return
	}
	client := ddb.New(ddb.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider("levee-test", "levee-test", ""),
		BaseEndpoint: aws.String(os.Getenv("LEVEE_DDB_ENDPOINT")),
	})
	store, err := dynamodb.New(client, dynamodb.Options{Table: os.Getenv("LEVEE_TABLE")})
	if err != nil {
		log.Fatal(err)
	}
	cfg := lambda.Config{Store: store}
	httpH, err := lambda.NewHTTPHandler(http.HandlerFunc(charge), lambda.HTTPOptions{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	sqsH, err := lambda.NewSQSHandler(consume, lambda.BatchOptions{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	awslambda.Start(dispatch{http: httpH, sqs: sqsH})
}

type dispatch struct {
	http *lambda.HTTPHandler
	sqs  *lambda.SQSHandler
}

func (d dispatch) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	var probe struct {
		Ping    bool              `json:"ping"`
		Records []json.RawMessage `json:"Records"`
	}
	_ = json.Unmarshal(payload, &probe)
	switch {
	case probe.Ping:
		return []byte(`{}`), nil
	case probe.Records != nil:
		var ev events.SQSEvent
		if err := json.Unmarshal(payload, &ev); err != nil {
			return nil, err
		}
		resp, err := d.sqs.Handle(ctx, ev)
		if err != nil {
			return nil, err
		}
		return json.Marshal(resp)
	}
	return d.http.Invoke(ctx, payload)
}

// record appends one execution to the log file.
func record(what string) {
	path := os.Getenv("LEVEE_E2E_LOG")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		log.Print(err)
		return
	}
	defer f.Close()
	fmt.Fprintln(f, what)
}

func charge(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet { // the benchmarks' passthrough request
		fmt.Fprint(w, "ok")
		return
	}
	body, _ := io.ReadAll(r.Body)
	record("charge " + r.Header.Get("Idempotency-Key"))
	if strings.Contains(string(body), `"hang":true`) {
		select {} // the provider never answers; the emulator kills the process at the timeout
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"charged":%q}`, r.Header.Get("Idempotency-Key"))
}

func consume(_ context.Context, m events.SQSMessage) error {
	record("message " + m.MessageId)
	if m.Body == "fail" {
		return errors.New("refused")
	}
	return nil
}
