// Package storetest is the one behavioural suite of mxid's storage
// contract: Run checks a backend (the bbolt store in package db, the
// PostgreSQL store in db/pg) against what callers rely on, so that callers
// cannot tell the backends apart. Backend-specific matters (bbolt's file
// lock and backups, PostgreSQL's migrations and outages) are tested beside
// each backend.
//
// It is test support: only _test.go files import it. It imports package db
// (the types and sentinel errors) and the standard library.
package storetest

import (
	"testing"
	"time"

	"mxid/db"
)

// Store is the storage contract: the methods both backends have, with the
// semantics documented on package db's Store.
//
// Queue claims: DueJobs hands out jobs for delivery. A backend that several
// processes share (PostgreSQL) claims the jobs it returns: no other handle's
// DueJobs returns them until the claim lease has passed (measured on the
// callers' nowMS clock), so each job is delivered by one replica at a time
// and a replica that dies mid-delivery leaves its jobs to another after the
// lease. CompleteJob, RetryJob and DropJob end the claim. A single-process
// backend (bbolt) has nothing to claim: its one delivery loop does not ask
// again before it has completed, retried or dropped what it got.
type Store interface {
	Close() error
	// Path says where the data is, for messages: a file, or a URL
	// without its password.
	Path() string
	SchemaVersion() (uint64, error)
	// Check is `mxid check-db`: the counts of what the store holds and
	// the problems found (none on a sound store).
	Check() (db.Report, error)
	GetMeta(key string) (value []byte, ok bool, err error)
	PutMeta(key string, value []byte) error
	CreateMeta(key string, value []byte) (stored []byte, created bool, err error)

	CreateAccountToken(token, userID string, now time.Time) error
	AccountByToken(token string) (db.Account, error)
	DeleteAccountToken(token string) error
	AcceptedTerms(userID string) (map[string]string, error)
	AcceptTerms(userID string, accepted map[string]string) error

	Bind(b db.Binding, since int64, onbind db.OnbindFunc) (stored db.Binding, changed bool, queued *db.Job, err error)
	PutBinding(b db.Binding) (previous *db.Binding, err error)
	PutBindings(bs []db.Binding, chunk int) (stored int, err error)
	GetBinding(medium, address string) (db.Binding, error)
	DeleteBinding(medium, address, mxid string) (bool, error)
	CountBindings() (int, error)
	BoundMXID(medium, address string) (mxid string, ok bool, err error)
	BoundMXIDs(threepids [][2]string) ([]string, error)
	ScanBindings(fn func(medium, address, mxid []byte) error) error

	PutInvite(inv db.Invite) error
	GetInvite(token string) (db.Invite, error)
	EphemeralKeyExists(pub string) (bool, error)
	SweepInvites(nowMS int64) (int, error)
	DeleteInvite(token string) error

	DueJobs(nowMS int64, limit int) ([]db.Job, error)
	NextJobDue() (dueTS int64, ok bool, err error)
	CompleteJob(j db.Job, nowMS int64) error
	RetryJob(j db.Job, dueTS int64, lastErr string) error
	DropJob(j db.Job) error
	QueueDepth() (int, error)

	ReplaceDirectory(summary []byte, fill func(put func(medium, address, mxid string) error) error) error
	DirectorySummary() (summary []byte, ok bool, err error)
	ScanDirectory(fn func(medium, address, mxid []byte) error) error
	DirectoryMXIDs(threepids [][2]string) ([]string, error)
	ReplaceDirectoryWithNames(summary []byte, fill func(put func(medium, address, mxid string) error) error, names func(put func(mxid, name string) error) error) error
	ScanDirectoryNames(fn func(mxid, name []byte) error) error

	RequestSession(medium, address, clientSecret string, decide func(existing *db.Session) (next db.Session, write bool, err error)) (db.Session, error)
	UpdateSession(sid string, fn func(sess *db.Session) (changed bool, err error)) (db.Session, error)
	GetSession(sid string) (db.Session, error)
	CountSessions() (int, error)
	SweepSessions(expired func(db.Session) bool) (int, error)

	// Idle tokens: their last use, and the sweep of tokens idle past their
	// lifetime and of terms acceptances of users with no token.
	TouchAccountToken(token string, nowMS int64) error
	SweepAccounts(idleBeforeMS int64) (tokens, terms int, err error)

	// The operator's tools (mxid admin) and the audit log (its key: the
	// meta document db.MetaAuditSecret, made with CreateMeta).
	AppendAudit(entries ...db.AuditEntry) error
	AuditEntries(q db.AuditQuery) ([]db.AuditEntry, error)
	SweepAudit(beforeMS int64) (int, error)
	Unbind(medium, address, mxid string, audit db.AuditEntry) (bool, error)
	BindingsOf(mxid string) ([]db.Binding, error)
	SessionsOf(medium, address string) ([]db.Session, error)
	Invites(f db.InviteFilter) ([]db.Invite, error)
	WithdrawInvites(sender string, audit func(n int) []db.AuditEntry) (int, error)
	EraseUser(mxid string, audit func(db.Erased) []db.AuditEntry) (db.Erased, error)
	Erase3PID(medium, address string, audit func(db.Erased) []db.AuditEntry) (db.Erased, error)
	Jobs() ([]db.Job, error)
	GetJob(id uint64) (db.Job, error)
	RescheduleJob(id uint64, dueTS int64, audit db.AuditEntry) (db.Job, error)
	DropJobByID(id uint64, audit db.AuditEntry) (db.Job, error)

	// Moving between backends (mxid migrate-db): see db.Store's.
	Counts() (db.Counts, error)
	Export(fn func(db.Record) error) error
	Import(fill func(put func(db.Record) error) error) (db.Counts, error)
}

// Replicated is implemented by the stores of a backend that several
// processes share: Replica opens another handle on the same database (as
// another replica would). The concurrency cases then race two handles;
// otherwise they race goroutines on one handle.
type Replicated interface {
	Replica(t *testing.T) Store
}

// ChangeLog is implemented by the stores of a backend that keeps a change
// log (PostgreSQL). The change-log cases are skipped for the others.
type ChangeLog interface {
	ChangesSince(seq int64, limit int) ([]db.Change, error)
	LatestChange() (int64, error)
	PruneChanges(nowMS int64) (int, error)
	ForgetChanges(threepids [][2]string) (int, error)
}
