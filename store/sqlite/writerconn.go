package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"

	"github.com/leveehq/levee/idempotency"
)

// The writer drives SQLite through the driver's own interfaces, on one
// connection kept for it, with statements prepared once on that
// connection: database/sql's per-statement bookkeeping (a Stmt per
// transaction, argument conversion, Rows and Scan) was a sixth of the
// writer's CPU, and a connection that is always the writer keeps its page
// cache warm (other connections of this Store write only in DeleteExpired's
// occasional clean-up, so little invalidates it). A file Store pins that connection for its lifetime; a
// Memory store, whose only connection is shared with its readers, takes it
// from the pool for each batch (the same connection every time).

// writerStmts are the writer's statements, prepared on conn.
type writerStmts struct {
	conn                                                           driver.ConnBeginTx
	raw                                                            driver.Conn
	claim, takeover, renew, complete, release, markUnknown, getRec ctxStmt
	deleteExpired                                                  ctxStmt
	argBuf                                                         []driver.NamedValue
	dest                                                           []driver.Value
}

// args fills the reusable argument slice (?1, ?2, ...). Only the writer
// goroutine uses it, one statement at a time, under s.wmu.
func (ws *writerStmts) args(vs ...driver.Value) []driver.NamedValue {
	ws.argBuf = ws.argBuf[:0]
	for i, v := range vs {
		ws.argBuf = append(ws.argBuf, driver.NamedValue{Ordinal: i + 1, Value: v})
	}
	return ws.argBuf
}

func (ws *writerStmts) all() []ctxStmt {
	return []ctxStmt{ws.claim, ws.takeover, ws.renew, ws.complete, ws.release, ws.markUnknown, ws.getRec, ws.deleteExpired}
}

func (ws *writerStmts) close() {
	for _, st := range ws.all() {
		if st != nil {
			_ = st.Close()
		}
	}
}

// getRecord reads key in the writer's transaction; ErrNotFound when absent.
func (ws *writerStmts) getRecord(ctx context.Context, key string) (*idempotency.Record, error) {
	rows, err := ws.getRec.QueryContext(ctx, ws.args(key))
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	if ws.dest == nil {
		ws.dest = make([]driver.Value, 6)
	}
	switch err := rows.Next(ws.dest); {
	case errors.Is(err, io.EOF):
		return nil, idempotency.ErrNotFound
	case err != nil:
		return nil, err
	}
	d := ws.dest
	fp, _ := d[0].([]byte)
	resp, _ := d[5].([]byte)
	state, ok1 := d[1].(int64)
	token, ok2 := d[2].(int64)
	lease, ok3 := d[3].(int64)
	ex, ok4 := d[4].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return nil, fmt.Errorf("%w %q: column types %T %T %T %T", errCorrupt, key, d[1], d[2], d[3], d[4])
	}
	return decodeRecord(key, fp, state, token, lease, ex, resp)
}

// writerConn returns the writer's connection and what to call when the
// batch is done with it.
func (s *Store) writerConn(ctx context.Context) (*sql.Conn, func(), error) {
	if s.memory {
		c, err := s.db.Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		return c, func() { _ = c.Close() }, nil
	}
	if s.wconn == nil {
		c, err := s.db.Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		s.wconn = c
	}
	return s.wconn, func() {}, nil
}

// dropWriterConn gives up the writer's connection after it failed (conn
// is the one the batch used, still held): its statements are closed, a
// file Store's pinned connection is closed and replaced at the next batch,
// and the statements are prepared again there.
func (s *Store) dropWriterConn(conn *sql.Conn) {
	if ws := s.ws; ws != nil {
		_ = conn.Raw(func(dc any) error {
			if dc == ws.raw {
				ws.close()
			}
			return nil
		})
	}
	s.ws = nil
	if s.wconn != nil {
		_ = s.wconn.Close()
		s.wconn = nil
	}
}

// writerStatements returns the writer's statements for dc, preparing them
// the first time (and again if the connection was replaced).
func (s *Store) writerStatements(ctx context.Context, dc driver.Conn) (*writerStmts, error) {
	if s.ws != nil && s.ws.raw == dc {
		return s.ws, nil
	}
	bt, ok1 := dc.(driver.ConnBeginTx)
	pc, ok2 := dc.(driver.ConnPrepareContext)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("driver connection %T lacks BeginTx or PrepareContext", dc)
	}
	ws := &writerStmts{conn: bt, raw: dc}
	for _, p := range []struct {
		dst   *ctxStmt
		query string
	}{
		{&ws.claim, s.q.claim}, {&ws.takeover, s.q.takeover}, {&ws.renew, s.q.renew}, {&ws.complete, s.q.complete},
		{&ws.release, s.q.release}, {&ws.markUnknown, s.q.markUnknown}, {&ws.getRec, s.q.get},
		{&ws.deleteExpired, s.q.deleteExpired},
	} {
		st, err := pc.PrepareContext(ctx, p.query)
		if err != nil {
			ws.close()
			return nil, fmt.Errorf("prepare: %w", err)
		}
		cs, ok := st.(ctxStmt)
		if !ok {
			_ = st.Close()
			ws.close()
			return nil, fmt.Errorf("driver statement %T lacks the context-aware interfaces", st)
		}
		*p.dst = cs
	}
	s.ws = ws
	return ws, nil
}

// closeWriter closes the writer's statements and gives its connection
// back, waiting for a batch that is running.
func (s *Store) closeWriter() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.wclosed {
		return
	}
	s.wclosed = true
	if s.ws == nil {
		if s.wconn != nil {
			_ = s.wconn.Close()
			s.wconn = nil
		}
		return
	}
	ws := s.ws
	if s.wconn != nil {
		_ = s.wconn.Raw(func(any) error { ws.close(); return nil })
		_ = s.wconn.Close()
		s.wconn = nil
	} else if c, err := s.db.Conn(context.Background()); err == nil {
		_ = c.Raw(func(dc any) error {
			if dc == ws.raw {
				ws.close()
			}
			return nil
		})
		_ = c.Close()
	}
	s.ws = nil
}
