package db

import (
	"bytes"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// BoundMXID returns the Matrix ID bound to a 3PID (canonical address); ok is
// false when it is not bound.
func (s *Store) BoundMXID(medium, address string) (mxid string, ok bool, err error) {
	got, err := s.BoundMXIDs([][2]string{{medium, address}})
	if err != nil {
		return "", false, err
	}
	return got[0], got[0] != "", nil
}

// BoundMXIDs looks up many 3PIDs ({medium, address} pairs, canonical
// addresses) in one read transaction. The result has one Matrix ID per pair,
// "" where the 3PID is not bound.
func (s *Store) BoundMXIDs(threepids [][2]string) ([]string, error) {
	out := make([]string, len(threepids))
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBindings)
		for i, tp := range threepids {
			v := b.Get(key(tp[0], tp[1]))
			if v == nil {
				continue
			}
			var row struct {
				MXID string `json:"mxid"`
			}
			if err := json.Unmarshal(v, &row); err != nil {
				return err
			}
			out[i] = row.MXID
		}
		return nil
	})
	return out, err
}

// ScanBindings calls fn for every binding with slices of the database
// itself: valid only during the call, never to be kept or modified. It
// reads the reverse index with scanChunks, so a scan of millions of
// bindings allocates nothing per binding and never pins old pages for long.
// fn must not call the store. Bindings changed during the scan may or may
// not be seen (the lookup index keeps up through its bind/unbind hooks).
func (s *Store) ScanBindings(fn func(medium, address, mxid []byte) error) error {
	return s.scanChunks(bucketBindingsByMXID, func(k, _ []byte) error {
		mxid, rest, ok1 := bytes.Cut(k, []byte{0})
		medium, address, ok2 := bytes.Cut(rest, []byte{0})
		if !ok1 || !ok2 {
			return fmt.Errorf("corrupt reverse index key %q", k)
		}
		return fn(medium, address, mxid)
	})
}

// scanChunks calls fn for every key and value of a bucket, in key order,
// reading it in chunks, each in its own short read transaction (a long one
// would pin old pages while writers go on), and drops the mapped pages from
// the resident set as it goes: a full scan leaves no resident trace.
func (s *Store) scanChunks(bucket []byte, fn func(k, v []byte) error) error {
	const chunk = 20000
	var after []byte
	chunks := 0
	for {
		n := 0
		err := s.view(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucket).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else {
				k, v = c.Seek(after)
				if k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && n < chunk; k, v = c.Next() {
				if err := fn(k, v); err != nil {
					return err
				}
				after = append(after[:0], k...)
				n++
			}
			return nil
		})
		if err != nil || n < chunk {
			s.ReleaseMapped()
			return err
		}
		if chunks++; chunks%8 == 0 {
			s.ReleaseMapped()
		}
	}
}
