package postgres

import "github.com/leveehq/levee/idempotency"

// ClaimBatch runs reqs as one group-commit batch (the writer's run
// function, as if they had queued together), for tests, and returns each
// claim's outcome.
func ClaimBatch(s *Store, reqs []idempotency.ClaimRequest) ([]idempotency.ClaimResult, []error) {
	ops := make([]*writeOp, len(reqs))
	for i, r := range reqs {
		ops[i] = &writeOp{kind: opClaim, req: r, fresh: !s.recent.Has(r.Key)}
	}
	s.runBatch(ops)
	res, errs := make([]idempotency.ClaimResult, len(ops)), make([]error, len(ops))
	for i, op := range ops {
		res[i], errs[i] = op.res, op.err
	}
	return res, errs
}

// KeyPrefixSQL is HasKeyPrefix's statement, for the plan test.
func KeyPrefixSQL(s *Store) string { return s.sql.keyPrefix }
