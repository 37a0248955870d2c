package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/groupcommit"
)

// Group commit. Every operation that writes (Claim, Renew, Complete,
// Release, MarkUnknown) is queued (internal/groupcommit); up to
// maxInFlight goroutines per Store each take whatever has queued and send
// it as ONE pipeline: the operations' single-row statements, in key order,
// followed by one Sync, which PostgreSQL runs as one implicit transaction.
// That is one round trip, one transaction and one WAL flush for the batch
// instead of one per request, whatever kinds of operation it mixes. An
// operation arriving at an idle store is sent at once, alone.
//
// Each operation runs the very statement it runs alone, so it has exactly
// that statement's semantics, evaluated after the batch's earlier
// statements (READ COMMITTED takes a new snapshot per statement): the batch
// is the same as running its operations one after another, except that
// they commit together. Statements are ordered by key (operations on one
// key keep their arrival order), so that batches of several replicas, or
// several batches in flight, lock rows in the same order and cannot
// deadlock. If the server refuses any statement of a batch, the
// transaction is rolled back, nothing of the batch was written, and each of
// its operations is sent again on its own, so that every caller gets the
// outcome of its own operation; if the answer is lost (the connection
// broke), every caller of the batch gets the error: its outcome is
// unknown, as for any statement whose answer is lost.
//
// The store once sent one statement per kind carrying the batch as
// unnest arrays. PostgreSQL planned those joins on the table as it was
// when a connection first ran them (typically empty, at start-up): a
// sequential scan and a hash join, kept in the connection's plan cache
// while the table grew, so that every batch read the whole table
// (BenchmarkConcurrentNewKeys: 516-607 µs per request at 20,000 requests,
// against 82-92 µs now; docs/benchmarks.md). A single-row
// statement on the primary key is planned as an index lookup whatever the
// table's size or statistics.

// maxBatch bounds the operations one pipeline carries.
const maxBatch = 128

// maxInFlight bounds the batches running at once: while they run, new
// operations queue for the next one, and the server runs them in parallel.
const maxInFlight = 2

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
	fresh    bool // claim: the key is not in Store.recent (most likely new)
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
	ops := make([]*writeOp, 0, len(batch))
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
		ops = append(ops, op)
	}
	if len(ops) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	slices.SortStableFunc(ops, func(a, b *writeOp) int { return strings.Compare(a.opKey(), b.opKey()) })
	s.run(ctx, ops)
}

// run sends ops, in key order: one alone with its statement, several as a
// pipeline; then the claims whose INSERT found their key, with the full
// claim statement, after the pipeline committed (as if they had arrived
// just after it).
func (s *Store) run(ctx context.Context, ops []*writeOp) {
	switch len(ops) {
	case 0:
		return
	case 1:
		s.runOne(ctx, ops[0])
		return
	}
	again, err := s.runPipeline(ctx, ops)
	if err != nil {
		s.failed(ctx, ops, err)
		return
	}
	s.run(ctx, again)
}

// failed handles a pipeline that returned err. When err proves that the
// transaction was rolled back — the server refused a statement (a
// *pgconn.PgError: the implicit transaction aborted), or the batch was
// never sent — nothing of it was written, and each operation is sent again
// on its own, so that every caller gets the outcome of its own operation.
// Otherwise (the connection broke, or an answer could not be read, with
// the commit perhaps done) the outcome of every operation is unknown, and
// every caller gets err: rerunning them would report a committed Complete
// as fenced, or a committed claim as blocked by the caller's own record.
func (s *Store) failed(ctx context.Context, ops []*writeOp, err error) {
	if _, server := errors.AsType[*pgconn.PgError](err); server || pgconn.SafeToRetry(err) {
		for _, op := range ops {
			s.runOne(ctx, op)
		}
		return
	}
	for _, op := range ops {
		op.res, op.err = idempotency.ClaimResult{}, err
	}
}

func (op *writeOp) opKey() string {
	if op.kind == opClaim {
		return op.req.Key
	}
	return op.key
}

// runPipeline sends ops as one pipeline of their single-row statements,
// which the server runs as one implicit transaction. On a nil return every
// op holds its outcome but the fresh claims whose INSERT found the key,
// returned in again (no longer fresh) for the full statement; on an error,
// the first one met, see failed.
func (s *Store) runPipeline(ctx context.Context, ops []*writeOp) ([]*writeOp, error) {
	var again []*writeOp
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(ops))}
	for _, op := range ops {
		switch op.kind {
		case opClaim:
			r := op.req
			sql := s.sql.claim
			if op.fresh {
				sql = s.sql.claimNew
			}
			b.Queue(sql, r.Key, r.Fingerprint[:], token(r.Token), r.LeaseUntil, r.ExpiresAt, r.Now)
		case opRenew:
			b.Queue(s.sql.renew, op.key, op.token, op.t1, op.t2)
		case opComplete:
			b.Queue(s.sql.complete, op.key, op.token, op.resp, op.t1)
		case opRelease:
			b.Queue(s.sql.release, op.key, op.token)
		case opMarkUnknown:
			b.Queue(s.sql.markUnknown, op.key, op.token, op.t1, op.t2)
		}
	}
	br := s.pool.SendBatch(ctx, b)
	var first error
	for _, op := range ops {
		if op.kind == opClaim && op.fresh {
			tag, err := br.Exec()
			switch {
			case err != nil:
				if first == nil {
					first = s.wrap("claim", err)
				}
			case tag.RowsAffected() == 1:
				op.res, op.err = idempotency.ClaimResult{Claimed: true}, nil
			default: // the key exists
				op.fresh = false
				again = append(again, op)
			}
			continue
		}
		if op.kind == opClaim {
			op.res, op.err = s.scanClaim(op.req.Key, br.QueryRow())
			if _, failed := errors.AsType[claimFailed](op.err); failed && first == nil {
				first = op.err
			}
			continue
		}
		tag, err := br.Exec()
		switch {
		case err != nil:
			if first == nil {
				first = s.wrap(op.kind.String(), err)
			}
		case tag.RowsAffected() == 0:
			op.err = idempotency.ErrFenced
		default:
			op.err = nil
		}
	}
	// Close reads the answer to the Sync: the commit.
	if err := br.Close(); err != nil && first == nil {
		first = s.wrap("commit", err)
	}
	return again, first
}

// runOne runs op alone with the single-row statement.
func (s *Store) runOne(ctx context.Context, op *writeOp) {
	switch op.kind {
	case opClaim:
		op.res = idempotency.ClaimResult{} // not a rolled-back pipeline's answer
		if op.fresh {
			var tag pgconn.CommandTag
			r := op.req
			tag, op.err = s.pool.Exec(ctx, s.sql.claimNew, r.Key, r.Fingerprint[:], token(r.Token), r.LeaseUntil, r.ExpiresAt, r.Now)
			if op.err != nil {
				op.err = s.wrap("claim", op.err)
				return
			}
			if tag.RowsAffected() == 1 {
				op.res = idempotency.ClaimResult{Claimed: true}
				return
			}
			op.fresh = false // the key exists: the full statement
		}
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
