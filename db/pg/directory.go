package pg

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// metaDirectorySummary is the meta key written with every directory
// snapshot (as in the bbolt store).
const metaDirectorySummary = "directory_snapshot"

// ReplaceDirectory swaps the stored directory snapshot for a new one in one
// transaction, as db.Store.ReplaceDirectory: readers see the old snapshot
// or the new one; a second record for the same 3PID replaces the first; a
// nil summary and a fill that puts nothing remove the snapshot (and its
// display names: directory_names.go). fill runs before the transaction (it
// only hands over records). The replacement is logged as a ChangeDirectory,
// so other replicas reload it.
func (s *Store) ReplaceDirectory(summary []byte, fill func(put func(medium, address, mxid string) error) error) error {
	return s.ReplaceDirectoryWithNames(summary, fill, nil)
}

// directoryRows collects fill's records, a later one for a 3PID replacing
// an earlier one.
func directoryRows(fill func(put func(medium, address, mxid string) error) error) ([][]any, error) {
	if fill == nil {
		return nil, nil
	}
	at := map[[2]string]int{}
	var rows [][]any
	err := fill(func(medium, address, mxid string) error {
		if medium == "" || address == "" || mxid == "" || strings.IndexByte(medium, 0) >= 0 || strings.IndexByte(address, 0) >= 0 {
			return errors.New("directory record with an empty field or a NUL")
		}
		if err := checkStorable("directory record", medium, address, mxid); err != nil {
			return err
		}
		k := [2]string{medium, address}
		if i, ok := at[k]; ok {
			rows[i][2] = mxid
			return nil
		}
		at[k] = len(rows)
		rows = append(rows, []any{medium, address, mxid})
		return nil
	})
	return rows, err
}

// replaceDirectory writes the records and the summary in tx and logs the
// change.
func replaceDirectory(ctx context.Context, tx pgx.Tx, summary []byte, rows [][]any) error {
	if _, err := tx.Exec(ctx, "DELETE FROM directory"); err != nil {
		return err
	}
	if len(rows) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"directory"}, []string{"medium", "address", "mxid"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
	}
	var err error
	if summary == nil {
		_, err = tx.Exec(ctx, "DELETE FROM meta WHERE key = $1", metaDirectorySummary)
	} else {
		_, err = tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, metaDirectorySummary, summary)
	}
	if err != nil {
		return err
	}
	return appendChanges(ctx, tx, db.ChangeDirectory, db.Binding{})
}

// DirectorySummary returns the summary stored with the directory snapshot;
// ok is false when none is stored.
func (s *Store) DirectorySummary() (summary []byte, ok bool, err error) {
	ctx, cancel := s.call()
	defer cancel()
	err = s.pool.QueryRow(ctx, "SELECT value FROM meta WHERE key = $1", metaDirectorySummary).Scan(&summary)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, classify(err)
	}
	if summary == nil {
		summary = []byte{}
	}
	return summary, true, nil
}

// ScanDirectory calls fn for every record of the directory snapshot in key
// order (medium, address), with slices valid only during the call, reading
// in chunks as ScanBindings does. fn must not call the store.
func (s *Store) ScanDirectory(fn func(medium, address, mxid []byte) error) error {
	var after [2]string
	first := true
	for {
		n, err := s.scanDirectoryChunk(first, after, func(medium, address, mxid []byte) error {
			after = [2]string{string(medium), string(address)}
			return fn(medium, address, mxid)
		})
		if err != nil || n < scanChunk {
			return err
		}
		first = false
	}
}

func (s *Store) scanDirectoryChunk(first bool, after [2]string, fn func(medium, address, mxid []byte) error) (int, error) {
	ctx, cancel := s.call()
	defer cancel()
	var rows pgx.Rows
	var err error
	if first {
		rows, err = s.pool.Query(ctx, `SELECT medium, address, mxid FROM directory ORDER BY medium, address LIMIT $1`, scanChunk)
	} else {
		rows, err = s.pool.Query(ctx, `SELECT medium, address, mxid FROM directory
			WHERE (medium, address) > ($1, $2) ORDER BY medium, address LIMIT $3`, after[0], after[1], scanChunk)
	}
	if err != nil {
		return 0, classify(err)
	}
	return forEachRaw(rows, func(v [][]byte) error { return fn(v[0], v[1], v[2]) })
}

// forEachRaw calls fn with each row's raw values (valid only during the
// call) and closes rows; it returns how many rows fn took.
func forEachRaw(rows pgx.Rows, fn func(v [][]byte) error) (int, error) {
	defer rows.Close()
	n := 0
	for rows.Next() {
		if err := fn(rows.RawValues()); err != nil {
			return n, err
		}
		n++
	}
	return n, classify(rows.Err())
}

// DirectoryMXIDs looks up many 3PIDs ({medium, address} pairs, canonical
// addresses) in the directory snapshot in one statement: one Matrix ID per
// pair, "" where the snapshot does not hold the 3PID.
func (s *Store) DirectoryMXIDs(threepids [][2]string) ([]string, error) {
	return s.lookupPairs("directory", threepids)
}
