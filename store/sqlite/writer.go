package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/groupcommit"
)

// Group commit. Every write of a Store (Claim when it must write, Renew,
// Complete, Release, MarkUnknown) is queued to one writer goroutine, which
// takes whatever has queued — up to maxBatch operations — and runs it as one
// IMMEDIATE transaction: one write lock, one commit, one append of the
// changed pages to the WAL for the whole batch. While a batch commits, new
// operations queue and form the next one, so under load the cost of a
// commit is shared by every request that arrived meanwhile, and when the
// store is idle an operation runs at once (it waits for no timer and no
// other operation).
//
// Each operation runs as its own statement(s) in the batch, in arrival
// order, with exactly the semantics it has alone: the claim is the same
// INSERT ... ON CONFLICT ... WHERE claimable, the fenced writes the same
// guarded UPDATE or DELETE. Results are handed back only after the commit,
// so no caller ever acts on a write that could still be rolled back. If a
// statement fails with an SQL error (disk full, I/O error: errors after
// which SQLite may have rolled the whole transaction back), the batch is
// rolled back and its operations are run again one transaction each, so
// that every caller gets the outcome of its own operation. If the commit
// fails, nothing in the batch was written and every operation gets the
// error.

// maxBatch bounds the operations one transaction carries.
const maxBatch = 128

// errClosed is returned by calls on a Store after Close.
var errClosed = errors.New("sqlite: store is closed")

type opKind uint8

const (
	opClaim opKind = iota
	opRenew
	opComplete
	opRelease
	opMarkUnknown
)

func (k opKind) String() string {
	return [...]string{"claim", "renew", "complete", "release", "mark unknown"}[k]
}

// writeOp is one queued write and, once run, its result.
type writeOp struct {
	groupcommit.Slot
	kind  opKind
	req   idempotency.ClaimRequest // opClaim
	key   string
	token uint64
	t1    int64  // renew: lease_until; complete: expires_at; mark unknown: now
	t2    int64  // renew, mark unknown: expires_at
	resp  []byte // complete: the encoded response

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

// write runs op through the writer; on nil, op holds the outcome.
func (s *Store) write(ctx context.Context, op *writeOp) error {
	if s.closed.Load() {
		return errClosed
	}
	return s.w.Do(ctx, op)
}

// fencedWrite runs a Renew, Complete, Release or MarkUnknown through the
// writer.
func (s *Store) fencedWrite(ctx context.Context, kind opKind, key string, token uint64, t1, t2 int64, resp []byte) error {
	op := s.getOp()
	op.kind, op.key, op.token, op.t1, op.t2, op.resp = kind, key, token, t1, t2, resp
	if err := s.write(ctx, op); err != nil {
		return fmt.Errorf("sqlite: %s: %w", kind, err)
	}
	err := op.err
	s.putOp(op)
	return err
}

// runBatch runs batch in one transaction and sets every operation's result.
func (s *Store) runBatch(batch []*writeOp) {
	live := 0
	for _, op := range batch {
		if op.Canceled() {
			op.Skip()
		} else {
			live++
		}
	}
	if live == 0 {
		return
	}
	// The batch outlives any one caller: it is bounded by the busy timeout
	// (waiting for other processes' write locks), not by a context.
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		setAll(batch, fmt.Errorf("sqlite: begin: %w", err))
		return
	}
	for _, op := range batch {
		if op.Skipped() {
			continue
		}
		if err := s.apply(ctx, tx, op); err != nil {
			_ = tx.Rollback()
			if live == 1 {
				op.err = fmt.Errorf("sqlite: %s: %w", op.kind, err)
				return
			}
			// SQLite may have rolled the whole transaction back: run every
			// operation of the batch again, each in its own transaction.
			for _, again := range batch {
				if !again.Skipped() {
					again.res, again.err = idempotency.ClaimResult{}, nil
					s.runBatch([]*writeOp{again})
				}
			}
			return
		}
	}
	if err := tx.Commit(); err != nil {
		setAll(batch, fmt.Errorf("sqlite: commit: %w", err))
		return
	}
	s.ckpt.afterCommit()
}

func setAll(batch []*writeOp, err error) {
	for _, op := range batch {
		if !op.Skipped() {
			op.res, op.err = idempotency.ClaimResult{}, err
		}
	}
}

// apply runs one operation inside the batch's transaction. Its outcome
// (claimed, the blocking record, ErrFenced, a corrupt record) goes into
// op; an SQL error is returned and fails the transaction.
func (s *Store) apply(ctx context.Context, tx *sql.Tx, op *writeOp) error {
	if op.kind == opClaim {
		req := &op.req
		for _, st := range []*sql.Stmt{s.st.claim, s.st.takeover} {
			r, err := tx.StmtContext(ctx, st).ExecContext(ctx, req.Key, req.Fingerprint[:], int64(req.Token),
				ms(req.LeaseUntil), ms(req.ExpiresAt), ms(req.Now))
			if err != nil {
				return err
			}
			if n, err := r.RowsAffected(); err != nil {
				return err
			} else if n == 1 {
				op.res = idempotency.ClaimResult{Claimed: true}
				return nil
			}
		}
		// The key exists and is not claimable: read it under the same lock.
		rec, err := scanRecord(req.Key, tx.StmtContext(ctx, s.st.get).QueryRowContext(ctx, req.Key))
		switch {
		case errors.Is(err, idempotency.ErrNotFound):
		case errors.Is(err, errCorrupt):
			op.err = fmt.Errorf("sqlite: claim: %w", err)
		case err != nil:
			return err
		}
		op.res = idempotency.ClaimResult{Existing: rec}
		return nil
	}
	var (
		st   *sql.Stmt
		args []any
	)
	switch op.kind {
	case opRenew:
		st, args = s.st.renew, []any{op.key, int64(op.token), op.t1, op.t2}
	case opComplete:
		st, args = s.st.complete, []any{op.key, int64(op.token), op.t1, op.resp}
	case opRelease:
		st, args = s.st.release, []any{op.key, int64(op.token)}
	case opMarkUnknown:
		st, args = s.st.markUnknown, []any{op.key, int64(op.token), op.t1, op.t2}
	}
	r, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	if err != nil {
		return err
	}
	n, err := r.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		op.err = idempotency.ErrFenced
	}
	return nil
}
