package postgres

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one embedded migrations/NNNN_name.sql file.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the embedded migrations in version order.
func loadMigrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	ms := make([]migration, 0, len(names))
	for _, p := range names {
		base := strings.TrimSuffix(path.Base(p), ".sql")
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s is not named NNNN_name.sql", p)
		}
		b, err := migrationFiles.ReadFile(p)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("two migrations have version %d", ms[i].version)
		}
	}
	return ms, nil
}

// migrateLockKey is the pg_advisory_xact_lock key serializing Migrate for
// one schema across every process using the database.
func migrateLockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("levee/store/postgres/migrate\x00" + schema))
	return int64(h.Sum64())
}

// Migrate creates the schema, the table and its index by applying the
// embedded migrations not yet recorded for this table in
// <schema>.schema_migrations. It runs in one transaction holding a
// transaction-scoped advisory lock for the schema (pg_advisory_xact_lock),
// so replicas may all call it at start-up: one applies the migrations while
// the others wait, then find nothing left to do. It is idempotent; on error
// nothing is applied. Several tables may share a schema: migrations are
// recorded per table.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit

	if err := s.migrate(ctx, tx, ms); err != nil {
		return fmt.Errorf("postgres: migrate %s: %w", s.table, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: migrate %s: commit: %w", s.table, err)
	}
	return nil
}

func (s *Store) migrate(ctx context.Context, tx pgx.Tx, ms []migration) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey(s.opts.Schema)); err != nil {
		return fmt.Errorf("advisory lock: %w", err)
	}
	// Under the lock, so that two replicas never race to create the schema
	// (CREATE SCHEMA IF NOT EXISTS is not safe against that), and checked
	// first so that a role without CREATE on the database can use a schema
	// an administrator created.
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)`, s.opts.Schema).Scan(&exists); err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	schema := pgx.Identifier{s.opts.Schema}.Sanitize()
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+schema); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	bookkeeping := pgx.Identifier{s.opts.Schema, "schema_migrations"}.Sanitize()
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+bookkeeping+` (
	table_name text        NOT NULL,
	version    integer     NOT NULL,
	name       text        NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (table_name, version)
)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM `+bookkeeping+` WHERE table_name = $1`, s.opts.Table)
	if err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	r := strings.NewReplacer(
		"{{table}}", s.table,
		"{{expires_at_index}}", pgx.Identifier{s.opts.Table + indexSuffix}.Sanitize(),
		"{{state_check}}", pgx.Identifier{s.opts.Table + "_state_check"}.Sanitize(),
		"{{open_index}}", pgx.Identifier{s.opts.Table + "_open_idx"}.Sanitize(),
		// An index's name qualified with the schema, for DROP INDEX (which
		// looks an unqualified name up in search_path).
		"{{open_index_in_schema}}", pgx.Identifier{s.opts.Schema, s.opts.Table + "_open_idx"}.Sanitize(),
		// Migration 0003's open index; its suffix is as long as
		// indexSuffix, which bounds Options.Table.
		"{{open_state_index}}", pgx.Identifier{s.opts.Table + "_open_state_idx"}.Sanitize(),
	)
	for _, m := range ms {
		if slices.Contains(applied, int32(m.version)) {
			continue
		}
		// No arguments: pgx sends it with the simple protocol, so a file may
		// hold several statements.
		if _, err := tx.Exec(ctx, r.Replace(m.sql)); err != nil {
			return fmt.Errorf("apply %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+bookkeeping+` (table_name, version, name) VALUES ($1, $2, $3)`,
			s.opts.Table, int32(m.version), m.name); err != nil {
			return fmt.Errorf("record %s: %w", m.name, err)
		}
	}
	return nil
}
