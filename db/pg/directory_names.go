package pg

import (
	"context"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// ReplaceDirectoryWithNames is ReplaceDirectory that stores the snapshot's
// display names (table directory_names) too, in the same transaction, as
// db.Store.ReplaceDirectoryWithNames: a second name for the same Matrix ID
// replaces the first; a nil names stores none. Both callbacks run before
// the transaction.
func (s *Store) ReplaceDirectoryWithNames(summary []byte, fill func(put func(medium, address, mxid string) error) error, names func(put func(mxid, name string) error) error) error {
	rows, err := directoryRows(fill)
	if err != nil {
		return err
	}
	var nameRows [][]any
	if names != nil {
		at := map[string]int{}
		err := names(func(mxid, name string) error {
			if err := db.CheckDirectoryName(mxid, name); err != nil {
				return err
			}
			if i, ok := at[mxid]; ok {
				nameRows[i][1] = name
				return nil
			}
			at[mxid] = len(nameRows)
			nameRows = append(nameRows, []any{mxid, name})
			return nil
		})
		if err != nil {
			return err
		}
	}
	return s.inBulkTx(func(ctx context.Context, tx pgx.Tx) error {
		if err := replaceDirectory(ctx, tx, summary, rows); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM directory_names"); err != nil {
			return err
		}
		if len(nameRows) == 0 {
			return nil
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"directory_names"}, []string{"mxid", "name"}, pgx.CopyFromRows(nameRows))
		return err
	})
}

// ScanDirectoryNames calls fn for every display name of the directory
// snapshot in Matrix ID order, with slices valid only during the call,
// reading in chunks as ScanDirectory does. fn must not call the store.
func (s *Store) ScanDirectoryNames(fn func(mxid, name []byte) error) error {
	after, first := "", true
	for {
		n, err := s.scanNamesChunk(first, after, func(mxid, name []byte) error {
			after = string(mxid)
			return fn(mxid, name)
		})
		if err != nil || n < scanChunk {
			return err
		}
		first = false
	}
}

func (s *Store) scanNamesChunk(first bool, after string, fn func(mxid, name []byte) error) (int, error) {
	ctx, cancel := s.call()
	defer cancel()
	var rows pgx.Rows
	var err error
	if first {
		rows, err = s.pool.Query(ctx, `SELECT mxid, name FROM directory_names ORDER BY mxid LIMIT $1`, scanChunk)
	} else {
		rows, err = s.pool.Query(ctx, `SELECT mxid, name FROM directory_names WHERE mxid > $1 ORDER BY mxid LIMIT $2`, after, scanChunk)
	}
	if err != nil {
		return 0, classify(err)
	}
	return forEachRaw(rows, func(v [][]byte) error { return fn(v[0], v[1]) })
}
