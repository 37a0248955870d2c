package sqlite

import (
	"context"
	"database/sql/driver"
	"fmt"
	"sync/atomic"
)

// Round trips are counted here, at the database/sql driver boundary, not by
// counting Store method calls. SQLite runs in-process, so there is no
// network hop to count; the unit of cost that plays the role of a round
// trip is one SQLite transaction: it takes the database locks, reads one
// snapshot and, for a write, appends one commit to the WAL. So the counter
// goes up once per transaction the driver is asked to begin and once per
// statement executed outside a transaction (an autocommit statement is its
// own transaction). Statements run inside an explicit transaction are not
// counted again: they are calls into a snapshot already locked.

// fullConn is the set of optional interfaces every modernc.org/sqlite
// connection implements. The wrapper forwards all of them: hiding any would
// make database/sql fall back to context-free paths (see
// modernc.org/sqlite.NewConnector).
type fullConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
}

// countingConnector wraps the driver's connector so that every physical
// connection counts its transactions into n.
type countingConnector struct {
	driver.Connector
	n *atomic.Int64
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	fc, ok := conn.(fullConn)
	if !ok {
		_ = conn.Close()
		return nil, fmt.Errorf("sqlite: driver connection %T lacks the context-aware interfaces", conn)
	}
	return &countingConn{fullConn: fc, n: c.n}, nil
}

// countingConn is one physical connection. database/sql uses a connection
// from one goroutine at a time; inTx is atomic only so that a rollback
// database/sql issues after a context ends is race-free too.
type countingConn struct {
	fullConn
	n    *atomic.Int64
	inTx atomic.Bool
}

// Unwrap returns the driver's own connection (modernc.org/sqlite.Limit and
// similar helpers look through wrappers this way).
func (c *countingConn) Unwrap() driver.Conn { return c.fullConn }

func (c *countingConn) count() {
	if !c.inTx.Load() {
		c.n.Add(1)
	}
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.n.Add(1)
	tx, err := c.fullConn.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	c.inTx.Store(true)
	return &countingTx{Tx: tx, c: c}, nil
}

// Begin is never called by database/sql (BeginTx exists); it is routed
// through BeginTx so that no path escapes the count.
func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	c.count()
	return c.fullConn.ExecContext(ctx, query, args)
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	c.count()
	return c.fullConn.QueryContext(ctx, query, args)
}

// PrepareContext wraps the statement so that executing it outside a
// transaction is counted like a direct Exec or Query: the readers'
// statements (prepared through database/sql) and the writer's (prepared on
// its own connection, writerconn.go) all come through here.
func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	st, err := c.fullConn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	cs, ok := st.(ctxStmt)
	if !ok {
		_ = st.Close()
		return nil, fmt.Errorf("sqlite: driver statement %T lacks the context-aware interfaces", st)
	}
	return &countingStmt{ctxStmt: cs, c: c}, nil
}

func (c *countingConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

type countingTx struct {
	driver.Tx
	c *countingConn
}

func (t *countingTx) Commit() error {
	t.c.inTx.Store(false)
	return t.Tx.Commit()
}

func (t *countingTx) Rollback() error {
	t.c.inTx.Store(false)
	return t.Tx.Rollback()
}

type ctxStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
}

type countingStmt struct {
	ctxStmt
	c *countingConn
}

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	s.c.count()
	return s.ctxStmt.ExecContext(ctx, args)
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.c.count()
	return s.ctxStmt.QueryContext(ctx, args)
}

// Exec and Query are the context-free forms; database/sql does not use
// them when the context forms exist, but they must not bypass the count.
func (s *countingStmt) Exec(args []driver.Value) (driver.Result, error) {
	s.c.count()
	return s.ctxStmt.Exec(args) //nolint:staticcheck // forwarding the deprecated form
}

func (s *countingStmt) Query(args []driver.Value) (driver.Rows, error) {
	s.c.count()
	return s.ctxStmt.Query(args) //nolint:staticcheck // forwarding the deprecated form
}
