package sqlite

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"

	"github.com/leveehq/levee/idempotency"
	"github.com/leveehq/levee/internal/groupcommit"
	"github.com/leveehq/levee/internal/sqlitefile"
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
// INSERT ... ON CONFLICT DO NOTHING, then takeover UPDATE ... WHERE
// claimable, then SELECT, the fenced writes the same guarded UPDATE or
// DELETE. Results are handed back only after the commit,
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
	opDeleteExpired
)

func (k opKind) String() string {
	return [...]string{"claim", "renew", "complete", "release", "mark unknown", "delete expired"}[k]
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
	n     int64  // delete expired: rows deleted (t1: now, t2: the limit)

	res  idempotency.ClaimResult
	err  error
	done bool // the outcome is set (the writer's bookkeeping within a batch)
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
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.wclosed {
		// Queued before Close and reached after it: the store's
		// connections are gone (and must not be opened again).
		setAll(batch, errClosed)
		return
	}
	// The batch outlives any one caller: it is bounded by the busy timeout
	// (waiting for other processes' write locks), not by a context.
	ctx := context.Background()
	conn, release, err := s.writerConn(ctx)
	if err != nil {
		setAll(batch, fmt.Errorf("sqlite: writer connection: %w", err))
		return
	}
	err = conn.Raw(func(dc any) error {
		ws, err := s.writerStatements(ctx, dc.(driver.Conn))
		if err != nil {
			return err
		}
		return s.runOn(ctx, ws, batch, live)
	})
	if err != nil {
		// The connection failed: operations that already have an outcome
		// (committed in a transaction of their own before the failure)
		// keep it; the others get the error.
		for _, op := range batch {
			if !op.Skipped() && !op.done {
				op.res, op.err = idempotency.ClaimResult{}, fmt.Errorf("sqlite: %w", err)
			}
		}
		s.dropWriterConn(conn)
	}
	release()
}

// runOn runs batch (live operations not skipped) in one transaction on the
// writer's connection. It returns an error only when the connection itself
// failed; every operation's outcome is in the operation.
func (s *Store) runOn(ctx context.Context, ws *writerStmts, batch []*writeOp, live int) error {
	tx, err := ws.conn.BeginTx(ctx, driver.TxOptions{})
	if err != nil {
		setAll(batch, fmt.Errorf("sqlite: begin: %w", err))
		return connFailed(err)
	}
	for _, op := range batch {
		if op.Skipped() {
			continue
		}
		if err := s.apply(ctx, ws, op); err != nil {
			rbErr := tx.Rollback()
			if live == 1 {
				op.err = fmt.Errorf("sqlite: %s: %w", op.kind, err)
				op.done = true
				return connFailed(rbErr)
			}
			if rbErr != nil && !sqlitefile.IsBusy(rbErr) {
				setAll(batch, fmt.Errorf("sqlite: %s: %w", op.kind, err))
				return rbErr
			}
			// SQLite may have rolled the whole transaction back: run every
			// operation of the batch again, each in its own transaction.
			for _, again := range batch {
				if !again.Skipped() {
					again.res, again.err, again.done = idempotency.ClaimResult{}, nil, false
					if err := s.runOn(ctx, ws, []*writeOp{again}, 1); err != nil {
						return err
					}
				}
			}
			return nil
		}
	}
	if err := tx.Commit(); err != nil {
		setAll(batch, fmt.Errorf("sqlite: commit: %w", err))
		return connFailed(err)
	}
	markDone(batch)
	s.ckpt.afterCommit()
	return nil
}

// markDone records that the live operations of batch have their outcome.
func markDone(batch []*writeOp) {
	for _, op := range batch {
		if !op.Skipped() {
			op.done = true
		}
	}
}

// connFailed passes on an error after which the writer's connection should
// not be trusted: the driver's ErrBadConn, or a failed BEGIN, ROLLBACK or
// COMMIT that was not SQLite's "busy" (another process holding the lock,
// which the next batch may simply find released). The connection is then
// given back and replaced, so a broken connection state (a transaction
// that could not be ended) is never permanent.
func connFailed(err error) error {
	if err == nil || sqlitefile.IsBusy(err) {
		return nil
	}
	return err
}

// setAll gives every live operation of batch the error err, as its outcome.
func setAll(batch []*writeOp, err error) {
	for _, op := range batch {
		if !op.Skipped() {
			op.res, op.err, op.done = idempotency.ClaimResult{}, err, true
		}
	}
}

// apply runs one operation inside the batch's transaction. Its outcome
// (claimed, the blocking record, ErrFenced, a corrupt record) goes into
// op; an SQL error is returned and fails the transaction.
func (s *Store) apply(ctx context.Context, ws *writerStmts, op *writeOp) error {
	if op.kind == opClaim {
		req := &op.req
		args := ws.args(req.Key, req.Fingerprint[:], int64(req.Token), ms(req.LeaseUntil), ms(req.ExpiresAt), ms(req.Now))
		for _, st := range []ctxStmt{ws.claim, ws.takeover} {
			n, err := execRows(ctx, st, args)
			if err != nil {
				return err
			}
			if n == 1 {
				op.res = idempotency.ClaimResult{Claimed: true}
				return nil
			}
		}
		// The key exists and is not claimable: read it under the same lock.
		rec, err := ws.getRecord(ctx, req.Key)
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
	if op.kind == opDeleteExpired {
		n, err := execRows(ctx, ws.deleteExpired, ws.args(op.t1, op.t2))
		op.n = n
		return err
	}
	var (
		st   ctxStmt
		args []driver.NamedValue
	)
	switch op.kind {
	case opRenew:
		st, args = ws.renew, ws.args(op.key, int64(op.token), op.t1, op.t2)
	case opComplete:
		st, args = ws.complete, ws.args(op.key, int64(op.token), op.t1, op.resp)
	case opRelease:
		st, args = ws.release, ws.args(op.key, int64(op.token))
	case opMarkUnknown:
		st, args = ws.markUnknown, ws.args(op.key, int64(op.token), op.t1, op.t2)
	}
	n, err := execRows(ctx, st, args)
	if err != nil {
		return err
	}
	if n == 0 {
		op.err = idempotency.ErrFenced
	}
	return nil
}

func execRows(ctx context.Context, st ctxStmt, args []driver.NamedValue) (int64, error) {
	r, err := st.ExecContext(ctx, args)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}
