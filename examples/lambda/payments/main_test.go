package main

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/aws/aws-lambda-go/events"

	"github.com/leveehq/levee/store/memory"
)

func TestChargeOnce(t *testing.T) {
	h, err := newAPI(memory.New(memory.Options{}), "20/s")
	if err != nil {
		t.Fatal(err)
	}
	ev := events.APIGatewayV2HTTPRequest{
		Version: "2.0", RawPath: "/v1/charges",
		Headers: map[string]string{"idempotency-key": "k1", "authorization": "Bearer t1", "content-type": "application/json"},
		Body:    `{"amount":100}`,
	}
	ev.RequestContext.HTTP.Method, ev.RequestContext.HTTP.Path = "POST", "/v1/charges"
	payload, _ := json.Marshal(ev)
	var bodies []string
	for range 2 {
		out, err := h.Invoke(context.Background(), payload)
		if err != nil {
			t.Fatal(err)
		}
		var resp events.APIGatewayV2HTTPResponse
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 201 {
			t.Fatalf("%d %s", resp.StatusCode, resp.Body)
		}
		bodies = append(bodies, resp.Body)
	}
	if bodies[0] != bodies[1] || bodies[0] != `{"id":"ch_1","amount":100,"status":"succeeded"}` {
		t.Fatalf("charged twice: %v", bodies)
	}
}
