package db

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Moving a store from one backend to another (`mxid migrate-db`): every
// backend can Export what it holds as a stream of Records and Import such a
// stream into an empty store of its own. The Records are plain values, the
// same for every backend, so a bbolt file can be copied into PostgreSQL and
// back without either knowing the other.

// Kind names one kind of record a store keeps.
type Kind string

// The kinds, in the order Export produces them.
const (
	KindSigningKey     Kind = "signing_key"     // the long-term signing key's seed
	KindMeta           Kind = "meta"            // small documents: the pepper state, the directory summary, ...
	KindAccounts       Kind = "accounts"        // access tokens (their hashes) and their users
	KindTerms          Kind = "terms"           // the policy versions each user accepted
	KindBindings       Kind = "bindings"        // 3PID -> Matrix ID
	KindSessions       Kind = "sessions"        // validation sessions
	KindInvites        Kind = "invites"         // third-party invites, pending, queued or delivered
	KindQueue          Kind = "queue"           // onbind deliveries
	KindDirectory      Kind = "directory"       // the LDAP directory snapshot
	KindDirectoryNames Kind = "directory_names" // its display names (the user directory search)
	KindAudit          Kind = "audit"           // the audit log (address hashes, never addresses)
)

// Kinds lists every kind in export order.
func Kinds() []Kind {
	return []Kind{KindSigningKey, KindMeta, KindAccounts, KindTerms, KindBindings, KindSessions, KindInvites, KindQueue, KindDirectory, KindDirectoryNames, KindAudit}
}

// Record is one thing a store keeps: a Binding, Session, Invite or Job, or
// one of the entry types below. Export hands out records that are the
// caller's to keep; Import takes any of them in any order.
type Record interface{ Kind() Kind }

// MetaEntry is one small document of the meta store (the schema version is
// not one: each store keeps its own).
type MetaEntry struct {
	Key   string
	Value []byte // never nil
}

// AccountEntry is an access token as stored: its hash (TokenHash), never
// the token, which every backend hashes the same way, so tokens keep
// working in the copy.
type AccountEntry struct {
	TokenHash []byte
	Account   Account
}

// TermsEntry is what one user accepted: policy name -> version (at least
// one policy).
type TermsEntry struct {
	UserID   string
	Accepted map[string]string
}

// DirectoryEntry is one record of the LDAP directory snapshot (its summary
// is the meta document "directory_snapshot").
type DirectoryEntry struct {
	Medium, Address, MXID string
}

// DirectoryName is the display name of one Matrix ID of the directory
// snapshot (what the user directory search matches and shows).
type DirectoryName struct {
	MXID, Name string
}

// SigningKey is the long-term ed25519 signing key's 32-byte seed. Only a
// store that keeps the key exports and imports it (PostgreSQL); the bbolt
// store's key is the file signing.key beside mxid.db, which is not the
// store's business.
type SigningKey struct {
	Seed []byte
}

func (MetaEntry) Kind() Kind      { return KindMeta }
func (AccountEntry) Kind() Kind   { return KindAccounts }
func (TermsEntry) Kind() Kind     { return KindTerms }
func (Binding) Kind() Kind        { return KindBindings }
func (Session) Kind() Kind        { return KindSessions }
func (Invite) Kind() Kind         { return KindInvites }
func (Job) Kind() Kind            { return KindQueue }
func (DirectoryEntry) Kind() Kind { return KindDirectory }
func (DirectoryName) Kind() Kind  { return KindDirectoryNames }
func (SigningKey) Kind() Kind     { return KindSigningKey }

// Counts is how many records of each kind a store holds.
type Counts map[Kind]int

// Total is the number of records of every kind.
func (c Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// String lists the kinds it counts, in export order: "3 bindings, 1
// account and the signing key"; "nothing" when it counts none.
func (c Counts) String() string {
	var parts []string
	for _, k := range Kinds() {
		if n := c[k]; n > 0 {
			parts = append(parts, CountOf(k, n))
		}
	}
	switch len(parts) {
	case 0:
		return "nothing"
	case 1:
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// CountOf says n records of kind k in words: "1 binding", "2 queued
// deliveries", "the signing key".
func CountOf(k Kind, n int) string {
	nouns := map[Kind][2]string{
		KindMeta:           {"meta document", "meta documents"},
		KindAccounts:       {"account", "accounts"},
		KindTerms:          {"terms acceptance", "terms acceptances"},
		KindBindings:       {"binding", "bindings"},
		KindSessions:       {"validation session", "validation sessions"},
		KindInvites:        {"invite", "invites"},
		KindQueue:          {"queued delivery", "queued deliveries"},
		KindDirectory:      {"directory entry", "directory entries"},
		KindDirectoryNames: {"directory display name", "directory display names"},
		KindAudit:          {"audit entry", "audit entries"},
	}
	if k == KindSigningKey && n == 1 {
		return "the signing key"
	}
	noun, ok := nouns[k]
	if !ok {
		noun = [2]string{string(k), string(k)}
	}
	if n == 1 {
		return "1 " + noun[0]
	}
	return fmt.Sprintf("%d %s", n, noun[1])
}

// NotEmptyError is Import's refusal of a store that already holds
// something: records are imported only into an empty store, so nothing
// is merged or overwritten.
type NotEmptyError struct {
	Path  string // where the store is
	Holds Counts
}

func (e *NotEmptyError) Error() string {
	return fmt.Sprintf("%s is not empty: it holds %s (records are imported only into an empty store)", e.Path, e.Holds)
}

// ImportCheck is what every backend's Import checks of a record before
// storing it, so that the backends refuse the same records: the fields a
// normal write requires, a 32-byte token hash and signing key seed, a
// terms acceptance of at least one policy, a job body that is JSON. (Each
// backend adds what its storage cannot hold.)
func ImportCheck(r Record) error {
	switch r := r.(type) {
	case MetaEntry:
		if r.Key == "" || r.Key == string(keySchema) {
			return fmt.Errorf("meta key %q cannot be imported", r.Key)
		}
	case AccountEntry:
		if len(r.TokenHash) != 32 || r.Account.UserID == "" {
			return errors.New("account without a 32-byte token hash or a user")
		}
	case TermsEntry:
		if r.UserID == "" || len(r.Accepted) == 0 {
			return errors.New("terms acceptance without a user or a policy")
		}
	case Binding:
		return r.check()
	case Session:
		return r.check()
	case Invite:
		if r.Token == "" || r.Medium == "" || r.Address == "" || r.Ephemeral == "" {
			return errors.New("incomplete invite")
		}
	case Job:
		if r.ID == 0 || r.Destination == "" || !json.Valid(r.Body) {
			return fmt.Errorf("queued delivery %d without an id, a destination or a JSON body", r.ID)
		}
	case DirectoryEntry:
		if r.Medium == "" || r.Address == "" || r.MXID == "" || strings.IndexByte(r.Medium, 0) >= 0 || strings.IndexByte(r.Address, 0) >= 0 {
			return errors.New("directory record with an empty field or a NUL")
		}
	case DirectoryName:
		return CheckDirectoryName(r.MXID, r.Name)
	case SigningKey:
		if len(r.Seed) != 32 {
			return errors.New("signing key seed is not 32 bytes")
		}
	case AuditEntry:
		return CheckAuditEntry(r)
	default:
		return fmt.Errorf("unknown record type %T", r)
	}
	return nil
}

// Counts says how many records of each kind the store holds (Export's
// kinds; the bbolt store keeps no signing key).
func (s *Store) Counts() (Counts, error) {
	var c Counts
	err := s.view(func(tx *bolt.Tx) error {
		c = counts(tx)
		return nil
	})
	return c, err
}

func counts(tx *bolt.Tx) Counts {
	n := func(name []byte) int {
		if b := tx.Bucket(name); b != nil {
			return b.Stats().KeyN
		}
		return 0 // a file opened read-only that no mxid with this bucket has opened
	}
	c := Counts{
		KindMeta: n(bucketMeta), KindAccounts: n(bucketAccounts), KindTerms: n(bucketTerms),
		KindBindings: n(bucketBindings), KindSessions: n(bucketSessions), KindInvites: n(bucketInvites),
		KindQueue: n(bucketQueue), KindDirectory: n(bucketDirectory), KindDirectoryNames: n(bucketDirectoryNames),
		KindAudit: n(bucketAudit),
	}
	if tx.Bucket(bucketMeta).Get(keySchema) != nil {
		c[KindMeta]--
	}
	// An acceptance of nothing says nothing, and is not exported.
	tx.Bucket(bucketTerms).ForEach(func(_, v []byte) error {
		var ta termsAcceptance
		if json.Unmarshal(v, &ta) == nil && len(ta.Accepted) == 0 {
			c[KindTerms]--
		}
		return nil
	})
	return c
}

// Export calls fn with every record the store holds, kind by kind in the
// order of Kinds() (no signing key: see SigningKey), each kind in key
// order, from one read transaction: a consistent copy, which holds back
// the reuse of pages freed by writers while it runs (meant for a store no
// server is writing: `mxid migrate-db`). The pages it has read are dropped
// from the resident set as it goes, as ScanBindings does. An error from fn
// ends the export and is returned as is.
func (s *Store) Export(fn func(Record) error) error {
	var errFn error
	n := 0
	call := func(r Record) error {
		if err := fn(r); err != nil {
			errFn = err
			return err
		}
		if n++; n%100000 == 0 {
			return s.releaseMapped()
		}
		return nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		return exportTx(tx, call)
	})
	s.ReleaseMapped()
	if errFn != nil {
		return errFn
	}
	return err
}

func exportTx(tx *bolt.Tx, fn func(Record) error) error {
	each := func(bucket []byte, decode func(k, v []byte) (Record, error)) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			r, err := decode(k, v)
			if err != nil || r == nil {
				return err
			}
			return fn(r)
		})
	}
	decodeJSON := func(what string, v []byte, into any) error {
		if err := json.Unmarshal(v, into); err != nil {
			return fmt.Errorf("decode %s: %w", what, err)
		}
		return nil
	}
	steps := []func() error{
		func() error {
			return each(bucketMeta, func(k, v []byte) (Record, error) {
				if bytes.Equal(k, keySchema) {
					return nil, nil
				}
				return MetaEntry{Key: string(k), Value: append([]byte{}, v...)}, nil
			})
		},
		func() error {
			return each(bucketAccounts, func(k, v []byte) (Record, error) {
				e := AccountEntry{TokenHash: append([]byte{}, k...)}
				return e, decodeJSON("account", v, &e.Account)
			})
		},
		func() error {
			return each(bucketTerms, func(k, v []byte) (Record, error) {
				var ta termsAcceptance
				if err := decodeJSON("terms acceptance", v, &ta); err != nil || len(ta.Accepted) == 0 {
					return nil, err // an acceptance of nothing says nothing
				}
				return TermsEntry{UserID: string(k), Accepted: ta.Accepted}, nil
			})
		},
		func() error {
			return each(bucketBindings, func(_, v []byte) (Record, error) {
				var b Binding
				return b, decodeJSON("binding", v, &b)
			})
		},
		func() error {
			return each(bucketSessions, func(_, v []byte) (Record, error) {
				var x Session
				return x, decodeJSON("session", v, &x)
			})
		},
		func() error {
			return each(bucketInvites, func(_, v []byte) (Record, error) {
				var inv Invite
				return inv, decodeJSON("invite", v, &inv)
			})
		},
		func() error {
			return each(bucketQueue, func(_, v []byte) (Record, error) {
				var j Job
				if err := decodeJSON("queued delivery", v, &j); err != nil {
					return nil, err
				}
				if len(j.InviteTokens) == 0 {
					j.InviteTokens = nil
				}
				return j, nil
			})
		},
		func() error {
			return each(bucketDirectory, func(k, v []byte) (Record, error) {
				medium, address, ok := bytes.Cut(k, []byte{0})
				if !ok {
					return nil, fmt.Errorf("corrupt directory snapshot key %q", k)
				}
				return DirectoryEntry{Medium: string(medium), Address: string(address), MXID: string(v)}, nil
			})
		},
		func() error {
			return each(bucketDirectoryNames, func(k, v []byte) (Record, error) {
				return DirectoryName{MXID: string(k), Name: string(v)}, nil
			})
		},
		func() error {
			return each(bucketAudit, func(_, v []byte) (Record, error) {
				var e AuditEntry
				return e, decodeJSON("audit entry", v, &e)
			})
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// importChunk is how many records the bbolt store's Import commits at once.
const importChunk = 50000

// Import stores the records fill puts into this store, which must be empty
// (a *NotEmptyError otherwise, before fill is called), and returns the
// counts it holds afterwards. Each record is checked (ImportCheck) and
// stored with the indexes a normal write keeps; a second record for the
// same key (3PID, token, sid, job id, ...) is refused, as is a SigningKey
// (this store keeps none). Queued deliveries keep their ids: the queue's
// numbering goes on after the highest id of a job or an invite. An error
// from fill, put or a check ends the import and is returned; put's error
// is fill's to return.
//
// Records are committed in chunks: a failed import leaves what was
// committed before it (migrate-db builds the file in a temporary
// directory and moves it into place only when it is complete and
// verified). The store then counts what it holds, and a count that is not
// the number of records put is an error.
func (s *Store) Import(fill func(put func(Record) error) error) (Counts, error) {
	before, err := s.Counts()
	if err != nil {
		return nil, err
	}
	if before.Total() > 0 {
		return nil, &NotEmptyError{Path: s.path, Holds: before}
	}
	im := &boltImport{put: Counts{}, jobIDs: map[uint64]bool{}}
	var batch []Record
	flush := func() error {
		err := s.update(func(tx *bolt.Tx) error {
			for _, r := range batch {
				if err := im.store(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	err = fill(func(r Record) error {
		if err := ImportCheck(r); err != nil {
			return err
		}
		batch = append(batch, r)
		if len(batch) >= importChunk {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return nil, err
	}
	var after Counts
	err = s.update(func(tx *bolt.Tx) error {
		q := tx.Bucket(bucketQueue)
		if q.Sequence() < im.maxJob {
			if err := q.SetSequence(im.maxJob); err != nil {
				return err
			}
		}
		after = counts(tx)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return after, im.put.VerifyImport(after)
}

// VerifyImport is the check every backend's Import makes at its end: the
// records put (c) against the counts the store holds afterwards.
func (c Counts) VerifyImport(stored Counts) error {
	for _, k := range Kinds() {
		if c[k] != stored[k] {
			return fmt.Errorf("imported %s but the store holds %s", CountOf(k, c[k]), CountOf(k, stored[k]))
		}
	}
	return nil
}

// boltImport is the state of one Import.
type boltImport struct {
	put    Counts
	jobIDs map[uint64]bool
	maxJob uint64
}

func (im *boltImport) store(tx *bolt.Tx, r Record) error {
	putNew := func(bucket, k, v []byte, what string) error {
		b := tx.Bucket(bucket)
		if b.Get(k) != nil {
			return fmt.Errorf("%s %q is imported twice", what, k)
		}
		return b.Put(k, v)
	}
	var err error
	switch r := r.(type) {
	case MetaEntry:
		err = putNew(bucketMeta, []byte(r.Key), r.Value, "meta document")
	case AccountEntry:
		var v []byte
		if v, err = json.Marshal(r.Account); err == nil {
			err = putNew(bucketAccounts, r.TokenHash, v, "account token hash")
		}
	case TermsEntry:
		var v []byte
		if v, err = json.Marshal(termsAcceptance{Accepted: r.Accepted}); err == nil {
			err = putNew(bucketTerms, []byte(r.UserID), v, "terms acceptance of")
		}
	case Binding:
		if tx.Bucket(bucketBindings).Get(key(r.Medium, r.Address)) != nil {
			return fmt.Errorf("binding of %s %q is imported twice", r.Medium, r.Address)
		}
		_, err = putBinding(tx, r)
	case Session:
		if err = putNew(bucketSessionsBy3PID, key(r.Medium, r.Address, r.ClientSecret), []byte(r.ID), "session of 3PID and client_secret"); err == nil {
			if tx.Bucket(bucketSessions).Get([]byte(r.ID)) != nil {
				return fmt.Errorf("session %q is imported twice", r.ID)
			}
			err = putSession(tx, &r)
		}
	case Invite:
		if tx.Bucket(bucketInvites).Get([]byte(r.Token)) != nil {
			return fmt.Errorf("invite %q is imported twice", r.Token)
		}
		if err = putInvite(tx, r); err == nil {
			if err = tx.Bucket(bucketInvitesBy3PID).Put(key(r.Medium, r.Address, r.Token), nil); err == nil {
				err = tx.Bucket(bucketEphemeralKeys).Put([]byte(r.Ephemeral), []byte(r.Token))
			}
		}
		im.maxJob = max(im.maxJob, r.QueuedJob)
	case Job:
		if im.jobIDs[r.ID] {
			return fmt.Errorf("queued delivery %d is imported twice", r.ID)
		}
		im.jobIDs[r.ID] = true
		im.maxJob = max(im.maxJob, r.ID)
		err = putJob(tx, r)
	case DirectoryEntry:
		err = putNew(bucketDirectory, key(r.Medium, r.Address), []byte(r.MXID), "directory record")
	case DirectoryName:
		err = putNew(bucketDirectoryNames, []byte(r.MXID), []byte(r.Name), "directory display name of")
	case SigningKey:
		return errors.New("the bbolt store keeps no signing key: it is the file signing.key beside mxid.db")
	case AuditEntry:
		err = appendAudit(tx, r)
	}
	if err != nil {
		return err
	}
	im.put[r.Kind()]++
	return nil
}
