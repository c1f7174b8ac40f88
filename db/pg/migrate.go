package pg

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// SchemaVersion is the newest schema this build knows: the number of its
// newest file in migrations/.
const SchemaVersion = 1

// Each migrations/NNNN_name.sql upgrades the schema from version NNNN-1 to
// NNNN. A file is applied in one transaction with its row in
// schema_version, so an upgrade is all or nothing; files are never edited
// once released, only added.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// migrations lists the embedded files in order, checking they are numbered
// 1, 2, 3, ... without gaps.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration file %s is not named NNNN_name.sql", e.Name())
		}
		b, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected version %d", m.name, i+1)
		}
	}
	return out, nil
}

// SchemaError is the refusal of a database whose schema is not this
// build's: newer (Open refuses it always), or older or missing (Open
// refuses it with Options.NoMigrate instead of migrating it).
type SchemaError struct {
	// Have is the version the database records (0: no mxid schema); Want
	// is SchemaVersion.
	Have, Want int
}

func (e *SchemaError) Error() string {
	switch {
	case e.Have > e.Want:
		return fmt.Sprintf("the database was migrated by a newer mxid (schema %d, this binary knows %d): upgrade mxid", e.Have, e.Want)
	case e.Have == 0:
		return "the database holds no mxid schema"
	}
	return fmt.Sprintf("the database holds mxid schema %d, this mxid needs %d", e.Have, e.Want)
}

// recordedSchema is the schema version the database records: 0 (and
// exists false) when it has no schema_version table.
func recordedSchema(ctx context.Context, conn *pgx.Conn) (version int, exists bool, err error) {
	if err := conn.QueryRow(ctx, "SELECT to_regclass('schema_version') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return 0, false, err
	}
	err = conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&version)
	return version, true, err
}

// checkSchema refuses, without changing anything, a database whose schema
// is not SchemaVersion (Options.NoMigrate).
func checkSchema(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	current, _, err := recordedSchema(ctx, conn)
	if err != nil {
		return err
	}
	if current != SchemaVersion {
		return &SchemaError{Have: current, Want: SchemaVersion}
	}
	return nil
}

// migrate brings the database to SchemaVersion on a connection of its own
// (no statement timeout: a migration may take longer than one call), under
// a session advisory lock: replicas starting together wait for the first,
// then find nothing left to do. A database migrated by a newer build is
// refused.
func migrate(ctx context.Context, cfg *pgx.ConnConfig, log *slog.Logger) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	delete(cfg.RuntimeParams, "statement_timeout")
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background()) // also releases the lock
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1, $2)", lockClass, lockMigrate); err != nil {
		return err
	}
	current, exists, err := recordedSchema(ctx, conn)
	if err != nil {
		return err
	}
	// Created only when missing: a replica whose role may not create
	// tables still starts on a migrated database.
	if !exists {
		if _, err := conn.Exec(ctx, `CREATE TABLE schema_version (
			version    integer PRIMARY KEY,
			name       text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
	}
	if current > SchemaVersion {
		return &SchemaError{Have: current, Want: SchemaVersion}
	}
	for _, m := range ms[current:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_version (version, name) VALUES ($1, $2)", m.version, m.name)
			return err
		})
		if err != nil {
			return fmt.Errorf("schema migration %s: %w", m.name, err)
		}
		log.Info("applied schema migration", "version", m.version, "file", m.name)
	}
	_, err = conn.Exec(ctx, "SELECT pg_advisory_unlock($1, $2)", lockClass, lockMigrate)
	return err
}

// SchemaVersion reports the version recorded in the database.
func (s *Store) SchemaVersion() (uint64, error) {
	ctx, cancel := s.call()
	defer cancel()
	var v uint64
	err := s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_version").Scan(&v)
	return v, classify(err)
}
