package pg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// errNoChange rolls a transaction back when nothing was written.
var errNoChange = errors.New("no change")

// callbackError carries an error returned by a caller's callback out of a
// transaction untouched (it is returned as is, not classified).
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// inTx runs fn in one READ COMMITTED transaction under the call's deadline
// and commits it when fn returns nil. errNoChange rolls back and counts as
// success; any other error rolls back and is returned.
func (s *Store) inTx(fn func(ctx context.Context, tx pgx.Tx) error) error {
	ctx, cancel := s.call()
	defer cancel()
	return s.runTx(ctx, fn)
}

// bulkDeadline bounds a transaction of many statements (a directory
// snapshot of 100,000 entries); each statement keeps the server-side
// statement timeout.
const bulkDeadline = 2 * time.Minute

// inBulkTx is inTx with bulkDeadline for the whole transaction.
func (s *Store) inBulkTx(fn func(ctx context.Context, tx pgx.Tx) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), max(bulkDeadline, s.opts.StatementTimeout))
	defer cancel()
	return s.runTx(ctx, fn)
}

func (s *Store) runTx(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return classify(err)
	}
	defer tx.Rollback(ctx) // after Commit, a no-op
	err = fn(ctx, tx)
	var cb *callbackError
	switch {
	case errors.As(err, &cb):
		return cb.err
	case errors.Is(err, errNoChange):
		return nil
	case err != nil:
		return classify(err)
	}
	return classify(tx.Commit(ctx))
}

// lockKey takes the transaction-scoped advisory lock of a key (a hash of its
// parts): writers of a row that may not exist yet wait for each other here.
// A hash collision only makes two unrelated writers wait for each other.
func lockKey(ctx context.Context, tx pgx.Tx, parts ...string) error {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	_, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64()))
	return err
}

// Fixed advisory locks use the two-integer form, which never conflicts with
// the one-bigint form of lockKey: class "mxid", then which lock.
const (
	lockClass   = 0x6d786964
	lockMigrate = 1
	lockChanges = 2
	lockLeader  = 3 // a session lock: see Leadership
)

// storable reports whether PostgreSQL text can hold every part: valid UTF-8
// without NUL. A key that is not storable is never found.
func storable(parts ...string) bool {
	for _, p := range parts {
		if !utf8.ValidString(p) || strings.IndexByte(p, 0) >= 0 {
			return false
		}
	}
	return true
}

// checkStorable refuses, with a plain message, what PostgreSQL text cannot
// hold (bbolt stores any bytes; PostgreSQL text no NUL or invalid UTF-8).
func checkStorable(what string, parts ...string) error {
	if !storable(parts...) {
		return fmt.Errorf("%s contains NUL or is not valid UTF-8", what)
	}
	return nil
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// queryAll runs a query and collects its rows, each scanned into the
// fields of a T.
func queryAll[T any](ctx context.Context, q querier, fields func(*T) []any, sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	var out []T
	var x T
	_, err = pgx.ForEachRow(rows, fields(&x), func() error {
		out = append(out, x)
		return nil
	})
	return out, err
}

// affected runs one statement under the call's deadline and says how many
// rows it changed (the sweeps).
func (s *Store) affected(sql string, args ...any) (int, error) {
	ctx, cancel := s.call()
	defer cancel()
	tag, err := s.pool.Exec(ctx, sql, args...)
	if err != nil {
		return 0, classify(err)
	}
	return int(tag.RowsAffected()), nil
}
