package pg

import (
	"errors"

	"github.com/jackc/pgx/v5"
)

// BoundMXID returns the Matrix ID bound to a 3PID (canonical address); ok is
// false when it is not bound.
func (s *Store) BoundMXID(medium, address string) (mxid string, ok bool, err error) {
	if !storable(medium, address) {
		return "", false, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	err = s.pool.QueryRow(ctx, "SELECT mxid FROM bindings WHERE medium = $1 AND address = $2", medium, address).Scan(&mxid)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, classify(err)
	}
	return mxid, true, nil
}

// BoundMXIDs looks up many 3PIDs ({medium, address} pairs, canonical
// addresses) in one statement. The result has one Matrix ID per pair, ""
// where the 3PID is not bound.
func (s *Store) BoundMXIDs(threepids [][2]string) ([]string, error) {
	return s.lookupPairs("bindings", threepids)
}

// lookupPairs answers many {medium, address} pairs from table (bindings or
// directory, both keyed by medium and address) in one statement: one Matrix
// ID per pair, "" where the table does not hold it.
func (s *Store) lookupPairs(table string, threepids [][2]string) ([]string, error) {
	out := make([]string, len(threepids))
	var media, addresses []string
	var at []int32 // index in threepids of each queried pair
	for i, tp := range threepids {
		if storable(tp[0], tp[1]) {
			media, addresses, at = append(media, tp[0]), append(addresses, tp[1]), append(at, int32(i))
		}
	}
	if len(at) == 0 {
		return out, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	// A correlated subquery, so each pair is one primary-key probe whatever
	// plan a cached statement ends up with. table is one of two constants.
	rows, err := s.pool.Query(ctx, `SELECT q.i, (SELECT t.mxid FROM `+table+` t WHERE t.medium = q.m AND t.address = q.a)
		FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(m, a, i)`, media, addresses)
	if err != nil {
		return nil, classify(err)
	}
	var i int64
	var mxid *string
	_, err = pgx.ForEachRow(rows, []any{&i, &mxid}, func() error {
		if mxid != nil {
			out[at[i-1]] = *mxid
		}
		return nil
	})
	if err != nil {
		return nil, classify(err)
	}
	return out, nil
}

// scanChunk is how many bindings one ScanBindings query reads.
const scanChunk = 20000

// ScanBindings calls fn for every binding, in the reverse index's order
// (mxid, medium, address), with slices valid only during the call. It reads
// in chunks, each one query under its own deadline, so a scan of millions
// of bindings neither holds a snapshot for long nor runs into the statement
// timeout. fn must not call the store. Bindings changed during the scan may
// or may not be seen (followers catch up from the change log).
func (s *Store) ScanBindings(fn func(medium, address, mxid []byte) error) error {
	var after [3]string // mxid, medium, address of the last row seen
	first := true
	for {
		n, err := s.scanChunk(first, after, func(mxid, medium, address []byte) error {
			after = [3]string{string(mxid), string(medium), string(address)}
			return fn(medium, address, mxid)
		})
		if err != nil || n < scanChunk {
			return err
		}
		first = false
	}
}

func (s *Store) scanChunk(first bool, after [3]string, fn func(mxid, medium, address []byte) error) (int, error) {
	ctx, cancel := s.call()
	defer cancel()
	var rows pgx.Rows
	var err error
	if first {
		rows, err = s.pool.Query(ctx, `SELECT mxid, medium, address FROM bindings
			ORDER BY mxid, medium, address LIMIT $1`, scanChunk)
	} else {
		rows, err = s.pool.Query(ctx, `SELECT mxid, medium, address FROM bindings
			WHERE (mxid, medium, address) > ($1, $2, $3)
			ORDER BY mxid, medium, address LIMIT $4`, after[0], after[1], after[2], scanChunk)
	}
	if err != nil {
		return 0, classify(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		v := rows.RawValues() // text in binary format: the bytes themselves
		if err := fn(v[0], v[1], v[2]); err != nil {
			return n, err // fn's error, as is
		}
		n++
	}
	return n, classify(rows.Err())
}
