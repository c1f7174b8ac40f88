package db

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// OnbindFunc builds the delivery for a bind: it gets the invites of the
// 3PID that are still pending and returns where to send what. It runs
// inside the bind's transaction, so it must only compute.
type OnbindFunc func(pending []Invite) (destination string, body []byte, err error)

// Bind stores b (replacing another owner, with the reverse index) and, in
// the same transaction, queues its onbind delivery carrying every pending
// invite of the 3PID, marking them queued so no other bind carries them
// again. onbind may be nil (nothing is queued).
//
// When the 3PID is already bound to b.MXID by a binding made at or after
// since (Unix ms), that binding is kept and returned with changed false and
// nothing queued: many binds of one validated session (client retries,
// parallel requests) store one binding, answer the same association and
// notify the homeserver once. A rebind to the same MXID with no pending
// invite queues nothing either.
func (s *Store) Bind(b Binding, since int64, onbind OnbindFunc) (stored Binding, changed bool, queued *Job, err error) {
	if err := b.check(); err != nil {
		return Binding{}, false, nil, err
	}
	err = s.update(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketBindings).Get(key(b.Medium, b.Address)); v != nil {
			var old Binding
			if err := json.Unmarshal(v, &old); err != nil {
				return fmt.Errorf("decode binding: %w", err)
			}
			if old.MXID == b.MXID && old.TS >= since {
				stored = old
				return errNoChange
			}
		}
		previous, err := putBinding(tx, b)
		if err != nil {
			return err
		}
		stored, changed = b, true
		if onbind == nil {
			return nil
		}
		pending, err := pendingInvites(tx, b.Medium, b.Address, b.TS)
		if err != nil {
			return err
		}
		if previous != nil && previous.MXID == b.MXID && len(pending) == 0 {
			return nil
		}
		dest, body, err := onbind(pending)
		if err != nil {
			return err
		}
		id, err := tx.Bucket(bucketQueue).NextSequence()
		if err != nil {
			return err
		}
		j := Job{ID: id, Destination: dest, Body: body, DueTS: b.TS, CreatedTS: b.TS}
		for _, inv := range pending {
			inv.QueuedJob = id
			if err := putInvite(tx, inv); err != nil {
				return err
			}
			j.InviteTokens = append(j.InviteTokens, inv.Token)
		}
		queued = &j
		return putJob(tx, j)
	})
	if err == errNoChange {
		err = nil
	}
	return stored, changed, queued, err
}
