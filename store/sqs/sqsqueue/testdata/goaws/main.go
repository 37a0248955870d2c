// Command goaws runs the goaws SQS emulator (github.com/Admiral-Piett/goaws
// v0.4.5) on a 127.0.0.1 address behind a front that speaks the AWS JSON
// 1.0 protocol, which the AWS SDK for Go v2 uses for SQS since
// service/sqs v1.25; goaws v0.4.5 speaks only the older query protocol
// (form-encoded requests, XML answers). The front translates the
// operations levee's sqsqueue uses, one to one; everything else goaws
// does (visibility, delays, receive, delete, redrive to a DLQ after
// maxReceiveCount) is goaws's own. TagQueue and ListQueueTags, which goaws
// lacks, the front keeps in memory per queue URL (with SQS's limits: 50
// tags, keys up to 128 and values up to 256 characters), so that a levee
// process (the gateway's tests) can run on it unwrapped; the other
// operation goaws lacks (StartMessageMoveTask) answers
// UnknownOperationException.
//
// Usage: goaws 127.0.0.1:PORT
package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Admiral-Piett/goaws/app"
	"github.com/Admiral-Piett/goaws/app/gosqs"
	"github.com/Admiral-Piett/goaws/app/router"
	logrus "github.com/sirupsen/logrus"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: goaws 127.0.0.1:PORT")
	}
	addr := os.Args[1]
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		log.Fatalf("goaws: want a 127.0.0.1:PORT address, got %q", addr)
	}
	logrus.SetLevel(logrus.WarnLevel)
	app.CurrentEnvironment = app.Environment{
		Host: host, Port: port, Region: "", AccountID: "100010001000",
		QueueAttributeDefaults: app.EnvQueueAttributes{VisibilityTimeout: 30, MaximumMessageSize: 262144},
	}
	quit := make(chan struct{})
	go gosqs.PeriodicTasks(100*time.Millisecond, quit)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(l, &front{goaws: router.New()}))
}

// front translates, and runs queue creation alone: goaws v0.4.5 reads its
// queue map without its lock in most handlers (GetQueueUrl, SendMessage,
// ReceiveMessage, ...), so a CreateQueue beside them can crash it with a
// concurrent map write.
type front struct {
	goaws http.Handler
	mu    sync.RWMutex

	tagsMu sync.Mutex
	tags   map[string]map[string]string // queue URL -> tags
}

// tagging answers TagQueue and ListQueueTags.
func (f *front) tagging(w http.ResponseWriter, action string, in map[string]any) {
	u := str(in["QueueUrl"])
	f.tagsMu.Lock()
	defer f.tagsMu.Unlock()
	var out any = map[string]any{}
	switch action {
	case "TagQueue":
		next := map[string]string{}
		for k, v := range f.tags[u] {
			next[k] = v
		}
		for k, v := range asMap(in["Tags"]) {
			if len(k) > 128 || len(str(v)) > 256 {
				jsonError(w, 400, "InvalidParameterValue", "tag "+k+" is too long")
				return
			}
			next[k] = str(v)
		}
		if len(next) > 50 {
			jsonError(w, 400, "InvalidParameterValue", "a queue has at most 50 tags")
			return
		}
		if f.tags == nil {
			f.tags = map[string]map[string]string{}
		}
		f.tags[u] = next
	case "ListQueueTags":
		tags := map[string]string{}
		for k, v := range f.tags[u] {
			tags[k] = v
		}
		out = map[string]any{"Tags": tags}
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	_ = json.NewEncoder(w).Encode(out)
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	if !strings.HasPrefix(target, "AmazonSQS.") {
		f.goaws.ServeHTTP(w, r) // the query protocol, as is
		return
	}
	action := strings.TrimPrefix(target, "AmazonSQS.")
	var in map[string]any
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, &in); err != nil {
		jsonError(w, 400, "InvalidParameterValue", err.Error())
		return
	}
	if action == "TagQueue" || action == "ListQueueTags" {
		f.tagging(w, action, in)
		return
	}
	form, ok := toForm(action, in)
	if !ok {
		jsonError(w, 400, "UnknownOperationException", "goaws v0.4.5 does not implement "+action)
		return
	}
	form.Set("Action", action)
	if action == "CreateQueue" || action == "DeleteQueue" {
		f.mu.Lock()
		defer f.mu.Unlock()
	} else {
		f.mu.RLock()
		defer f.mu.RUnlock()
	}
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	f.goaws.ServeHTTP(rec, req)
	if rec.Code >= 300 {
		var e struct {
			Error struct{ Code, Message string } `xml:"Error"`
		}
		_ = xml.Unmarshal(rec.Body.Bytes(), &e)
		jsonError(w, 400, errorCode(e.Error.Code), e.Error.Message)
		return
	}
	out, err := fromXML(action, rec.Body.Bytes())
	if err != nil {
		jsonError(w, 500, "InternalError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	_ = json.NewEncoder(w).Encode(out)
}

func jsonError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	w.Header().Set("X-Amzn-Query-Error", code+";Sender")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": "com.amazonaws.sqs#" + code, "message": msg})
}

// errorCode maps goaws's query error codes to the SDK's JSON ones.
func errorCode(c string) string {
	switch c {
	case "AWS.SimpleQueueService.NonExistentQueue":
		return "QueueDoesNotExist"
	case "AWS.SimpleQueueService.MessageNotInFlight":
		return "MessageNotInflight"
	case "AWS.SimpleQueueService.QueueExists":
		// goaws answers this for DeleteMessage of an unknown receipt.
		return "ReceiptHandleIsInvalid"
	}
	return strings.TrimPrefix(c, "AWS.SimpleQueueService.")
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}

// toForm flattens the JSON input of action into query parameters.
func toForm(action string, in map[string]any) (url.Values, bool) {
	f := url.Values{}
	scalars := []string{"QueueUrl", "QueueName", "MessageBody", "DelaySeconds", "MaxNumberOfMessages",
		"VisibilityTimeout", "WaitTimeSeconds", "ReceiptHandle"}
	for _, k := range scalars {
		if v, ok := in[k]; ok {
			f.Set(k, str(v))
		}
	}
	switch action {
	case "CreateQueue", "SetQueueAttributes":
		i := 0
		for k, v := range asMap(in["Attributes"]) {
			i++
			f.Set(fmt.Sprintf("Attribute.%d.Name", i), k)
			f.Set(fmt.Sprintf("Attribute.%d.Value", i), str(v))
		}
	case "GetQueueAttributes":
		for i, v := range asList(in["AttributeNames"]) {
			f.Set(fmt.Sprintf("AttributeName.%d", i+1), str(v))
		}
	case "SendMessageBatch":
		for i, e := range asList(in["Entries"]) {
			for k, v := range asMap(e) {
				f.Set(fmt.Sprintf("SendMessageBatchRequestEntry.%d.%s", i+1, k), str(v))
			}
		}
	case "GetQueueUrl", "SendMessage", "ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility",
		"DeleteQueue", "PurgeQueue":
	default:
		return nil, false
	}
	return f, true
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
func asList(v any) []any         { l, _ := v.([]any); return l }

type attr struct{ Name, Value string }

// fromXML turns goaws's XML answer to action into the JSON answer.
func fromXML(action string, b []byte) (any, error) {
	switch action {
	case "CreateQueue", "GetQueueUrl":
		var r struct {
			Created string `xml:"CreateQueueResult>QueueUrl"`
			Got     string `xml:"GetQueueUrlResult>QueueUrl"`
		}
		if err := xml.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		return map[string]string{"QueueUrl": r.Created + r.Got}, nil
	case "GetQueueAttributes":
		var r struct {
			Attrs []attr `xml:"GetQueueAttributesResult>Attribute"`
		}
		if err := xml.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, a := range r.Attrs {
			m[a.Name] = a.Value
		}
		return map[string]any{"Attributes": m}, nil
	case "SendMessage":
		var r struct {
			ID  string `xml:"SendMessageResult>MessageId"`
			MD5 string `xml:"SendMessageResult>MD5OfMessageBody"`
		}
		if err := xml.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		return map[string]string{"MessageId": r.ID, "MD5OfMessageBody": r.MD5}, nil
	case "SendMessageBatch":
		var r struct {
			OK []struct {
				ID        string `xml:"Id"`
				MessageID string `xml:"MessageId"`
				MD5       string `xml:"MD5OfMessageBody"`
			} `xml:"SendMessageBatchResult>SendMessageBatchResultEntry"`
			Failed []struct {
				ID          string `xml:"Id"`
				Code        string `xml:"Code"`
				Message     string `xml:"Message"`
				SenderFault bool   `xml:"SenderFault"`
			} `xml:"SendMessageBatchResult>BatchResultErrorEntry"`
		}
		if err := xml.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		ok := []map[string]string{}
		for _, e := range r.OK {
			ok = append(ok, map[string]string{"Id": e.ID, "MessageId": e.MessageID, "MD5OfMessageBody": e.MD5})
		}
		failed := []map[string]any{}
		for _, e := range r.Failed {
			failed = append(failed, map[string]any{"Id": e.ID, "Code": e.Code, "Message": e.Message, "SenderFault": e.SenderFault})
		}
		return map[string]any{"Successful": ok, "Failed": failed}, nil
	case "ReceiveMessage":
		var r struct {
			Messages []struct {
				MessageID string `xml:"MessageId"`
				Receipt   string `xml:"ReceiptHandle"`
				MD5       string `xml:"MD5OfBody"`
				Body      string `xml:"Body"`
				Attrs     []attr `xml:"Attribute"`
			} `xml:"ReceiveMessageResult>Message"`
		}
		if err := xml.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		ms := []map[string]any{}
		for _, m := range r.Messages {
			attrs := map[string]string{}
			for _, a := range m.Attrs {
				attrs[a.Name] = a.Value
			}
			ms = append(ms, map[string]any{"MessageId": m.MessageID, "ReceiptHandle": m.Receipt, "MD5OfBody": m.MD5, "Body": m.Body, "Attributes": attrs})
		}
		return map[string]any{"Messages": ms}, nil
	}
	return map[string]any{}, nil
}
