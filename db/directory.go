package db

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// keyDirectorySummary is the meta key written with every directory
// snapshot.
var keyDirectorySummary = []byte("directory_snapshot")

// ReplaceDirectory swaps the stored directory snapshot (the LDAP sync's
// result) for a new one in one transaction: readers see the old snapshot or
// the new one, never a mix, and a crash keeps the old one. fill calls put
// once per record; records in key order (medium, then address) write
// fastest; a second record for the same 3PID replaces the first. summary is
// the caller's small document stored with the snapshot (meta key
// "directory_snapshot"); a nil summary and a fill that puts nothing remove
// the snapshot.
//
// The display names stored with a snapshot (directory_names.go) are
// removed with it: ReplaceDirectoryWithNames replaces both.
func (s *Store) ReplaceDirectory(summary []byte, fill func(put func(medium, address, mxid string) error) error) error {
	return s.ReplaceDirectoryWithNames(summary, fill, nil)
}

// replaceDirectory is ReplaceDirectory's work inside tx: the records and
// the summary.
func replaceDirectory(tx *bolt.Tx, summary []byte, fill func(put func(medium, address, mxid string) error) error) error {
	if tx.Bucket(bucketDirectory) != nil {
		if err := tx.DeleteBucket(bucketDirectory); err != nil {
			return err
		}
	}
	b, err := tx.CreateBucket(bucketDirectory)
	if err != nil {
		return err
	}
	b.FillPercent = 1 // written in key order, once, and only read until the next snapshot
	if fill != nil {
		err := fill(func(medium, address, mxid string) error {
			if medium == "" || address == "" || mxid == "" || strings.IndexByte(medium, 0) >= 0 || strings.IndexByte(address, 0) >= 0 {
				return errors.New("directory record with an empty field or a NUL")
			}
			return b.Put(key(medium, address), []byte(mxid))
		})
		if err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	if summary == nil {
		return meta.Delete(keyDirectorySummary)
	}
	return meta.Put(keyDirectorySummary, summary)
}

// DirectorySummary returns the summary stored with the directory snapshot;
// ok is false when none is stored.
func (s *Store) DirectorySummary() (summary []byte, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyDirectorySummary); v != nil {
			summary, ok = append([]byte(nil), v...), true
		}
		return nil
	})
	return summary, ok, err
}

// ScanDirectory calls fn for every record of the directory snapshot, in
// key order, with slices of the database itself: valid only during the
// call (as ScanBindings, in chunks of short read transactions). fn must not
// call the store.
func (s *Store) ScanDirectory(fn func(medium, address, mxid []byte) error) error {
	return s.scanChunks(bucketDirectory, func(k, v []byte) error {
		medium, address, ok := bytes.Cut(k, []byte{0})
		if !ok {
			return fmt.Errorf("corrupt directory snapshot key %q", k)
		}
		return fn(medium, address, v)
	})
}

// DirectoryMXIDs looks up many 3PIDs ({medium, address} pairs, canonical
// addresses) in the directory snapshot in one read transaction: one Matrix
// ID per pair, "" where the snapshot does not hold the 3PID.
func (s *Store) DirectoryMXIDs(threepids [][2]string) ([]string, error) {
	out := make([]string, len(threepids))
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDirectory)
		for i, tp := range threepids {
			if v := b.Get(key(tp[0], tp[1])); v != nil {
				out[i] = string(v)
			}
		}
		return nil
	})
	return out, err
}
