package sqsqueue

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/leveehq/levee/queue"
)

// FuzzDecode: any SQS message body decodes to an envelope or an error,
// and a DLQ scan turns any body into a dead message (undecodable ones
// with ReasonUndecodable), never a panic; a decoded envelope re-encodes to
// one that decodes equal.
func FuzzDecode(f *testing.F) {
	env := envelope{ID: "m1", Target: "https://x", Payload: []byte("p"), EnqueuedAt: time.Unix(1, 0).UTC(),
		History: []queue.Attempt{{N: 1, Error: "e", Status: 503, Body: []byte("b")}}, Reason: queue.ReasonPermanent, DeadAt: time.Unix(2, 0).UTC(), Seq: 7}
	good, _ := json.Marshal(env)
	for _, s := range []string{string(good), `{}`, `{"id":""}`, `{"id":"x","payload":"!!"}`, `null`, `[]`, `{"id":"x","history":[{"n":"1"}]}`, ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		e, err := decode(body)
		d := deadMessage("q", types.Message{Body: aws.String(body), MessageId: aws.String("sqs-id")})
		if err != nil {
			if d.Reason != ReasonUndecodable {
				t.Fatalf("undecodable body gave reason %q", d.Reason)
			}
			return
		}
		if e.ID == "" || d.ID != e.ID {
			t.Fatalf("decoded %+v, dead %+v", e, d)
		}
		again, err := encode(&e)
		if err != nil {
			return // e.g. a time outside JSON's range
		}
		e2, err := decode(again)
		if err != nil || e2.ID != e.ID || e2.Attempts != e.Attempts || len(e2.History) != len(e.History) {
			t.Fatalf("round trip: %+v, %v", e2, err)
		}
	})
}

// FuzzTagState: a target-state tag value decodes or is an error, and a
// state SetTarget would write reads back equal.
func FuzzTagState(f *testing.F) {
	raw, _ := json.Marshal(tagState{Target: "x", Disabled: true, Reason: "410", Since: time.Unix(1, 0).UTC()})
	f.Add(base64.RawURLEncoding.EncodeToString(raw), "x", "410 Gone")
	f.Add("", "", "")
	f.Add("!!!", "https://partner.example/hook", "")
	f.Fuzz(func(t *testing.T, v, target, reason string) {
		_, _ = parseTag(v)
		want := tagState{Target: target, Disabled: true, Reason: reason, Since: time.Unix(5, 0).UTC()}
		raw, _ := json.Marshal(want)
		got, err := parseTag(base64.RawURLEncoding.EncodeToString(raw))
		if err != nil || got.Disabled != want.Disabled || !got.Since.Equal(want.Since) {
			t.Fatalf("round trip %+v: %+v, %v", want, got, err)
		}
	})
}
