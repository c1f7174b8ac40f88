package db

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PutBindingOnce stores b like PutBinding (replacing another owner, reverse
// index in the same transaction), except when the 3PID is already bound to
// b.MXID by a binding made at or after since (Unix ms): then that binding is
// kept and returned with changed false. Many binds of one validated session
// (client retries, parallel requests) thus store one binding and answer
// the same association.
func (s *Store) PutBindingOnce(b Binding, since int64) (stored Binding, changed bool, err error) {
	if err := b.check(); err != nil {
		return Binding{}, false, err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketBindings).Get(key(b.Medium, b.Address)); v != nil {
			var old Binding
			if err := json.Unmarshal(v, &old); err != nil {
				return fmt.Errorf("decode binding: %w", err)
			}
			if old.MXID == b.MXID && old.TS >= since {
				stored = old
				return errNoChange
			}
		}
		if _, err := putBinding(tx, b); err != nil {
			return err
		}
		stored, changed = b, true
		return nil
	})
	if err == errNoChange {
		err = nil
	}
	return stored, changed, err
}
