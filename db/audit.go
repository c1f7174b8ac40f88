package db

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The audit log: who removed what, and when, without the addresses. Every
// unbind, erasure and data-changing admin command appends an AuditEntry in
// the transaction that makes the change. An address appears only as a
// keyed hash (AddressHash, an HMAC under a secret kept in the meta
// document MetaAuditSecret, created once by whoever needs it first:
// CreateMeta), so an operator who is asked about an address can find its
// entries while a copy of the log alone reveals none. Entries are swept
// after the configured retention (SweepAudit).

// AuditEntry is one line of the audit log. It never holds an address.
type AuditEntry struct {
	// TS is when the action happened (Unix ms, the caller's clock).
	TS int64 `json:"ts"`
	// Actor is who acted: an account's Matrix ID, a homeserver's server
	// name (a signed request) or "admin" (mxid admin).
	Actor string `json:"actor"`
	// Action is what was done: "unbind", "erase", "withdraw_invites",
	// "queue_retry", "queue_drop".
	Action string `json:"action"`
	// Medium and AddressHash name the 3PID the action concerned, if any:
	// AddressHash is the keyed hash of the canonical address, never the
	// address.
	Medium      string `json:"medium,omitempty"`
	AddressHash string `json:"address_hash,omitempty"`
	// MXID is the user the action concerned, if any.
	MXID string `json:"mxid,omitempty"`
	// Detail says what was removed or changed, in counts and ids ("3
	// bindings, 2 invites sent"; "job 12"), never an address.
	Detail string `json:"detail,omitempty"`
}

func (AuditEntry) Kind() Kind { return KindAudit }

// AuditQuery selects audit entries: those at or after SinceMS, only those
// of AddressHash when it is set, at most Limit (0: all), oldest first.
type AuditQuery struct {
	SinceMS     int64
	AddressHash string
	Limit       int
}

// Match reports whether e is selected by q (the time and hash filters).
func (q AuditQuery) Match(e AuditEntry) bool {
	return e.TS >= q.SinceMS && (q.AddressHash == "" || e.AddressHash == q.AddressHash)
}

// AuditSecretSize is the size of the audit log's hash key.
const AuditSecretSize = 32

// MetaAuditSecret is the meta document holding the audit log's hash key.
// It is a meta document so that migrate-db moves it with the log: the
// hashes of old entries keep matching.
const MetaAuditSecret = "audit_secret"

// CheckAuditEntry refuses an entry without a time, an actor or an action.
func CheckAuditEntry(e AuditEntry) error {
	if e.TS <= 0 || e.Actor == "" || e.Action == "" {
		return errors.New("audit entry without a time, an actor or an action")
	}
	return nil
}

// auditKey is the key of an entry: its time, then a sequence number, so
// entries sort by time and never collide.
func auditKey(ts int64, seq uint64) []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k, uint64(ts))
	binary.BigEndian.PutUint64(k[8:], seq)
	return k
}

// appendAudit writes entries in tx.
func appendAudit(tx *bolt.Tx, entries ...AuditEntry) error {
	b := tx.Bucket(bucketAudit)
	for _, e := range entries {
		if err := CheckAuditEntry(e); err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := b.Put(auditKey(e.TS, seq), v); err != nil {
			return err
		}
	}
	return nil
}

// AppendAudit writes entries to the audit log in one transaction.
func (s *Store) AppendAudit(entries ...AuditEntry) error {
	return s.update(func(tx *bolt.Tx) error { return appendAudit(tx, entries...) })
}

// AuditEntries returns the entries q selects, oldest first.
func (s *Store) AuditEntries(q AuditQuery) ([]AuditEntry, error) {
	var out []AuditEntry
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(auditKey(max(q.SinceMS, 0), 0)); k != nil; k, v = c.Next() {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode audit entry: %w", err)
			}
			if !q.Match(e) {
				continue
			}
			out = append(out, e)
			if q.Limit > 0 && len(out) == q.Limit {
				return nil
			}
		}
		return nil
	})
	return out, err
}

// SweepAudit deletes the entries written before beforeMS and says how
// many.
func (s *Store) SweepAudit(beforeMS int64) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		end := auditKey(max(beforeMS, 0), 0)
		var old [][]byte // collected first: deleting under a cursor skips keys
		c := b.Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, end) < 0; k, _ = c.Next() {
			old = append(old, bytes.Clone(k))
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	return n, err
}
