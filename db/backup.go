package db

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// WriteBackup writes a consistent copy of the live database to w from one
// read transaction: writers carry on meanwhile, and the copy holds exactly
// what was committed when it started. announce, when set, is told the
// copy's size before the first byte is written (for a Content-Length).
func (s *Store) WriteBackup(w io.Writer, announce func(size int64)) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		if announce != nil {
			announce(tx.Size())
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// BackupOffline copies mxid.db in dir to w when no mxid is using it. It
// opens the file read-only and fails fast with ErrInUse when a server holds
// it (then ask the server, see WriteBackup).
func BackupOffline(dir string, w io.Writer) (int64, error) {
	path := filepath.Join(dir, FileName)
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("no database at %s: %w", path, err)
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return 0, fmt.Errorf("%s is locked by a running mxid: %w", path, errInUse)
	}
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer bdb.Close()
	var n int64
	err = bdb.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// BackupSummary is what a verified backup holds.
type BackupSummary struct {
	Schema   uint64
	Bindings int
	Accounts int
	Invites  int
}

// VerifyBackup opens a database file read-only, checks every page
// (bbolt's consistency check) and counts what it holds.
func VerifyBackup(path string) (BackupSummary, error) {
	var sum BackupSummary
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return sum, fmt.Errorf("open %s: %w", path, err)
	}
	defer bdb.Close()
	err = bdb.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("consistency check: %w", err)
		}
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return errors.New("not an mxid database (no meta bucket)")
		}
		if v := meta.Get(keySchema); len(v) == 8 {
			sum.Schema = binary.BigEndian.Uint64(v)
		} else {
			return errors.New("not an mxid database (no schema version)")
		}
		count := func(name []byte) int {
			if b := tx.Bucket(name); b != nil {
				return b.Stats().KeyN
			}
			return 0
		}
		sum.Bindings, sum.Accounts, sum.Invites = count(bucketBindings), count(bucketAccounts), count(bucketInvites)
		return nil
	})
	return sum, err
}
