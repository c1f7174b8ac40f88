package db

import (
	"errors"
	"strings"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// The display names of the directory snapshot: Matrix ID -> display name of
// each directory entry that the user directory search may find (the LDAP
// sync's searchable subset). They belong to the snapshot: written in the
// same transaction as its records, removed with it. Every replica builds its
// search index from them.

// MaxDirectoryName bounds a stored display name, in bytes.
const MaxDirectoryName = 1024

// CheckDirectoryName reports why a display-name row cannot be stored (an
// empty Matrix ID, a NUL or invalid UTF-8 in either, a name longer than
// MaxDirectoryName), so that every backend refuses the same rows. The name
// may be empty: the entry is then found by its Matrix ID alone.
func CheckDirectoryName(mxid, name string) error {
	switch {
	case mxid == "":
		return errors.New("directory name with an empty Matrix ID")
	case strings.IndexByte(mxid, 0) >= 0 || strings.IndexByte(name, 0) >= 0 || !utf8.ValidString(mxid) || !utf8.ValidString(name):
		return errors.New("directory name contains NUL or is not valid UTF-8")
	case len(name) > MaxDirectoryName:
		return errors.New("directory name longer than 1024 bytes")
	}
	return nil
}

// ReplaceDirectoryWithNames is ReplaceDirectory that stores the snapshot's
// display names too, in the same transaction: names calls put once per
// Matrix ID (in Matrix ID order for speed); a second put for the same
// Matrix ID replaces the first. A nil names stores none.
func (s *Store) ReplaceDirectoryWithNames(summary []byte, fill func(put func(medium, address, mxid string) error) error, names func(put func(mxid, name string) error) error) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := replaceDirectory(tx, summary, fill); err != nil {
			return err
		}
		if tx.Bucket(bucketDirectoryNames) != nil {
			if err := tx.DeleteBucket(bucketDirectoryNames); err != nil {
				return err
			}
		}
		b, err := tx.CreateBucket(bucketDirectoryNames)
		if err != nil || names == nil {
			return err
		}
		b.FillPercent = 1 // as the records: written once in key order
		return names(func(mxid, name string) error {
			if err := CheckDirectoryName(mxid, name); err != nil {
				return err
			}
			return b.Put([]byte(mxid), []byte(name))
		})
	})
}

// ScanDirectoryNames calls fn for every display name of the directory
// snapshot, in Matrix ID order, with slices valid only during the call (in
// chunks of short read transactions, as ScanDirectory). fn must not call
// the store.
func (s *Store) ScanDirectoryNames(fn func(mxid, name []byte) error) error {
	return s.scanChunks(bucketDirectoryNames, fn)
}
