package server

// The audit log and the retention of what mxid stores. Every removal of a
// binding (a user's session, a homeserver's signed request, the operator),
// every erasure and every admin command that changes data writes an audit
// entry in the transaction that makes the change (db.AuditEntry). The
// address is written as a keyed hash: HMAC-SHA256 under a key the store
// keeps (created once, shared by replicas, moved by migrate-db), so the
// operator can find an address's entries by asking with the address while
// the log alone reveals none. The retention sweep removes audit entries
// after [audit] retention and access tokens unused for [accounts]
// token_lifetime.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"mxid/db"
)

// AuditConfig is the [audit] section.
type AuditConfig struct {
	// Retention is how long audit entries are kept.
	Retention time.Duration `toml:"retention"`
}

// DefaultAuditConfig keeps audit entries for a year.
func DefaultAuditConfig() AuditConfig {
	return AuditConfig{Retention: 365 * 24 * time.Hour}
}

const (
	minAuditRetention = 24 * time.Hour
	maxAuditRetention = 10 * 365 * 24 * time.Hour
	minTokenLifetime  = 2 * tokenTouchEvery // a token in use is seen used within a day
)

func (c *AuditConfig) validate() []error {
	if c.Retention < minAuditRetention || c.Retention > maxAuditRetention {
		return []error{fmt.Errorf("audit.retention must be between 24h and 87600h (ten years), not %v", c.Retention)}
	}
	return nil
}

// Actors of audit entries that are not a user or a homeserver.
const actorAdmin = "admin"

// Actions of audit entries.
const (
	actionUnbind          = "unbind"
	actionErase           = "erase"
	actionWithdrawInvites = "withdraw_invites"
	actionQueueRetry      = "queue_retry"
	actionQueueDrop       = "queue_drop"
)

// auditor makes the audit log's address hashes with the store's key (the
// meta document db.MetaAuditSecret), read or created the first time it is
// needed: CreateMeta keeps the key already there, so every replica and
// every later start uses the first one made.
type auditor struct {
	store interface {
		CreateMeta(key string, value []byte) (stored []byte, created bool, err error)
	}
	now func() time.Time

	mu     sync.Mutex
	secret []byte
}

// ready reads the key (creating it the first time) unless it has been
// read already: before a store transaction whose callback hashes, which
// must not call the store.
func (a *auditor) ready() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.load()
}

func (a *auditor) load() error {
	if a.secret != nil {
		return nil
	}
	fresh := make([]byte, db.AuditSecretSize)
	if _, err := rand.Read(fresh); err != nil {
		return fmt.Errorf("the audit log's key: %w", err)
	}
	k, _, err := a.store.CreateMeta(db.MetaAuditSecret, fresh)
	if err != nil {
		return fmt.Errorf("the audit log's key: %w", err)
	}
	if len(k) != db.AuditSecretSize {
		return fmt.Errorf("the audit log's key (meta %q) is %d bytes, not %d", db.MetaAuditSecret, len(k), db.AuditSecretSize)
	}
	a.secret = k
	return nil
}

// hash is the keyed hash of a 3PID: hex HMAC-SHA256 of medium, NUL and the
// canonical address.
func (a *auditor) hash(medium, address string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.load(); err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, a.secret)
	m.Write([]byte(medium))
	m.Write([]byte{0})
	m.Write([]byte(address))
	return hex.EncodeToString(m.Sum(nil)), nil
}

// entry is an audit entry at the current time.
func (a *auditor) entry(actor, action, mxid, detail string) db.AuditEntry {
	return db.AuditEntry{TS: a.now().UnixMilli(), Actor: actor, Action: action, MXID: mxid, Detail: detail}
}

// entryFor is an entry about a 3PID (its address hashed).
func (a *auditor) entryFor(actor, action, medium, address, mxid, detail string) (db.AuditEntry, error) {
	h, err := a.hash(medium, address)
	if err != nil {
		return db.AuditEntry{}, err
	}
	e := a.entry(actor, action, mxid, detail)
	e.Medium, e.AddressHash = medium, h
	return e, nil
}

// retentionSweepEvery is how often the audit log and access tokens are
// swept.
const retentionSweepEvery = 10 * time.Minute

// sweepRetention removes audit entries older than [audit] retention,
// access tokens unused for [accounts] token_lifetime (when set) and the
// terms acceptances of users left with no token, and scrubs the free pages
// of a store an erasure could not scrub at once.
func (s *Server) sweepRetention() {
	now := s.now()
	if n, err := s.store.SweepAudit(now.Add(-s.cfg.Audit.Retention).UnixMilli()); err != nil {
		s.log.Error("sweeping the audit log", "err", err)
	} else if n > 0 {
		s.log.Info("swept audit entries past their retention", "count", n, "retention", s.cfg.Audit.Retention.String())
	}
	before := int64(0)
	if d := s.cfg.Accounts.TokenLifetime; d > 0 {
		before = now.Add(-d).UnixMilli()
	}
	if tokens, terms, err := s.store.SweepAccounts(before); err != nil {
		s.log.Error("sweeping access tokens", "err", err)
	} else if tokens+terms > 0 {
		s.log.Info("swept access tokens unused for their lifetime and terms acceptances of users with no token", "tokens", tokens, "terms", terms)
	}
	s.admin.scrubOwed()
}
