package db

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Binding is one 3PID -> Matrix ID association. Times are Unix milliseconds.
// Address is always in canonical form (the caller canonicalises).
type Binding struct {
	Medium    string `json:"medium"`
	Address   string `json:"address"`
	MXID      string `json:"mxid"`
	TS        int64  `json:"ts"`
	NotBefore int64  `json:"not_before"`
	NotAfter  int64  `json:"not_after"`
}

func (b Binding) check() error {
	if b.Medium == "" || b.Address == "" || b.MXID == "" {
		return errors.New("binding with empty medium, address or mxid")
	}
	for _, s := range []string{b.Medium, b.Address, b.MXID} {
		if strings.IndexByte(s, 0) >= 0 {
			return errors.New("binding field contains NUL")
		}
	}
	return nil
}

// PutBinding stores b, replacing any earlier owner of the same 3PID, and keeps
// the reverse index in step, in one transaction. It returns the binding it
// replaced, if any.
func (s *Store) PutBinding(b Binding) (previous *Binding, err error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	err = s.update(func(tx *bolt.Tx) error {
		var err error
		previous, err = putBinding(tx, b)
		return err
	})
	return previous, err
}

// PutBindings stores many bindings (an import), committing every chunk
// bindings in its own transaction. It stops at the first error and reports
// how many were stored.
func (s *Store) PutBindings(bs []Binding, chunk int) (stored int, err error) {
	if chunk <= 0 {
		chunk = 10000
	}
	for _, b := range bs {
		if err := b.check(); err != nil {
			return 0, err
		}
	}
	for start := 0; start < len(bs); start += chunk {
		end := min(start+chunk, len(bs))
		err := s.update(func(tx *bolt.Tx) error {
			for _, b := range bs[start:end] {
				if _, err := putBinding(tx, b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return stored, err
		}
		stored = end
	}
	return stored, nil
}

func putBinding(tx *bolt.Tx, b Binding) (*Binding, error) {
	fwd := tx.Bucket(bucketBindings)
	rev := tx.Bucket(bucketBindingsByMXID)
	k := key(b.Medium, b.Address)
	var previous *Binding
	if old := fwd.Get(k); old != nil {
		var p Binding
		if err := json.Unmarshal(old, &p); err != nil {
			return nil, fmt.Errorf("decode binding: %w", err)
		}
		previous = &p
		if err := rev.Delete(key(p.MXID, p.Medium, p.Address)); err != nil {
			return nil, err
		}
	}
	v, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	if err := fwd.Put(k, v); err != nil {
		return nil, err
	}
	return previous, rev.Put(key(b.MXID, b.Medium, b.Address), nil)
}

// GetBinding returns the binding of a 3PID, or ErrNotFound.
func (s *Store) GetBinding(medium, address string) (Binding, error) {
	var b Binding
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBindings).Get(key(medium, address))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &b)
	})
	return b, err
}

// DeleteBinding removes the binding of a 3PID if it belongs to mxid. It
// reports whether anything was removed; removing what is not there is not an
// error, so unbind is idempotent.
func (s *Store) DeleteBinding(medium, address, mxid string) (bool, error) {
	deleted := false
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		deleted, err = deleteBinding(tx, medium, address, mxid)
		return err
	})
	return deleted, err
}

// deleteBinding removes the binding of a 3PID, with its reverse index
// entry, if it belongs to mxid, and says whether it did.
func deleteBinding(tx *bolt.Tx, medium, address, mxid string) (bool, error) {
	fwd := tx.Bucket(bucketBindings)
	k := key(medium, address)
	v := fwd.Get(k)
	if v == nil {
		return false, nil
	}
	var b Binding
	if err := json.Unmarshal(v, &b); err != nil {
		return false, err
	}
	if b.MXID != mxid {
		return false, nil
	}
	if err := fwd.Delete(k); err != nil {
		return false, err
	}
	return true, tx.Bucket(bucketBindingsByMXID).Delete(key(b.MXID, b.Medium, b.Address))
}

// CountBindings returns the number of stored bindings.
func (s *Store) CountBindings() (int, error) {
	n := 0
	err := s.view(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketBindings).Stats().KeyN
		return nil
	})
	return n, err
}
