package gateway_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/internal/goaws"
	"github.com/leveehq/levee/store/nats/natsqueue"
	"github.com/leveehq/levee/store/postgres"
	"github.com/leveehq/levee/store/sqlite"
	"github.com/leveehq/levee/webhook"
	"github.com/leveehq/levee/webhook/webhooktest"
)

const testWebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
const testAdminToken = "async-test-token-0123456789"

func postgresURL() string {
	if u := os.Getenv("LEVEE_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// pgSchema returns a fresh schema name on the test PostgreSQL, dropped
// (that schema only) when the test ends. Unreachable: skip, or fail under
// CI=true.
func pgSchema(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, postgresURL())
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		msg := fmt.Sprintf("PostgreSQL is not reachable (set LEVEE_POSTGRES_URL): %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	var rb [5]byte
	_, _ = rand.Read(rb[:])
	schema := "levee_async_" + hex.EncodeToString(rb[:])
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`)
		pool.Close()
	})
	return pool, schema
}

// The webhook Dedupe over the idempotency engine passes the webhook
// package's conformance suite on SQLite and PostgreSQL.
func TestWebhookDedupeConformance(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		st, err := sqlite.Open(filepath.Join(t.TempDir(), "levee.db"), sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		webhooktest.TestDedupe(t, func(t *testing.T) webhook.Dedupe {
			return gateway.NewWebhookDedupe(st, time.Hour, 2*time.Second)
		})
	})
	t.Run("postgres", func(t *testing.T) {
		pool, schema := pgSchema(t)
		st, err := postgres.New(pool, postgres.Options{Schema: schema})
		if err == nil {
			err = st.Migrate(context.Background())
		}
		if err != nil {
			t.Fatal(err)
		}
		webhooktest.TestDedupe(t, func(t *testing.T) webhook.Dedupe {
			return gateway.NewWebhookDedupe(st, time.Hour, 2*time.Second)
		})
	})
}

// receiver is the internal upstream: it counts deliveries by a header
// and answers fail() when set.
type receiver struct {
	mu     sync.Mutex
	got    map[string]int
	bodies map[string]string
	fail   bool
	srv    *http.Server
	url    string
	header string
}

func newReceiver(t testing.TB, header string) *receiver {
	t.Helper()
	rc := &receiver{got: map[string]int{}, bodies: map[string]string{}, header: header}
	rc.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		fail := rc.fail
		if !fail {
			id := r.Header.Get(rc.header)
			rc.got[id]++
			rc.bodies[id] = string(b)
		}
		rc.mu.Unlock()
		if fail {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "boom: the receiver is down", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = rc.srv.Serve(ln) }()
	t.Cleanup(func() { _ = rc.srv.Close() })
	rc.url = "http://" + ln.Addr().String() + "/events"
	return rc
}

func (rc *receiver) setFail(v bool) { rc.mu.Lock(); rc.fail = v; rc.mu.Unlock() }

func (rc *receiver) count(id string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.got[id]
}

func (rc *receiver) total() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for _, c := range rc.got {
		n += c
	}
	return n
}

// waitFor polls cond every 20ms until it holds or 20s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric sums the samples of name whose labels include every pair given
// (counters: their values; histograms: their observation counts).
func metric(t *testing.T, g *running, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue sample
				}
			}
			n += m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return n
}

// backends are the store configs the async tests run on: the embedded
// SQLite file, PostgreSQL (one schema of the test's own), JetStream (a
// prefix of its own) and SQS (goaws, queues of a prefix of their own).
func backends(t *testing.T) map[string]func(t *testing.T) string {
	return map[string]func(t *testing.T) string{
		"sqlite": func(t *testing.T) string {
			return fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(t.TempDir(), "levee.db"))
		},
		"postgres": func(t *testing.T) string {
			_, schema := pgSchema(t)
			return fmt.Sprintf("store: {type: postgres, postgres: {url: %q, schema: %s}}\nqueue_store: {type: postgres, postgres: {schema: %s}}\n", postgresURL(), schema, schema)
		},
		"nats": func(t *testing.T) string {
			server, prefix := natsPrefix(t)
			return fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\nqueue_store: {type: nats, nats: {url: %q, prefix: %s, ack_wait: 5s}}\n",
				filepath.Join(t.TempDir(), "levee.db"), server, prefix)
		},
		"sqs": func(t *testing.T) string {
			endpoint, prefix := sqsQueues(t, "events", "partner")
			return fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\nqueue_store: {type: sqs, sqs: {region: us-east-1, endpoint: %s, prefix: %s}}\n",
				filepath.Join(t.TempDir(), "levee.db"), endpoint, prefix)
		},
	}
}

// sqsQueues starts goaws (the SQS emulator; see internal/goaws), creates
// the SQS queues of names and their DLQs under a prefix of the test's own,
// points the AWS SDK's default credential chain at test credentials, and
// returns the endpoint and the prefix. The queues' visibility timeout is
// the gateway's default lease (60s): goaws applies a queue's, not a
// receive's.
func sqsQueues(t *testing.T, names ...string) (string, string) {
	t.Helper()
	endpoint := goaws.Start(t, goaws.Build(t))
	t.Setenv("AWS_ACCESS_KEY_ID", "levee-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "levee-test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	c := sqs.New(sqs.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), HTTPClient: &http.Client{Transport: tr},
		Credentials: credentials.NewStaticCredentialsProvider("levee-test", "levee-test", "")})
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "gw" + hex.EncodeToString(b[:]) + "-"
	for _, n := range names {
		for _, q := range []string{prefix + n + "-dlq", prefix + n} {
			if _, err := c.CreateQueue(context.Background(), &sqs.CreateQueueInput{QueueName: aws.String(q),
				Attributes: map[string]string{"VisibilityTimeout": "60"}}); err != nil {
				t.Fatalf("CreateQueue %s: %v", q, err)
			}
		}
	}
	return endpoint, prefix
}

// natsPrefix returns the NATS server (LEVEE_NATS_URL) and a prefix of
// this test's own, whose streams and buckets are deleted at the end; it
// skips without a server, or fails with CI=true.
func natsPrefix(t testing.TB) (string, string) {
	t.Helper()
	server := os.Getenv("LEVEE_NATS_URL")
	if server == "" {
		server = "nats://127.0.0.1:4222"
	}
	nc, err := nats.Connect(server, nats.Timeout(3*time.Second), nats.MaxReconnects(0))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("NATS is required in CI but unreachable at %s: %v", server, err)
		}
		t.Skipf("NATS unreachable at %s: %v", server, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	prefix := "GWTEST_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = natsqueue.Destroy(ctx, js, prefix)
		nc.Close()
	})
	return server, prefix
}

func asyncConfig(store, target string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0, token: %s}
%squeues:
  - name: events
    target: %s
    backoff_base: 1ms
    backoff_max: 5ms
    max_attempts: 3
  - name: partner
    target: %s
    path: /async/partner
    backoff_base: 1ms
    backoff_max: 5ms
    max_attempts: 3
    idempotency: {}
webhooks:
  - name: provider
    path: /webhooks/provider
    scheme: standard-webhooks
    secrets: [%s]
    queue: events
`, testAdminToken, store, target, target, testWebhookSecret)
}

func signedWebhook(t testing.TB, base, id, body string, at time.Time) *http.Request {
	t.Helper()
	s, err := webhook.NewStandardWebhooks(webhook.Config{Secrets: []string{testWebhookSecret}})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, base+"/webhooks/provider", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if err := s.Sign(req.Header, id, []byte(body), at); err != nil {
		t.Fatal(err)
	}
	return req
}

func doRequest(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, string(b)
}

// TestWebhookMessageIDIsTheEvents: on the backends whose dedupe window is
// their own (JetStream, SQS) a deduping webhook route's message id is its
// dedupe key, so JetStream needs no map from dedupe id to first message
// id; on SQLite and PostgreSQL, and on a route with dedupe off (whose
// re-sent event must reach the target again), the queue names the message.
func TestWebhookMessageIDIsTheEvents(t *testing.T) {
	sum := sha256.Sum256([]byte("evt_1"))
	key := "levee:webhook:provider:" + hex.EncodeToString(sum[:16])
	for name, store := range backends(t) {
		for _, dedupe := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/dedupe=%v", name, dedupe), func(t *testing.T) {
				cfg := asyncConfig(store(t), "RECEIVER")
				if !dedupe {
					cfg = strings.Replace(cfg, "    queue: events\n", "    queue: events\n    dedupe: false\n", 1)
				}
				testWebhookMessageID(t, cfg, key, dedupe && (name == "nats" || name == "sqs"))
			})
		}
	}
}

// testWebhookMessageID sends one event through cfg (its RECEIVER replaced
// by the receiver's URL) and checks whether its message id is key.
func testWebhookMessageID(t *testing.T, cfg, key string, want bool) {
	t.Helper()
	rc := newReceiver(t, "X-Levee-Message-Id")
	g := startGateway(t, strings.ReplaceAll(cfg, "RECEIVER", rc.url))
	if resp, body := doRequest(t, signedWebhook(t, g.base, "evt_1", `{"n":1}`, time.Now())); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	waitFor(t, "evt_1 delivered", func() bool { return rc.total() == 1 })
	if got := rc.count(key) == 1; got != want {
		t.Fatalf("deliveries by message id %v: message id is the dedupe key %v, want %v", rc.got, got, want)
	}
}

// A signed webhook sent three times, and another sent twice at once, are
// each answered 2xx every time, stored once and delivered once; a
// tampered byte, a stale and a future timestamp are refused with their
// problem types and never stored.
func TestWebhookAcceptedOnceAndDeliveredOnce(t *testing.T) {
	for name, store := range backends(t) {
		t.Run(name, func(t *testing.T) {
			rc := newReceiver(t, "X-Levee-Webhook-Id")
			g := startGateway(t, asyncConfig(store(t), rc.url))
			now := time.Now()
			for i := range 3 {
				resp, body := doRequest(t, signedWebhook(t, g.base, "evt_1", `{"type":"payment.succeeded","n":1}`, now))
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("send %d: %d %s", i+1, resp.StatusCode, body)
				}
				if want := map[bool]string{true: `"accepted"`, false: `"duplicate"`}[i == 0]; !strings.Contains(body, want) {
					t.Fatalf("send %d: %s, want status %s", i+1, body, want)
				}
			}
			var wg sync.WaitGroup
			codes := make([]int, 2)
			for i := range codes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := http.DefaultClient.Do(signedWebhook(t, g.base, "evt_2", `{"n":2}`, now))
					if err != nil {
						t.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					codes[i] = resp.StatusCode
				}()
			}
			wg.Wait()
			if codes[0] != http.StatusAccepted || codes[1] != http.StatusAccepted {
				t.Fatalf("concurrent sends answered %v, want both 202", codes)
			}

			// Refused: never stored.
			tampered := signedWebhook(t, g.base, "evt_3", `{"amount":100}`, now)
			tampered.Body = io.NopCloser(strings.NewReader(`{"amount":900}`))
			for _, c := range []struct {
				req  *http.Request
				typ  string
				code int
			}{
				{tampered, "webhook-signature-invalid", http.StatusForbidden},
				{signedWebhook(t, g.base, "evt_4", `{}`, now.Add(-10*time.Minute)), "webhook-timestamp-stale", http.StatusBadRequest},
				{signedWebhook(t, g.base, "evt_5", `{}`, now.Add(10*time.Minute)), "webhook-timestamp-future", http.StatusBadRequest},
			} {
				resp, body := doRequest(t, c.req)
				if resp.StatusCode != c.code || !strings.Contains(body, c.typ) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
					t.Fatalf("%s: got %d %s", c.typ, resp.StatusCode, body)
				}
				if got := metric(t, g, "levee_webhook_requests_total", "route", "provider", "outcome", "rejected", "type", c.typ); got != 1 {
					t.Fatalf("%s counted %v times, want 1", c.typ, got)
				}
			}

			waitFor(t, "both events delivered", func() bool {
				return metric(t, g, "levee_queue_delivered_total", "queue", "events") == 2
			})
			if n := metric(t, g, "levee_queue_enqueued_total", "queue", "events", "source", "webhook"); n != 2 {
				t.Fatalf("%v messages stored, want 2 (one per event id)", n)
			}
			if rc.count("evt_1") != 1 || rc.count("evt_2") != 1 || rc.total() != 2 {
				t.Fatalf("deliveries %v, want evt_1 and evt_2 once each", rc.got)
			}
			if got := rc.bodies["evt_1"]; got != `{"type":"payment.succeeded","n":1}` {
				t.Fatalf("delivered body %q", got)
			}
		})
	}
}

func adminCall(t *testing.T, g *running, method, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+g.srv.AdminAddr()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	req.Header.Set("X-Levee-Operator", "tester")
	resp, body := doRequest(t, req)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal([]byte(body), out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, body)
		}
	}
	return resp.StatusCode
}

// An async enqueue answers 202 with an id and a Location; a retry with
// the same Idempotency-Key answers the same id. A target failing every
// time puts the message in the DLQ with every attempt's error; a replay
// delivers it once, with the same message id.
func TestEnqueueDeadLetterAndReplay(t *testing.T) {
	for name, store := range backends(t) {
		t.Run(name, func(t *testing.T) {
			rc := newReceiver(t, "X-Levee-Message-Id")
			rc.setFail(true)
			g := startGateway(t, asyncConfig(store(t), rc.url))

			enqueue := func() (string, string) {
				req, _ := http.NewRequest(http.MethodPost, g.base+"/async/partner", bytes.NewReader([]byte(`{"charge":42}`)))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", "batch-7-item-1")
				resp, body := doRequest(t, req)
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("enqueue: %d %s", resp.StatusCode, body)
				}
				var out struct{ ID string }
				if err := json.Unmarshal([]byte(body), &out); err != nil || out.ID == "" {
					t.Fatalf("enqueue answer %q: %v", body, err)
				}
				return out.ID, resp.Header.Get("Location")
			}
			id, loc := enqueue()
			if id2, _ := enqueue(); id2 != id {
				t.Fatalf("retried enqueue answered id %s, want %s", id2, id)
			}
			if loc != "/async/partner/"+id {
				t.Fatalf("Location %q", loc)
			}

			var list gateway.DLQList
			waitFor(t, "the message in the DLQ", func() bool {
				adminCall(t, g, http.MethodGet, "/dlq?queue=partner", &list)
				return len(list.Messages) == 1
			})
			// levee_queue_depth comes from backends that can count cheaply
			// (SQLite, PostgreSQL); JetStream and SQS do not report it.
			if d := gauge(t, g, "levee_queue_depth", "queue", "partner", "state", "dead"); d != 1 && name != "nats" && name != "sqs" {
				t.Fatalf("levee_queue_depth{dead} = %v, want 1", d)
			}
			var dm gateway.DLQMessage
			if code := adminCall(t, g, http.MethodGet, "/dlq/partner/"+id, &dm); code != http.StatusOK {
				t.Fatalf("show: %d", code)
			}
			if dm.Reason != "max_attempts" || dm.Attempts != 3 || len(dm.History) != 3 || dm.Payload != `{"charge":42}` {
				t.Fatalf("dead message %+v", dm)
			}
			for _, a := range dm.History {
				if a.Status != http.StatusInternalServerError || !strings.Contains(string(a.Body), "boom") || a.Error == "" {
					t.Fatalf("attempt %+v lacks its error", a)
				}
			}
			var st gateway.MessageStatus
			resp, body := doRequest(t, mustGet(t, g.base+loc))
			if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != 200 || st.Status != "dead" {
				t.Fatalf("status %d %s", resp.StatusCode, body)
			}
			if code := adminCall(t, g, http.MethodPost, "/dlq/partner/replay", nil); code != http.StatusBadRequest {
				t.Fatalf("replay without a filter: %d, want 400", code)
			}

			rc.setFail(false)
			var res gateway.DLQResult
			if code := adminCall(t, g, http.MethodPost, "/dlq/partner/replay?id="+url.QueryEscape(id), &res); code != http.StatusOK || res.Messages != 1 {
				t.Fatalf("replay: %d %+v", code, res)
			}
			waitFor(t, "the replayed delivery", func() bool { return rc.count(id) == 1 })
			waitFor(t, "status delivered", func() bool {
				_, body := doRequest(t, mustGet(t, g.base+loc))
				return strings.Contains(body, `"delivered"`)
			})
			if rc.total() != 1 {
				t.Fatalf("deliveries %v, want one", rc.got)
			}
			if n := metric(t, g, "levee_dlq_operation_messages_total", "queue", "partner", "op", "replay"); n != 1 {
				t.Fatalf("replayed messages counted %v", n)
			}
			if !strings.Contains(g.logs.String(), `"operator":"tester"`) {
				t.Fatal("the replay was not logged with its operator")
			}
		})
	}
}

func mustGet(t *testing.T, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// Webhook secrets are redacted in /config; the cross-section rules name
// the field at fault.
func TestAsyncConfig(t *testing.T) {
	cfg, err := gateway.Parse("x.yaml", []byte(asyncConfig("", "http://127.0.0.1:1/x")), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	red := cfg.Redacted()
	if s := red.Webhooks[0].Secrets[0]; s == testWebhookSecret || !strings.Contains(s, "REDACTED") {
		t.Fatalf("secret shown as %q", s)
	}
	if want := strings.TrimSuffix(cfg.Store.SQLite.Path, ".db") + "-queue.db"; cfg.QueueStore.Type != "sqlite" || cfg.QueueStore.SQLite.Path != want {
		t.Fatalf("queue store %+v, want sqlite file %s beside the store's", cfg.QueueStore, want)
	}
	bad := strings.NewReplacer("queue: events", "queue: nope", "scheme: standard-webhooks", "scheme: carrier-pigeon").Replace(asyncConfig("", "ftp://x"))
	_, err = gateway.Parse("x.yaml", []byte(bad), noEnv)
	for _, want := range []string{"webhooks[0].queue", "no queue named \"nope\"", "webhooks[0].scheme", "queues[0].target"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v, want it to name %s", err, want)
		}
	}
}

// A reload rotates webhook secrets without touching the queues: messages
// accepted before it are all delivered; a reload that changes a queue is
// refused, naming the field.
func TestReloadKeepsQueuedMessages(t *testing.T) {
	rc := newReceiver(t, "X-Levee-Message-Id")
	rc.setFail(true)
	cfg := asyncConfig(fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(t.TempDir(), "levee.db")), rc.url)
	cfg = strings.Replace(cfg, "max_attempts: 3\n    idempotency", "max_attempts: 1000\n    idempotency", 1)
	g := startGateway(t, cfg)
	var ids []string
	for i := range 20 {
		resp, body := doRequest(t, mustPost(t, g.base+"/async/partner", fmt.Sprintf(`{"n":%d}`, i)))
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("enqueue: %d %s", resp.StatusCode, body)
		}
		var out struct{ ID string }
		_ = json.Unmarshal([]byte(body), &out)
		ids = append(ids, out.ID)
	}
	const newSecret = "whsec_dGhlIG5ldyBzZWNyZXQgYWZ0ZXIgcm90YXRpb24="
	rotated := strings.Replace(cfg, "secrets: ["+testWebhookSecret+"]", "secrets: ["+newSecret+", "+testWebhookSecret+"]", 1)
	if err := os.WriteFile(g.path, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	s, _ := webhook.NewStandardWebhooks(webhook.Config{Secrets: []string{newSecret}})
	req := mustPost(t, g.base+"/webhooks/provider", `{}`)
	if err := s.Sign(req.Header, "evt_rotated", []byte(`{}`), time.Now()); err != nil {
		t.Fatal(err)
	}
	if resp, body := doRequest(t, req); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook signed with the new secret after reload: %d %s", resp.StatusCode, body)
	}
	if err := os.WriteFile(g.path, []byte(strings.Replace(rotated, "max_attempts: 1000", "max_attempts: 5", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.srv.Reload(); err == nil || !strings.Contains(err.Error(), "queues") {
		t.Fatalf("reload changing a queue: %v, want it refused naming queues", err)
	}
	rc.setFail(false)
	waitFor(t, "every message accepted before the reloads", func() bool {
		for _, id := range ids {
			if rc.count(id) != 1 {
				return false
			}
		}
		return true
	})
}

func mustPost(t *testing.T, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// gauge is metric for gauges.
func gauge(t *testing.T, g *running, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.srv.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue sample
				}
			}
			n += m.GetGauge().GetValue()
		}
	}
	return n
}

// A webhook route's name is part of every event's dedupe key, which is the
// event's message id on a deduping route: a name too long for an id is
// refused when the config is read (not at every event, as a 503), and the
// longest name allowed carries events end to end.
func TestWebhookNameFitsAMessageID(t *testing.T) {
	rc := newReceiver(t, "X-Levee-Message-Id")
	store := fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", filepath.Join(t.TempDir(), "levee.db"))
	longest := strings.Repeat("w", 208)
	named := func(name string) string {
		return strings.Replace(asyncConfig(store, rc.url), "  - name: provider\n", "  - name: "+name+"\n", 1)
	}
	_, err := gateway.Parse("x.yaml", []byte(named(longest+"w")), noEnv)
	if err == nil || !strings.Contains(err.Error(), "webhooks[0].name") || !strings.Contains(err.Error(), "at most 208 bytes, got 209") {
		t.Fatalf("a 209-byte webhook name: %v, want it refused naming webhooks[0].name and the limit", err)
	}
	g := startGateway(t, named(longest))
	if resp, body := doRequest(t, signedWebhook(t, g.base, "evt_long_route", `{"n":1}`, time.Now())); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("an event on the route with the longest name: %d %s", resp.StatusCode, body)
	}
	waitFor(t, "the event on the route with the longest name delivered", func() bool { return rc.total() == 1 })
}
