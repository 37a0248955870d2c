package postgres_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/tcpproxy"
	"github.com/leveehq/levee/store/postgres"
)

// TestLostAnswerIsAnErrorNotARerun: a batch of claims whose answer is lost
// after the server committed it (the connection breaks on the way back)
// gives every caller an error — the outcome is unknown — and is not run
// again: run again, each claim would find its own committed record and be
// told the key is held by someone else.
func TestLostAnswerIsAnErrorNotARerun(t *testing.T) {
	t.Parallel()
	schema, direct := migrated(t, pgx.QueryExecModeCacheStatement, 2)
	u, err := url.Parse(databaseURL())
	if err != nil {
		t.Fatal(err)
	}
	proxy := tcpproxy.Start(t, u.Host)
	u.Host = proxy.Addr()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	s := mustNew(t, pool, postgres.Options{Schema: schema})
	warmUp(t, s) // statements prepared on the pool's one connection

	now := time.Now()
	var reqs []idempotency.ClaimRequest
	for _, k := range []string{"lost/a", "lost/b", "lost/c"} {
		reqs = append(reqs, claimAt(k, now))
	}
	proxy.DropNextAnswer()
	res, errs := postgres.ClaimBatch(s, reqs)
	if proxy.Dropped() != 1 {
		t.Fatalf("the proxy dropped %d answers, want 1", proxy.Dropped())
	}
	for i, r := range reqs {
		if errs[i] == nil || res[i].Claimed || res[i].Existing != nil {
			t.Errorf("%s after a lost answer: %+v, %v; want an error and no result", r.Key, res[i], errs[i])
		}
		if errors.Is(errs[i], idempotency.ErrFenced) {
			t.Errorf("%s: %v, a lost answer is not a fence", r.Key, errs[i])
		}
		// The batch did commit: the record is the caller's own claim.
		rec, err := direct.Lookup(context.Background(), r.Key, now)
		if err != nil || rec.State != idempotency.StateInProgress || rec.Token != r.Token {
			t.Errorf("%s on the server: %+v, %v; want in progress under the lost claim's token", r.Key, rec, err)
		}
	}
}
