package db

import "errors"

// Change is one entry of the change log a replicated store keeps (the
// PostgreSQL backend, db/pg): every write that changes what lookups see
// appends one, in the same transaction, numbered in commit order. Replicas
// follow the log to keep their in-memory lookup index in step with writes
// made by the others. The bbolt store, one process, keeps no log: its
// lookup index follows through in-process hooks.
type Change struct {
	// Seq numbers changes in commit order: a change with a higher Seq was
	// committed after every change with a lower one. Numbers may have gaps
	// (a rolled-back write uses one up).
	Seq  int64
	Kind ChangeKind
	// Medium and Address name the 3PID (canonical address); MXID is the
	// Matrix ID it is now bound to (ChangeBind) or was bound to until the
	// change (ChangeUnbind). For ChangeMeta, Address is the meta key.
	Medium  string
	Address string
	MXID    string
	// TS is when the change was written (Unix ms, the database's clock).
	TS int64
}

// ChangeKind says what a Change did.
type ChangeKind string

const (
	// ChangeBind: the 3PID is now bound to MXID (new, replaced or
	// re-bound).
	ChangeBind ChangeKind = "bind"
	// ChangeUnbind: the 3PID, bound to MXID until now, is no longer bound.
	ChangeUnbind ChangeKind = "unbind"
	// ChangeDirectory: the directory snapshot was replaced (no 3PID):
	// readers reload it.
	ChangeDirectory ChangeKind = "directory"
	// ChangeToken: an access token was removed (logout, erasure); Address
	// holds its TokenHash in hex: replicas forget it if they remember it.
	ChangeToken ChangeKind = "token"
	// ChangeMeta: the meta document named by Address was written (the
	// lookup pepper after a rotation, ...): readers that keep it in memory
	// read it again.
	ChangeMeta ChangeKind = "meta"
)

// ErrChangesPruned is returned when the changes after the sequence number a
// reader asked from have been pruned: the reader is too far behind to catch
// up from the log and rebuilds from a full scan instead.
var ErrChangesPruned = errors.New("the change log no longer reaches back that far")
