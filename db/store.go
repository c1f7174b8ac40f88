// Package db owns mxid's persistent state: one bbolt file (mxid.db) in the
// data directory holding accounts, terms acceptance, 3PID bindings, validation
// sessions, invites, the onbind queue, lookup metadata and the audit log
// (audit.go), with the erasure of a user or an address (erase.go) and the
// scrub of the file's free pages after one (scrub.go).
//
// It imports no other mxid package; callers see plain Go types. bbolt is used
// only here.
//
// # Schema (version 1)
//
// Keys are parts joined by 0x00; integers and times are 8-byte big-endian so
// cursors sort by them. Values are JSON with explicit tags.
//
//	meta        "schema" -> uint64 schema version (drives migrations)
//	            other keys -> small JSON documents owned by a feature
//	            (e.g. "lookup_pepper": the lookup pepper, its age and the
//	            previous one in its grace period; "lookup_index_size": the
//	            size of the last lookup index build; "directory_snapshot":
//	            the summary of the directory snapshot, written with it;
//	            "audit_secret": the audit log's hash key, 32 bytes,
//	            created once)
//	accounts    sha256(token) -> Account{user_id, created_ts}
//	terms       user_id -> TermsAcceptance{accepted: {policy: version}}
//	bindings    medium 0x00 address -> Binding{medium, address, mxid, ts, not_before, not_after}
//	bindings_by_mxid
//	            mxid 0x00 medium 0x00 address -> empty (reverse index, for
//	            unbind by homeservers and onbind; never exposed as a lookup)
//	sessions    sid -> Session{sid, medium, address, client_secret, token,
//	            failures, send_attempt…, next_link, created_ts,
//	            modified_ts, validated_ts} (validation sessions; see
//	            sessions.go; address canonical; swept after expiry)
//	sessions_by_3pid
//	            medium 0x00 address 0x00 client_secret -> sid (at most one
//	            live session per 3PID and client_secret)
//	invites     token -> Invite (third-party invites, pending or delivered,
//	            kept until they expire)
//	invites_by_3pid
//	            medium 0x00 address 0x00 token -> empty
//	ephemeral_keys
//	            public key (unpadded base64) -> token
//	queue       uint64 due time 0x00 id -> Job (onbind deliveries)
//	directory   medium 0x00 address -> mxid (raw UTF-8, not JSON: read whole
//	            at start-up) — the last LDAP sync's snapshot, canonical
//	            addresses; replaced whole by one Update per changed sync
//	            (bucket deleted and refilled, summary in meta), so it is
//	            always one complete sync (directory.go)
//	directory_names
//	            mxid -> display name (raw UTF-8, may be empty) — the
//	            snapshot's entries the user directory search may find,
//	            written and removed with it (directory_names.go)
//	audit       uint64 ts, uint64 sequence -> AuditEntry{ts, actor, action,
//	            medium, address_hash, mxid, detail} (the audit log, never
//	            an address; swept after its retention; audit.go)
//
// A bucket appears in this list when a feature first writes it; buckets are
// created on open so readers never meet a missing bucket.
//
// Backups (backup.go) copy the whole file from one read transaction
// (Tx.WriteTo): consistent while writers carry on; not compacted.
//
// Damaged files (integrity.go) are refused, never a crash: the file is
// checked against its meta pages before bbolt maps it, every transaction
// turns a panic or memory fault into a *DamagedError, and Check reads every
// page (a bounds walk of our own, pagewalk.go, then bbolt's consistency
// check) and counts what the buckets hold.
package db

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the version this build writes and understands.
const SchemaVersion = 1

// FileName is the database file inside the data directory.
const FileName = "mxid.db"

var (
	bucketMeta           = []byte("meta")
	bucketAccounts       = []byte("accounts")
	bucketTerms          = []byte("terms")
	bucketBindings       = []byte("bindings")
	bucketBindingsByMXID = []byte("bindings_by_mxid")
	bucketSessions       = []byte("sessions")
	bucketSessionsBy3PID = []byte("sessions_by_3pid")
	bucketInvites        = []byte("invites")
	bucketInvitesBy3PID  = []byte("invites_by_3pid")
	bucketEphemeralKeys  = []byte("ephemeral_keys")
	bucketQueue          = []byte("queue")
	bucketDirectory      = []byte("directory")
	bucketDirectoryNames = []byte("directory_names")
	bucketAudit          = []byte("audit")
	allBuckets           = [][]byte{bucketMeta, bucketAccounts, bucketTerms, bucketBindings, bucketBindingsByMXID, bucketSessions, bucketSessionsBy3PID, bucketInvites, bucketInvitesBy3PID, bucketEphemeralKeys, bucketQueue, bucketDirectory, bucketDirectoryNames, bucketAudit}
	keySchema            = []byte("schema")
	errInUse             = errors.New("database in use")
	ErrNotFound          = errors.New("not found")
	openTimeout          = time.Second
	probeTimeout         = 100 * time.Millisecond
)

// ErrInUse is returned by Open when another process holds the database.
var ErrInUse = errInUse

// migrations[v] upgrades a database from schema version v to v+1. It runs in
// the same transaction that records the new version, so an upgrade is all or
// nothing.
var migrations = map[uint64]func(tx *bolt.Tx) error{}

// Store is the handle on the database. It is safe for concurrent use.
type Store struct {
	// readers is held shared by every read transaction (view) and taken
	// whole, without waiting, by ScrubFreePages.
	readers     sync.RWMutex
	db          *bolt.DB
	path        string
	opened      Report // Open's check
	rewroteMeta bool
}

// Open opens (creating if needed) mxid.db in dir. When another process holds
// the file it fails after a short timeout with an error that says so. The
// file is checked before anything is written to it: against its meta pages
// (a short file is refused), then every page (Check; Opened reports it).
// A damaged file is refused with a *DamagedError and left as it was. An
// empty file is initialised as a new database (the caller decides whether
// an empty file may be new). Only then is the schema brought up to date.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	bdb, st, err := openBolt(path, false, openTimeout)
	if err != nil {
		return nil, err
	}
	s := &Store{db: bdb, path: path}
	if err := s.open(st); err != nil {
		bdb.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) open(st fileState) error {
	if st.badMeta >= 0 {
		// A commit writes the meta page the next transaction id names,
		// which is the invalid one: this rewrites it from the valid one.
		if err := s.update(func(*bolt.Tx) error { return nil }); err != nil {
			return err
		}
		s.rewroteMeta = true
	}
	start := time.Now()
	readThrough(s.path)
	r, err := s.check(false)
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return err
	}
	r.DurationMS = time.Since(start).Milliseconds()
	s.opened = r
	s.ReleaseMapped() // the check read every page
	return s.init()
}

// Opened is the check Open made of every page (without the counts).
func (s *Store) Opened() Report { return s.opened }

// RewroteMeta says Open found one of the two meta pages invalid (a write
// cut short by a crash, or damage) and rewrote it from the other: the file
// is in the state of the transaction before the last one.
func (s *Store) RewroteMeta() bool { return s.rewroteMeta }

func (s *Store) init() error {
	// A file that is current is not written to.
	current := s.view(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				return ErrNotFound
			}
		}
		if v, ok, err := schemaVersion(tx, s.path); err != nil || !ok || v != SchemaVersion {
			return cmp.Or(err, ErrNotFound)
		}
		return nil
	})
	if current == nil {
		return nil
	}
	return s.update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		version, ok, err := schemaVersion(tx, s.path)
		if err != nil {
			return err
		}
		if !ok {
			version = SchemaVersion // a new file starts at the current schema
		}
		for ; version < SchemaVersion; version++ {
			m, ok := migrations[version]
			if !ok {
				return fmt.Errorf("no migration from schema version %d", version)
			}
			if err := m(tx); err != nil {
				return fmt.Errorf("migrate schema %d -> %d: %w", version, version+1, err)
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion))
	})
}

// schemaVersion reads the schema version recorded in the file; ok is false
// when there is none (a new file). A version newer than this build's is an
// error.
func schemaVersion(tx *bolt.Tx, path string) (version uint64, ok bool, err error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, false, nil
	}
	v := meta.Get(keySchema)
	if v == nil {
		return 0, false, nil
	}
	if len(v) != 8 {
		return 0, false, fmt.Errorf("%s: corrupt schema version", path)
	}
	version = binary.BigEndian.Uint64(v)
	if version > SchemaVersion {
		return version, true, fmt.Errorf("%s has schema version %d, newer than this mxid understands (%d); run a newer mxid", path, version, SchemaVersion)
	}
	return version, true, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file's path.
func (s *Store) Path() string { return s.path }

// SchemaVersion reports the version recorded in the file.
func (s *Store) SchemaVersion() (uint64, error) {
	var v uint64
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta).Get(keySchema)
		if len(b) != 8 {
			return errors.New("schema version missing")
		}
		v = binary.BigEndian.Uint64(b)
		return nil
	})
	return v, err
}

// GetMeta reads a small document from the meta bucket; ok is false when the
// key is absent.
func (s *Store) GetMeta(key string) (value []byte, ok bool, err error) {
	if key == string(keySchema) {
		return nil, false, errors.New("reserved meta key")
	}
	err = s.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get([]byte(key)); v != nil {
			value, ok = append([]byte(nil), v...), true
		}
		return nil
	})
	return value, ok, err
}

// PutMeta writes a small document to the meta bucket.
func (s *Store) PutMeta(key string, value []byte) error {
	if key == string(keySchema) {
		return errors.New("reserved meta key")
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte(key), value)
	})
}

// CreateMeta writes a meta document only if the key holds none yet, in one
// transaction, and returns what the key holds afterwards: value when this
// call created it, else the document already there (a value created once,
// like the lookup pepper, agreed on by whoever asks first).
func (s *Store) CreateMeta(key string, value []byte) (stored []byte, created bool, err error) {
	if key == string(keySchema) {
		return nil, false, errors.New("reserved meta key")
	}
	err = s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		if v := b.Get([]byte(key)); v != nil {
			stored = append([]byte(nil), v...)
			return nil
		}
		stored, created = append([]byte(nil), value...), true
		return b.Put([]byte(key), value)
	})
	return stored, created, err
}

func u64(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

// key joins parts with 0x00.
func key(parts ...string) []byte {
	n := len(parts)
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			b = append(b, 0)
		}
		b = append(b, p...)
	}
	return b
}
