//go:build linux

package db

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// ReleaseMapped drops the database pages this process has mapped from its
// resident memory, after a full scan (the lookup index build reads every
// binding once). The pages stay in the kernel's page cache and the
// read-only shared mapping faults them back in on the next read, so nothing
// changes but the resident set. The mapping is found in /proc/self/maps by
// the file's inode; a read transaction is held meanwhile so bbolt cannot
// remap it under us.
func (s *Store) ReleaseMapped() error {
	return s.view(func(*bolt.Tx) error { return s.releaseMapped() })
}

// releaseMapped is ReleaseMapped for a caller holding a transaction.
func (s *Store) releaseMapped() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	inode := []byte(strconv.FormatUint(st.Ino, 10))
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 6 || !bytes.Equal(fields[4], inode) || !bytes.HasSuffix(fields[5], []byte(FileName)) {
			continue
		}
		lo, hi, ok := bytes.Cut(fields[0], []byte{'-'})
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), syscall.MADV_DONTNEED); errno != 0 {
			return errno
		}
	}
	return sc.Err()
}
