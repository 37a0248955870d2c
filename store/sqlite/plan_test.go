package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leveehq/levee/idempotency"
)

// TestStatementsUseTheirIndexes pins the query plans: every statement on
// one key finds it through the key's index (never a scan, never the open
// index, which would read every open record), List reads the open index,
// and DeleteExpired the expires_at index. SQLite plans each statement for
// the file as it is; these hold on an empty file and on a filled one.
func TestStatementsUseTheirIndexes(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "plan.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	checkPlans(t, s, "empty file")
	now := time.Now()
	for i := range 2000 {
		tok := idempotency.NewToken()
		key := fmt.Sprintf("k%d", i)
		if _, err := s.Claim(ctx, idempotency.ClaimRequest{Key: key, Token: tok, Now: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := s.Complete(ctx, key, tok, idempotency.Response{Status: 200}, now, now.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkPlans(t, s, "2,000 records")
}

func checkPlans(t *testing.T, s *Store, file string) {
	t.Helper()
	ctx := context.Background()
	q := s.q
	byKey := "USING INDEX sqlite_autoindex_idempotency_keys_1 (key=?)"
	for _, tc := range []struct{ name, sql, want string }{
		{"takeover", q.takeover, byKey},
		{"get", q.get, byKey},
		{"replay", q.replay, byKey},
		{"lookup", q.lookup, byKey},
		{"renew", q.renew, byKey},
		{"complete", q.complete, byKey},
		{"release", q.release, byKey},
		{"mark unknown", q.markUnknown, byKey},
		{"list", q.list, "USING INDEX idempotency_keys_open (state=?)"},
		{"key prefix", q.keyPrefix, "INDEX sqlite_autoindex_idempotency_keys_1 (key>?)"},
		{"delete expired", q.deleteExpired, "INDEX idempotency_keys_expires_at (expires_at<?)"},
	} {
		rows, err := s.db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+tc.sql, make([]any, strings.Count(tc.sql, "?"))...)
		if err != nil {
			t.Fatalf("%s, %s: %v", file, tc.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		all := strings.Join(plan, "; ")
		if !strings.Contains(all, tc.want) {
			t.Errorf("%s, %s: plan %q, want it to use %q", file, tc.name, all, tc.want)
		}
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN idempotency_keys") && !strings.Contains(step, " USING ") {
				t.Errorf("%s, %s: plan %q scans the table", file, tc.name, all)
			}
		}
	}
}
