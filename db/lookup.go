package db

import (
	"encoding/json"

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
	err := s.db.View(func(tx *bolt.Tx) error {
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
