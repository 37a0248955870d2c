package gateway_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/gateway"
	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/store/postgres"
	"github.com/leveehq/levee/store/sqlite"
	"github.com/leveehq/levee/webhook"
)

// TestWebhookAcceptedByTheStoreDedupeStaysSeen: webhook routes on SQLite
// and PostgreSQL queue stores dedupe in the enqueue; an earlier levee kept
// accepted event ids in the idempotency store for the route's retention
// (72h) and in the queue for 24h only. An event that earlier version
// accepted more than a day ago (its record written here the way that
// version wrote it, through NewWebhookDedupe) and that its provider sends
// again is a duplicate: never delivered again. A new event is accepted and
// delivered. Once one retention has passed since the route first deduped
// in the enqueue (the marker the gateway keeps in the store, set back
// here), the store is no longer read.
func TestWebhookAcceptedByTheStoreDedupeStaysSeen(t *testing.T) {
	for name, open := range map[string]func(t *testing.T) (string, idempotency.Store){
		"sqlite": func(t *testing.T) (string, idempotency.Store) {
			path := filepath.Join(t.TempDir(), "levee.db")
			st, err := sqlite.Open(path, sqlite.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			return fmt.Sprintf("store: {type: sqlite, sqlite: {path: %s}}\n", path), st
		},
		"postgres": func(t *testing.T) (string, idempotency.Store) {
			pool, schema := pgSchema(t)
			st, err := postgres.New(pool, postgres.Options{Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Migrate(context.Background()); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("store: {type: postgres, postgres: {url: %q, schema: %s}}\nqueue_store: {type: postgres, postgres: {schema: %s}}\n",
				postgresURL(), schema, schema), st
		},
	} {
		t.Run(name+"/after the transition", func(t *testing.T) {
			// The marker says the route moved its dedupe into the queue
			// more than a retention ago: the store is not consulted, so an
			// id only it knows is accepted (its provider stopped retrying
			// it by then).
			ctx := context.Background()
			storeCfg, st := open(t)
			tok := idempotency.NewToken()
			now := time.Now()
			if res, err := st.Claim(ctx, idempotency.ClaimRequest{Key: "levee:webhook-since:provider", Token: tok, Now: now,
				LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
				t.Fatalf("marker: %+v %v", res, err)
			}
			if err := st.Complete(ctx, "levee:webhook-since:provider", tok, idempotency.Response{Status: http.StatusOK,
				Body: []byte(now.Add(-73 * time.Hour).UTC().Format(time.RFC3339Nano))}, now, now.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			acceptedLongAgo(t, st, "evt_older")
			rc := newReceiver(t, "X-Levee-Webhook-Id")
			g := startGateway(t, asyncConfig(storeCfg, rc.url))
			resp, body := doRequest(t, signedWebhook(t, g.base, "evt_older", `{"n":2}`, now))
			if resp.StatusCode != http.StatusAccepted || !strings.Contains(body, `"accepted"`) {
				t.Fatalf("evt_older after the transition: %d %s, want accepted", resp.StatusCode, body)
			}
			waitFor(t, "evt_older delivered", func() bool { return rc.count("evt_older") == 1 })
		})
		t.Run(name+"/a new deployment", func(t *testing.T) {
			// No earlier version wrote any record for the route: its events
			// are not looked up in the store (one probe of the key range
			// stands for them). A record an earlier replica writes later is
			// found once the probe's answer is older than its interval
			// (that replica also enqueued its event, under the same dedupe
			// id, so the queue knows it meanwhile).
			storeCfg, st := open(t)
			rc := newReceiver(t, "X-Levee-Webhook-Id")
			g := startGateway(t, asyncConfig(storeCfg, rc.url))
			gateway.SetLegacyProbeEvery(g.srv, 100*time.Millisecond)
			send := func(id, want string) { t.Helper(); sendWebhookWant(t, g, id, want) }
			for _, id := range []string{"evt_1", "evt_2", "evt_3"} {
				send(id, "accepted")
			}
			send("evt_1", "duplicate")
			if n := metric(t, g, "levee_store_operation_duration_seconds", "op", "lookup"); n != 0 {
				t.Fatalf("%v store lookups for events of a route no earlier version served, want 0", n)
			}
			if n := metric(t, g, "levee_store_operation_duration_seconds", "op", "key_prefix"); n < 1 {
				t.Fatalf("%v probes of the store counted, want at least 1", n)
			}
			acceptedLongAgo(t, st, "evt_late")
			time.Sleep(150 * time.Millisecond) // past the last probe's answer
			send("evt_late", "duplicate")
			if n := metric(t, g, "levee_store_operation_duration_seconds", "op", "lookup"); n != 1 {
				t.Fatalf("%v store lookups after an earlier record appeared, want 1 (evt_late)", n)
			}
			waitFor(t, "evt_1..3 delivered", func() bool {
				return rc.count("evt_1") == 1 && rc.count("evt_2") == 1 && rc.count("evt_3") == 1
			})
			if n := rc.count("evt_late"); n != 0 {
				t.Fatalf("evt_late delivered %d times: an earlier replica accepted it", n)
			}
		})
		t.Run(name+"/a marker left half-written", func(t *testing.T) {
			// A replica stopped between writing the marker and completing
			// it: the next one takes it over once its lease lapsed, rather
			// than starting the transition again at every start.
			ctx := context.Background()
			storeCfg, st := open(t)
			now := time.Now()
			if res, err := st.Claim(ctx, idempotency.ClaimRequest{Key: "levee:webhook-since:provider", Token: idempotency.NewToken(),
				Now: now.Add(-2 * time.Minute), LeaseUntil: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil || !res.Claimed {
				t.Fatalf("marker: %+v %v", res, err)
			}
			rc := newReceiver(t, "X-Levee-Webhook-Id")
			g := startGateway(t, asyncConfig(storeCfg, rc.url))
			if resp, body := doRequest(t, signedWebhook(t, g.base, "evt_1", `{"n":1}`, now)); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("evt_1: %d %s", resp.StatusCode, body)
			}
			marker, err := st.Lookup(ctx, "levee:webhook-since:provider", time.Now())
			if err != nil || marker.State != idempotency.StateCompleted {
				t.Fatalf("marker after a webhook: %+v %v, want completed", marker, err)
			}
		})
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			storeCfg, st := open(t)
			acceptedLongAgo(t, st, "evt_old")

			rc := newReceiver(t, "X-Levee-Webhook-Id")
			g := startGateway(t, asyncConfig(storeCfg, rc.url))
			now := time.Now()
			send := func(id, want string) { t.Helper(); sendWebhookWant(t, g, id, want) }
			send("evt_old", "duplicate")
			send("evt_new", "accepted")
			send("evt_new", "duplicate")
			waitFor(t, "evt_new delivered", func() bool { return rc.count("evt_new") == 1 })
			// The marker: when the route first deduped in the enqueue.
			marker, err := st.Lookup(ctx, "levee:webhook-since:provider", time.Now())
			if err != nil || marker.State != idempotency.StateCompleted {
				t.Fatalf("marker: %+v %v", marker, err)
			}
			since, err := time.Parse(time.RFC3339Nano, string(marker.Response.Body))
			if err != nil || since.Before(now.Add(-time.Minute)) || since.After(time.Now()) {
				t.Fatalf("marker says %q (%v), want about %v", marker.Response.Body, err, now)
			}
			if n := rc.count("evt_old"); n != 0 {
				t.Fatalf("evt_old delivered %d times: the earlier version accepted it", n)
			}

		})
	}
}

// sendWebhookWant sends a signed event and checks that it is answered 202
// with the status word want ("accepted" or "duplicate").
func sendWebhookWant(t *testing.T, g *running, id, want string) {
	t.Helper()
	resp, body := doRequest(t, signedWebhook(t, g.base, id, `{"n":1}`, time.Now()))
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(body, `"`+want+`"`) {
		t.Fatalf("%s: %d %s, want 202 %s", id, resp.StatusCode, body, want)
	}
}

// acceptedLongAgo writes what an earlier levee left for an event id it
// accepted with the default 72h retention, more than the queue's 24h
// dedupe window ago (the test's queue never saw it): a completed record
// under the route's dedupe key, through the same NewWebhookDedupe.
func acceptedLongAgo(t *testing.T, st idempotency.Store, id string) {
	t.Helper()
	ctx := context.Background()
	d := gateway.NewWebhookDedupe(st, 72*time.Hour, 5*time.Second)
	done, seen, err := d.Claim(ctx, webhook.Event{Source: "provider", ID: id})
	if err != nil || seen {
		t.Fatalf("writing the earlier version's record for %s: seen %v, %v", id, seen, err)
	}
	if err := done(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// The dedupe key's format is persistent: "levee:webhook:<route>:" and
	// the first 16 bytes of the id's SHA-256, in hex.
	sum := sha256.Sum256([]byte(id))
	if rec, err := st.Lookup(ctx, "levee:webhook:provider:"+hex.EncodeToString(sum[:16]), time.Now()); err != nil || rec.State != idempotency.StateCompleted {
		t.Fatalf("the record for %s is not under the expected key: %+v %v", id, rec, err)
	}
}
