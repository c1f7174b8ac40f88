package db

// Damaged files. bbolt trusts its file: a file shorter than its meta page
// says is mapped anyway and the first read past the end kills the process
// with SIGBUS, and a page of garbage makes it panic wherever it is met. So
// the file is checked against its meta pages before bbolt opens it, every
// transaction runs under guard (a panic or memory fault becomes a
// *DamagedError), and Check runs bbolt's consistency check over every page.

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DamagedError says the database file cannot be used as it is. Its message
// is the whole advice: "<path> is <problem>: restore it from a backup".
type DamagedError struct {
	Path    string
	Problem string // "truncated (N bytes, needs at least M)", "damaged (…)"
	detail  string // what bbolt said, for a Report
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("%s is %s: restore it from a backup", e.Path, e.Problem)
}

// bbolt's file format (go.etcd.io/bbolt/internal/common, native byte
// order): every page starts with a 16-byte header; pages 0 and 1 hold the
// two meta pages, each {magic, version, page size, flags: uint32; root
// bucket: 16 bytes; freelist, high-water page id, txid, FNV-64a checksum
// of the bytes before it: uint64}.
const (
	pageHeaderSize = 16
	metaSize       = 64
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	noFreelist     = ^uint64(0)
)

// meta is what the file check needs from a meta page.
type meta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // pages below this id are in use: the file holds at least pgid × pageSize bytes
	txid     uint64
}

// parseMeta decodes the meta page at the start of b; ok is false when it is
// not a valid one (wrong magic or version, checksum mismatch, impossible
// values).
func parseMeta(b []byte) (m meta, ok bool) {
	if len(b) < pageHeaderSize+metaSize {
		return m, false
	}
	b = b[pageHeaderSize : pageHeaderSize+metaSize]
	ne := binary.NativeEndian
	if ne.Uint32(b[0:]) != boltMagic || ne.Uint32(b[4:]) != boltVersion {
		return m, false
	}
	h := fnv.New64a()
	h.Write(b[:56])
	if h.Sum64() != ne.Uint64(b[56:]) {
		return m, false
	}
	m = meta{pageSize: ne.Uint32(b[8:]), root: ne.Uint64(b[16:]), freelist: ne.Uint64(b[32:]), pgid: ne.Uint64(b[40:]), txid: ne.Uint64(b[48:])}
	if m.pageSize < 1024 || m.pageSize&(m.pageSize-1) != 0 || m.pgid < 2 || m.root >= m.pgid || (m.freelist >= m.pgid && m.freelist != noFreelist) {
		return m, false
	}
	return m, true
}

// readMeta reads the meta page at off; a short read is an invalid page.
func readMeta(f *os.File, off int64) (meta, bool) {
	buf := make([]byte, pageHeaderSize+metaSize)
	if _, err := f.ReadAt(buf, off); err != nil {
		return meta{}, false
	}
	return parseMeta(buf)
}

// fileState is what checkFile learnt of a file.
type fileState struct {
	size    int64
	meta    meta // the one bbolt uses
	badMeta int  // the meta page (0 or 1) that is invalid while the other is valid; -1: none
}

// checkFile compares the file at path with its meta pages as bbolt will
// read them: the page size from meta page 0 (or, when that is damaged, from
// meta page 1 found where bbolt looks for it), then the valid meta page with
// the higher transaction id, whose high-water mark says how long the file
// must be. A missing file is an error satisfying errors.Is(err,
// os.ErrNotExist), an empty one is size 0 and no error (the caller
// decides). One invalid meta page is no error: bbolt uses the other one
// (the state before the last commit; a meta write cut short by a crash
// leaves this), and the next commit rewrites it.
func checkFile(path string) (fileState, error) {
	st := fileState{badMeta: -1}
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return st, err
	}
	size := fi.Size()
	st.size = size
	if size == 0 {
		return st, nil
	}
	m0, ok0 := readMeta(f, 0)
	var m1 meta
	var ok1 bool
	if ok0 {
		m1, ok1 = readMeta(f, int64(m0.pageSize))
	} else {
		for off := int64(1024); off <= 1024<<14 && off < size; off <<= 1 {
			if m, ok := readMeta(f, off); ok && int64(m.pageSize) == off {
				m1, ok1 = m, true
				break
			}
		}
	}
	var m meta
	switch {
	case ok0 && ok1:
		m = m0
		if m1.txid > m0.txid {
			m = m1
		}
	case ok0:
		m, st.badMeta = m0, 1
	case ok1:
		m, st.badMeta = m1, 0
	default:
		return st, &DamagedError{Path: path, Problem: fmt.Sprintf("damaged (%d bytes and no valid bbolt meta page: not a database file, or its first pages are overwritten)", size)}
	}
	st.meta = m
	if need := int64(m.pgid) * int64(m.pageSize); size < need {
		return st, &DamagedError{Path: path, Problem: fmt.Sprintf("truncated (%d bytes, needs at least %d)", size, need)}
	}
	return st, nil
}

// guard runs fn, turning a panic or a memory fault inside it (bbolt's
// reaction to a damaged page) into a *DamagedError for path. Faults become
// panics only on the calling goroutine, which is where bbolt reads pages
// for a transaction.
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			detail := fmt.Sprint(r)
			if _, fault := r.(interface{ Addr() uintptr }); fault {
				detail = "a read outside the file: cut short while in use, or a damaged page"
			}
			err = &DamagedError{Path: path, Problem: "damaged (" + detail + ")", detail: detail}
		}
	}()
	return fn()
}

// view and update are bbolt's View and Update under guard: every
// transaction of the store goes through them.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.readers.RLock()
	defer s.readers.RUnlock()
	return guard(s.path, func() error { return s.db.View(fn) })
}

func (s *Store) update(fn func(*bolt.Tx) error) error {
	return guard(s.path, func() error { return s.db.Update(fn) })
}

// openBolt checks the file and opens it with bbolt, failing after
// timeout with errInUse when another process holds it. A read-only open
// refuses a missing or empty file; a read-write one creates the file or
// initialises an empty one.
func openBolt(path string, readOnly bool, timeout time.Duration) (*bolt.DB, fileState, error) {
	st, err := checkFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist) && readOnly:
		return nil, st, fmt.Errorf("no database at %s", path)
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, st, err
	case st.size == 0 && readOnly:
		return nil, st, &DamagedError{Path: path, Problem: "empty (0 bytes)"}
	}
	var bdb *bolt.DB
	err = guard(path, func() error {
		var err error
		bdb, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: readOnly, Timeout: timeout})
		return err
	})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, st, fmt.Errorf("another mxid is using %s (the file is locked); stop it or choose another data_dir: %w", path, errInUse)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, st, &DamagedError{Path: path, Problem: fmt.Sprintf("damaged (%v)", err)}
	case err != nil:
		var de *DamagedError
		if errors.As(err, &de) {
			return nil, st, err
		}
		return nil, st, fmt.Errorf("open %s: %w", path, err)
	}
	return bdb, st, nil
}

// Report is what a check of every page found: the file's size, its schema
// and what it holds, or the problems bbolt's consistency check met (then
// the counts are not taken). Problems lists at most maxProblems of them;
// ProblemCount counts them all.
type Report struct {
	Path         string   `json:"path"`
	Size         int64    `json:"size"`
	Schema       uint64   `json:"schema"`
	Bindings     int      `json:"bindings"`
	Sessions     int      `json:"sessions"`
	Accounts     int      `json:"accounts"`
	Invites      int      `json:"invites"`
	Queued       int      `json:"queued_deliveries"`
	Problems     []string `json:"problems,omitempty"`
	ProblemCount int      `json:"problem_count"`
	DurationMS   int64    `json:"duration_ms"`
}

const maxProblems = 20

// Err is nil for a clean report and otherwise a *DamagedError naming the
// first problem.
func (r Report) Err() error {
	if r.ProblemCount == 0 {
		return nil
	}
	problem := r.Problems[0]
	if r.ProblemCount > 1 {
		problem += fmt.Sprintf("; and %d more problem(s)", r.ProblemCount-1)
	}
	return &DamagedError{Path: r.Path, Problem: "damaged (" + problem + ")"}
}

// check walks the pages' bounds (pagewalk.go), runs bbolt's consistency
// check in tx and, when both are clean, reads the schema (an error when
// newer than this build's) and counts what the buckets hold. A panic while
// counting is the caller's guard's. tx must be read-only on a file no one
// writes, or the writer's.
func check(tx *bolt.Tx, r *Report, counts bool) error {
	r.Size = tx.Size()
	// No commit can come between: the file's meta page is tx's.
	st, err := checkFile(r.Path)
	if err == nil {
		err = walkPages(r.Path, st.meta)
	}
	if err != nil { // bbolt's check would go outside the file, or round for ever
		var de *DamagedError
		if errors.As(err, &de) {
			err = errors.New(de.Problem)
		}
		r.ProblemCount++
		r.Problems = append(r.Problems, err.Error())
		return nil
	}
	for err := range tx.Check() {
		if r.ProblemCount++; len(r.Problems) < maxProblems {
			// bbolt's check reports a panic it met as "panic: …"
			r.Problems = append(r.Problems, strings.TrimPrefix(err.Error(), "panic: "))
		}
	}
	if r.ProblemCount > 0 {
		return nil
	}
	version, _, err := schemaVersion(tx, r.Path)
	if err != nil {
		return err
	}
	r.Schema = version // 0: none yet (a new file)
	if !counts {
		return nil
	}
	count := func(name []byte) int {
		if b := tx.Bucket(name); b != nil {
			return b.Stats().KeyN
		}
		return 0
	}
	r.Bindings, r.Sessions, r.Accounts = count(bucketBindings), count(bucketSessions), count(bucketAccounts)
	r.Invites, r.Queued = count(bucketInvites), count(bucketQueue)
	return nil
}

// absorb records a *DamagedError met during a check (a panic or fault in
// bbolt) as one more problem; any other error is returned.
func (r *Report) absorb(err error) error {
	var de *DamagedError
	if !errors.As(err, &de) {
		return err
	}
	r.ProblemCount++
	r.Problems = append(r.Problems, cmp.Or(de.detail, de.Problem))
	return nil
}

// readThrough reads the file at path once from start to end, discarding
// what it reads, so that it is in the page cache for a check: the check
// walks pages in key order, scattered over the file, which read cold from
// disk is random I/O (13 s for a 645 MB file on the test machine, against
// 1.3 s read straight through; 30 ms when it is cached already).
func readThrough(path string) {
	f, err := os.Open(path)
	if err != nil {
		return // the check will say
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Read(buf); err != nil {
			return
		}
	}
}

// Check checks every page of the open store and counts what it holds; the
// problems it finds are in the report (Report.Err). It runs in a
// read-write transaction that it rolls back: bbolt's check reads the free
// list, which only a writer may do while others write, so binds wait for
// the check (readers, lookups among them, do not). The pages it read are
// then dropped from the process's resident memory.
func (s *Store) Check() (Report, error) {
	readThrough(s.path) // before the lock: binds wait only for the walk
	defer s.ReleaseMapped()
	return s.check(true)
}

// check is Check; without counts it only checks (a second walk of every
// bucket saved: Open's check).
func (s *Store) check(counts bool) (r Report, err error) {
	start := time.Now()
	r.Path = s.path
	defer func() { r.DurationMS = time.Since(start).Milliseconds() }()
	err = guard(s.path, func() error {
		tx, err := s.db.Begin(true)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		return check(tx, &r, counts)
	})
	return r, r.absorb(err)
}

// CheckFile checks every page of the database file at path with no server
// holding it (read-only; ErrInUse when one does) and counts what it holds.
// The error is nil only for a clean file: Report.Err when the check found
// problems, or why the file could not be checked.
func CheckFile(path string) (Report, error) { return checkFileWithin(path, openTimeout) }

func checkFileWithin(path string, timeout time.Duration) (r Report, err error) {
	start := time.Now()
	r.Path = path
	defer func() { r.DurationMS = time.Since(start).Milliseconds() }()
	bdb, st, err := openBolt(path, true, timeout)
	if err != nil {
		return r, err
	}
	defer bdb.Close()
	readThrough(path)
	if st.badMeta >= 0 {
		r.ProblemCount++
		r.Problems = append(r.Problems, fmt.Sprintf("meta page %d is unreadable: bbolt uses the other one (the state before the last write) and mxid rewrites it when it next opens the file", st.badMeta))
	}
	err = guard(path, func() error {
		return bdb.View(func(tx *bolt.Tx) error { return check(tx, &r, true) })
	})
	if err := r.absorb(err); err != nil {
		return r, err
	}
	if r.ProblemCount == 0 && r.Schema == 0 {
		return r, fmt.Errorf("%s is not an mxid database (no schema version)", path)
	}
	return r, r.Err()
}

// Probe is check-config's look at the database in dir, to tell in advance
// what serve will say of it: the file against its meta pages (no lock
// needed) and, when no server holds the file, every page (CheckFile). While
// a server holds it, the meta pages only: that server checked every page
// when it started. A missing file satisfies errors.Is(err, os.ErrNotExist);
// an empty one gives size 0 and no error.
func Probe(dir string) (size int64, err error) {
	path := filepath.Join(dir, FileName)
	st, err := checkFile(path)
	if err != nil || st.size == 0 || st.badMeta >= 0 { // serve rewrites a bad meta page first
		return st.size, err
	}
	if _, err = checkFileWithin(path, probeTimeout); errors.Is(err, errInUse) {
		err = nil
	}
	return st.size, err
}
