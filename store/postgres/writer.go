package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/groupcommit"
)

// Group commit. Every operation that writes (Claim, Renew, Complete,
// Release, MarkUnknown) is queued (internal/groupcommit); up to
// maxInFlight goroutines per Store each take whatever has queued and send, per
// kind of operation present, ONE statement carrying all of them as arrays
// (unnest): one round trip, one transaction and one WAL flush for the
// batch instead of one per request. An operation arriving at an idle store
// is sent at once, alone, with the single-row statement it always used. Each row of a batch statement has exactly the
// semantics of the single-row statement: the claim's ON CONFLICT WHERE is
// the same claimable rule, evaluated at that row's own clock reading, the
// blocking record is read with the same FOR SHARE, and fenced writes carry
// their own key and token. Keys are unique within one statement (a second
// operation on a key waits for the next statement of the same batch), and
// rows are inserted in key order, so that two replicas' batches lock rows
// in the same order. If a batch statement fails, nothing of it was
// written, and each of its operations is sent again on its own with the
// single-row statement, so that every caller gets the outcome of its own
// operation.

// maxBatch bounds the operations one statement carries.
const maxBatch = 128

// maxInFlight bounds the batches running at once: while they run, new
// operations queue for the next one, and the server runs them in parallel.
const maxInFlight = 8

// batchTimeout bounds a batch whose callers set no deadline.
const batchTimeout = 30 * time.Second

type opKind uint8

const (
	opClaim opKind = iota
	opRenew
	opComplete
	opRelease
	opMarkUnknown
	numKinds
)

func (k opKind) String() string {
	return [...]string{"claim", "renew", "complete", "release", "mark unknown"}[k]
}

// writeOp is one queued operation and, once run, its result.
type writeOp struct {
	groupcommit.Slot
	kind     opKind
	deadline time.Time // the caller's, if any
	req      idempotency.ClaimRequest
	key      string
	token    int64
	t1, t2   time.Time // renew: lease, exp; complete: exp; mark unknown: now, exp
	resp     []byte

	res idempotency.ClaimResult
	err error
}

// getOp returns a recycled or new operation.
func (s *Store) getOp() *writeOp {
	if op, ok := s.ops.Get().(*writeOp); ok {
		return op
	}
	return new(writeOp)
}

// putOp recycles an operation Do returned nil for, keeping its channel.
func (s *Store) putOp(op *writeOp) {
	slot := op.Slot
	slot.Reset()
	*op = writeOp{Slot: slot}
	s.ops.Put(op)
}

// write runs op through the queue; on nil, op holds the outcome.
func (s *Store) write(ctx context.Context, op *writeOp) error {
	op.deadline, _ = ctx.Deadline()
	if err := s.q.Do(ctx, op); err != nil {
		return fmt.Errorf("postgres: %s: %w", op.kind, err)
	}
	return nil
}

// fencedWrite runs a Renew, Complete, Release or MarkUnknown.
func (s *Store) fencedWrite(ctx context.Context, op *writeOp) error {
	if err := s.write(ctx, op); err != nil {
		return err
	}
	err := op.err
	s.putOp(op)
	return err
}

// runBatch is the queue's run function.
func (s *Store) runBatch(batch []*writeOp) {
	deadline := time.Time{}
	var byKind [numKinds][]*writeOp
	for _, op := range batch {
		if op.Canceled() {
			op.Skip()
			continue
		}
		if op.deadline.IsZero() {
			op.deadline = time.Now().Add(batchTimeout)
		}
		if op.deadline.After(deadline) {
			deadline = op.deadline
		}
		byKind[op.kind] = append(byKind[op.kind], op)
	}
	if deadline.IsZero() {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for _, ops := range byKind {
		for len(ops) > 0 {
			var now, later []*writeOp
			seen := make(map[string]struct{}, len(ops))
			for _, op := range ops {
				k := op.opKey()
				if _, dup := seen[k]; dup {
					later = append(later, op)
					continue
				}
				seen[k] = struct{}{}
				now = append(now, op)
			}
			if len(now) == 1 {
				// Alone: the single-row statement, which PostgreSQL plans
				// in a fraction of the batch statement's time (that one's
				// planning is paid once per batch, or once per connection
				// when pgx prepares it).
				s.runOne(ctx, now[0])
				ops = later
				continue
			}
			slices.SortFunc(now, func(a, b *writeOp) int { return strings.Compare(a.opKey(), b.opKey()) })
			if err := s.runStatement(ctx, now); err != nil {
				for _, op := range now {
					s.runOne(ctx, op)
				}
			}
			ops = later
		}
	}
}

func (op *writeOp) opKey() string {
	if op.kind == opClaim {
		return op.req.Key
	}
	return op.key
}

// runStatement sends ops (all of one kind, distinct keys) as one statement.
func (s *Store) runStatement(ctx context.Context, ops []*writeOp) error {
	n := len(ops)
	keys := make([]string, n)
	tokens := make([]int64, n)
	for i, op := range ops {
		keys[i] = op.opKey()
		tokens[i] = op.token
	}
	kind := ops[0].kind
	if kind == opClaim {
		return s.runClaims(ctx, ops, keys)
	}
	var args []any
	switch kind {
	case opRenew:
		leases, exps := make([]time.Time, n), make([]time.Time, n)
		for i, op := range ops {
			leases[i], exps[i] = op.t1, op.t2
		}
		args = []any{keys, tokens, leases, exps}
	case opComplete:
		resps, exps := make([][]byte, n), make([]time.Time, n)
		for i, op := range ops {
			resps[i], exps[i] = op.resp, op.t1
		}
		args = []any{keys, tokens, resps, exps}
	case opRelease:
		args = []any{keys, tokens}
	case opMarkUnknown:
		nows, exps := make([]time.Time, n), make([]time.Time, n)
		for i, op := range ops {
			nows[i], exps[i] = op.t1, op.t2
		}
		args = []any{keys, tokens, nows, exps}
	}
	rows, err := s.pool.Query(ctx, s.sql.batch[kind], args...)
	if err != nil {
		return s.wrap(kind.String(), err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return s.wrap(kind.String(), err)
	}
	for _, op := range ops {
		op.err = nil
		if !slices.Contains(done, op.key) {
			op.err = idempotency.ErrFenced
		}
	}
	return nil
}

// runClaims sends a batch of claims as one statement.
func (s *Store) runClaims(ctx context.Context, ops []*writeOp, keys []string) error {
	n := len(ops)
	fps, tokens := make([][]byte, n), make([]int64, n)
	leases, exps, nows := make([]time.Time, n), make([]time.Time, n), make([]time.Time, n)
	for i, op := range ops {
		fps[i], tokens[i] = op.req.Fingerprint[:], token(op.req.Token)
		leases[i], exps[i], nows[i] = op.req.LeaseUntil, op.req.ExpiresAt, op.req.Now
	}
	rows, err := s.pool.Query(ctx, s.sql.batch[opClaim], keys, fps, tokens, leases, exps, nows)
	if err != nil {
		return s.wrap("claim", err)
	}
	defer rows.Close()
	byKey := make(map[string]*writeOp, n)
	for _, op := range ops {
		op.res, op.err = idempotency.ClaimResult{}, nil // no row: the record vanished; the engine claims again
		byKey[op.req.Key] = op
	}
	for rows.Next() {
		var (
			claimed bool
			rec     idempotency.Record
		)
		sc := newScanner(&rec)
		if err := rows.Scan(append([]any{&claimed, &rec.Key}, sc.dest()...)...); err != nil {
			return s.wrap("claim", err)
		}
		op := byKey[rec.Key]
		if op == nil {
			return fmt.Errorf("postgres: claim: the batch returned key %q it did not send", rec.Key)
		}
		if claimed {
			op.res = idempotency.ClaimResult{Claimed: true}
			continue
		}
		if err := sc.finish(); err != nil {
			op.err = fmt.Errorf("postgres: claim: %w", err)
			continue
		}
		op.res = idempotency.ClaimResult{Existing: &rec}
	}
	if err := rows.Err(); err != nil {
		return s.wrap("claim", err)
	}
	return nil
}

// runOne runs op alone with the single-row statement.
func (s *Store) runOne(ctx context.Context, op *writeOp) {
	switch op.kind {
	case opClaim:
		op.res, op.err = s.claimOne(ctx, op.req)
	case opRenew:
		op.err = s.fenced(ctx, "renew", s.sql.renew, op.key, op.token, op.t1, op.t2)
	case opComplete:
		op.err = s.fenced(ctx, "complete", s.sql.complete, op.key, op.token, op.resp, op.t1)
	case opRelease:
		op.err = s.fenced(ctx, "release", s.sql.release, op.key, op.token)
	case opMarkUnknown:
		op.err = s.fenced(ctx, "mark unknown", s.sql.markUnknown, op.key, op.token, op.t1, op.t2)
	}
}

// batchStatements returns the statements of runStatement, per kind.
func batchStatements(table string) [numKinds]string {
	var b [numKinds]string
	// r is the batch; every CTE joins it by key, and claimable uses the
	// row's own clock reading (r.now) exactly as the single claim uses $6.
	// For a claimed row the record columns are placeholders (not read).
	b[opClaim] = `WITH r AS (
	SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[])
		AS r(key, fingerprint, token, lease_until, expires_at, now)
), done AS (
	SELECT t.key, t.fingerprint, t.state, t.token, t.lease_until, t.expires_at, t.response
	FROM ` + table + ` AS t JOIN r ON r.key = t.key
	WHERE t.state = 2 AND t.expires_at > r.now
), ins AS (
	INSERT INTO ` + table + ` AS t (key, fingerprint, state, token, lease_until, expires_at, response)
	SELECT r.key, r.fingerprint, 1, r.token, r.lease_until, r.expires_at, NULL FROM r
	WHERE r.key NOT IN (SELECT key FROM done)
	ORDER BY r.key
	ON CONFLICT (key) DO UPDATE SET
		fingerprint = EXCLUDED.fingerprint, state = 1, token = EXCLUDED.token,
		lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at, response = NULL
	WHERE t.expires_at <= (SELECT r.now FROM r WHERE r.key = EXCLUDED.key)
		OR (t.state = 1 AND t.lease_until <= (SELECT r.now FROM r WHERE r.key = EXCLUDED.key))
	RETURNING t.key
), cur AS (
	SELECT t.key, t.fingerprint, t.state, t.token, t.lease_until, t.expires_at, t.response
	FROM ` + table + ` AS t
	WHERE t.key IN (SELECT key FROM r) AND t.key NOT IN (SELECT key FROM ins) AND t.key NOT IN (SELECT key FROM done)
	FOR SHARE OF t
)
SELECT true, i.key, '\x'::bytea, 0::int2, 0::int8, 'epoch'::timestamptz, 'epoch'::timestamptz, NULL::bytea FROM ins AS i
UNION ALL
SELECT false, c.* FROM cur AS c JOIN r ON r.key = c.key
	WHERE NOT (c.expires_at <= r.now OR (c.state = 1 AND c.lease_until <= r.now))
UNION ALL
SELECT false, d.* FROM done AS d`
	b[opRenew] = `UPDATE ` + table + ` AS t SET lease_until = u.lease_until, expires_at = u.expires_at
FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::timestamptz[]) AS u(key, token, lease_until, expires_at)
WHERE t.key = u.key AND t.token = u.token AND t.state = 1
RETURNING t.key`
	b[opComplete] = `UPDATE ` + table + ` AS t SET state = 2, response = u.response, expires_at = u.expires_at
FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::timestamptz[]) AS u(key, token, response, expires_at)
WHERE t.key = u.key AND t.token = u.token AND t.state IN (1, 3)
RETURNING t.key`
	b[opRelease] = `DELETE FROM ` + table + ` AS t
USING unnest($1::text[], $2::int8[]) AS u(key, token)
WHERE t.key = u.key AND t.token = u.token AND t.state IN (1, 3)
RETURNING t.key`
	b[opMarkUnknown] = `UPDATE ` + table + ` AS t SET state = 3, lease_until = u.now, expires_at = u.expires_at
FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::timestamptz[]) AS u(key, token, now, expires_at)
WHERE t.key = u.key AND t.token = u.token AND t.state = 1
RETURNING t.key`
	return b
}
