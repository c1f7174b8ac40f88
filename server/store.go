package server

import (
	"time"

	"mxid/db"
)

// Store is what the HTTP API needs from mxid's database. Both backends
// satisfy it: the bbolt file (db.Store) and PostgreSQL (db/pg.Store), with
// the semantics documented on db.Store. A backend that cannot answer
// (PostgreSQL down, a statement past its timeout) returns an error wrapping
// db.ErrUnavailable, which the API answers with 503 and Retry-After.
type Store interface {
	Path() string

	CreateAccountToken(token, userID string, now time.Time) error
	AccountByToken(token string) (db.Account, error)
	DeleteAccountToken(token string) error
	AcceptedTerms(userID string) (map[string]string, error)
	AcceptTerms(userID string, accepted map[string]string) error

	Bind(b db.Binding, since int64, onbind db.OnbindFunc) (stored db.Binding, changed bool, queued *db.Job, err error)
	GetBinding(medium, address string) (db.Binding, error)
	DeleteBinding(medium, address, mxid string) (bool, error)
	CountBindings() (int, error)

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

	RequestSession(medium, address, clientSecret string, decide func(existing *db.Session) (next db.Session, write bool, err error)) (db.Session, error)
	UpdateSession(sid string, fn func(sess *db.Session) (changed bool, err error)) (db.Session, error)
	GetSession(sid string) (db.Session, error)
	SweepSessions(expired func(db.Session) bool) (int, error)

	// The audit log, removals that write it, the retention sweeps and the
	// reads of mxid admin (admin.go, audit.go).
	CreateMeta(key string, value []byte) (stored []byte, created bool, err error) // the audit log's key
	AuditEntries(q db.AuditQuery) ([]db.AuditEntry, error)
	SweepAudit(beforeMS int64) (int, error)
	SweepAccounts(idleBeforeMS int64) (tokens, terms int, err error)
	TouchAccountToken(token string, nowMS int64) error
	Unbind(medium, address, mxid string, audit db.AuditEntry) (bool, error)
	EraseUser(mxid string, audit func(db.Erased) []db.AuditEntry) (db.Erased, error)
	Erase3PID(medium, address string, audit func(db.Erased) []db.AuditEntry) (db.Erased, error)
	WithdrawInvites(sender string, audit func(n int) []db.AuditEntry) (int, error)
	BindingsOf(mxid string) ([]db.Binding, error)
	SessionsOf(medium, address string) ([]db.Session, error)
	Invites(f db.InviteFilter) ([]db.Invite, error)
	DirectoryMXIDs(threepids [][2]string) ([]string, error)
	Jobs() ([]db.Job, error)
	RescheduleJob(id uint64, dueTS int64, audit db.AuditEntry) (db.Job, error)
	DropJobByID(id uint64, audit db.AuditEntry) (db.Job, error)
	Counts() (db.Counts, error)
}
