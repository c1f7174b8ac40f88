package db

import (
	"io"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// WriteBackup writes a consistent copy of the live database to w from one
// read transaction: writers carry on meanwhile, and the copy holds exactly
// what was committed when it started. announce, when set, is told the
// copy's size before the first byte is written (for a Content-Length).
func (s *Store) WriteBackup(w io.Writer, announce func(size int64)) (int64, error) {
	var n int64
	err := s.view(func(tx *bolt.Tx) error {
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
// it (then ask the server, see WriteBackup). Writing stops at the first
// error of w (a writer that checks for an interrupt stops it).
func BackupOffline(dir string, w io.Writer) (int64, error) {
	path := filepath.Join(dir, FileName)
	bdb, _, err := openBolt(path, true, openTimeout)
	if err != nil {
		return 0, err
	}
	defer bdb.Close()
	var n int64
	err = guard(path, func() error {
		return bdb.View(func(tx *bolt.Tx) error {
			var err error
			n, err = tx.WriteTo(w)
			return err
		})
	})
	return n, err
}

// VerifyBackup checks every page of a copy (CheckFile) and says what it
// holds; the error is nil only for a clean copy.
func VerifyBackup(path string) (Report, error) { return CheckFile(path) }
