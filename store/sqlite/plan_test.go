package sqlite

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
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
		{"delete expired", q.deleteExpired, "INDEX idempotency_keys_expires_at (expires_at<?)"},
	} {
		rows, err := s.db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+tc.sql, make([]any, strings.Count(tc.sql, "?"))...)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
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
			t.Errorf("%s: plan %q, want it to use %q", tc.name, all, tc.want)
		}
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN idempotency_keys") && !strings.Contains(step, " USING ") {
				t.Errorf("%s: plan %q scans the table", tc.name, all)
			}
		}
	}
}
