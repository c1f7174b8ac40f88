package db

import (
	"encoding/binary"
	"encoding/json"
	"math"

	bolt "go.etcd.io/bbolt"
)

// Job is one queued delivery to a homeserver (an onbind call). Times are
// Unix milliseconds.
type Job struct {
	ID           uint64          `json:"id"`
	Destination  string          `json:"destination"` // server name
	Body         json.RawMessage `json:"body"`
	InviteTokens []string        `json:"invite_tokens,omitempty"`
	Attempts     int             `json:"attempts"`
	DueTS        int64           `json:"due_ts"`
	CreatedTS    int64           `json:"created_ts"`
	LastError    string          `json:"last_error,omitempty"`
}

func jobKey(dueTS int64, id uint64) []byte {
	k := make([]byte, 17)
	binary.BigEndian.PutUint64(k, uint64(dueTS))
	binary.BigEndian.PutUint64(k[9:], id)
	return k
}

func putJob(tx *bolt.Tx, j Job) error {
	v, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketQueue).Put(jobKey(j.DueTS, j.ID), v)
}

// DueJobs returns up to limit jobs due at or before nowMS, earliest first.
// One process has nothing to claim (the PostgreSQL store claims what it
// returns; the contract is on storetest.Store).
func (s *Store) DueJobs(nowMS int64, limit int) ([]Job, error) {
	var out []Job
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketQueue).Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			if int64(binary.BigEndian.Uint64(k)) > nowMS {
				break
			}
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			out = append(out, j)
		}
		return nil
	})
	return out, err
}

// NextJobDue returns the due time of the earliest job; ok is false when the
// queue is empty.
func (s *Store) NextJobDue() (dueTS int64, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketQueue).Cursor().First()
		if k != nil {
			dueTS, ok = int64(binary.BigEndian.Uint64(k)), true
		}
		return nil
	})
	return dueTS, ok, err
}

// CompleteJob removes a delivered job and marks the invites it carried
// delivered at nowMS: they have reached the homeserver and no bind carries
// them again.
func (s *Store) CompleteJob(j Job, nowMS int64) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketQueue).Delete(jobKey(j.DueTS, j.ID)); err != nil {
			return err
		}
		return forJobInvites(tx, j, func(inv Invite) error {
			inv.DeliveredTS = nowMS
			return putInvite(tx, inv)
		})
	})
}

// RetryJob reschedules a failed job at dueTS with one more attempt counted.
func (s *Store) RetryJob(j Job, dueTS int64, lastErr string) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketQueue).Delete(jobKey(j.DueTS, j.ID)); err != nil {
			return err
		}
		j.Attempts++
		j.DueTS = dueTS
		j.LastError = lastErr
		return putJob(tx, j)
	})
}

// DropJob gives up on a job. Its invites become pending again, so a later
// bind of the same 3PID carries them.
func (s *Store) DropJob(j Job) error {
	return s.update(func(tx *bolt.Tx) error { return dropJob(tx, j) })
}

func dropJob(tx *bolt.Tx, j Job) error {
	if err := tx.Bucket(bucketQueue).Delete(jobKey(j.DueTS, j.ID)); err != nil {
		return err
	}
	return forJobInvites(tx, j, func(inv Invite) error {
		inv.QueuedJob = 0
		return putInvite(tx, inv)
	})
}

// putInvite rewrites an invite's record.
func putInvite(tx *bolt.Tx, inv Invite) error {
	v, err := json.Marshal(inv)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketInvites).Put([]byte(inv.Token), v)
}

// forJobInvites calls fn for each still-stored invite a job carries.
func forJobInvites(tx *bolt.Tx, j Job, fn func(Invite) error) error {
	for _, tok := range j.InviteTokens {
		v := tx.Bucket(bucketInvites).Get([]byte(tok))
		if v == nil {
			continue
		}
		var inv Invite
		if err := json.Unmarshal(v, &inv); err != nil {
			return err
		}
		if err := fn(inv); err != nil {
			return err
		}
	}
	return nil
}

// QueueDepth is the number of queued jobs.
func (s *Store) QueueDepth() (int, error) {
	n := 0
	err := s.view(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketQueue).Stats().KeyN
		return nil
	})
	return n, err
}

// findJob returns the job id and its key; nil when it is not queued. The
// queue is keyed by due time, so this reads it all (it is short).
func findJob(tx *bolt.Tx, id uint64) (*Job, []byte, error) {
	c := tx.Bucket(bucketQueue).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) == 17 && binary.BigEndian.Uint64(k[9:]) == id {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil {
				return nil, nil, err
			}
			return &j, append([]byte(nil), k...), nil
		}
	}
	return nil, nil, nil
}

// Jobs returns every queued job, due first.
func (s *Store) Jobs() ([]Job, error) { return s.DueJobs(math.MaxInt64, math.MaxInt) }

// GetJob returns the queued job id, or ErrNotFound.
func (s *Store) GetJob(id uint64) (Job, error) {
	var out Job
	err := s.view(func(tx *bolt.Tx) error {
		j, _, err := findJob(tx, id)
		if err == nil && j == nil {
			err = ErrNotFound
		}
		if err == nil {
			out = *j
		}
		return err
	})
	return out, err
}

// RescheduleJob makes the queued job id due at dueTS with a fresh count of
// attempts (an operator's retry), writing audit in the same transaction,
// and returns the job as it is now; ErrNotFound when it is not queued. A
// delivery under way finishes first (PostgreSQL: the claim is kept).
func (s *Store) RescheduleJob(id uint64, dueTS int64, audit AuditEntry) (Job, error) {
	var out Job
	err := s.update(func(tx *bolt.Tx) error {
		j, k, err := findJob(tx, id)
		if err == nil && j == nil {
			err = ErrNotFound
		}
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketQueue).Delete(k); err != nil {
			return err
		}
		j.DueTS, j.Attempts = dueTS, 0
		out = *j
		if err := putJob(tx, *j); err != nil {
			return err
		}
		return appendAudit(tx, audit)
	})
	return out, err
}

// DropJobByID is DropJob of the queued job id (its invites become pending
// again) with audit written in the same transaction; it returns the job
// dropped, or ErrNotFound.
func (s *Store) DropJobByID(id uint64, audit AuditEntry) (Job, error) {
	var out Job
	err := s.update(func(tx *bolt.Tx) error {
		j, _, err := findJob(tx, id)
		if err == nil && j == nil {
			err = ErrNotFound
		}
		if err != nil {
			return err
		}
		out = *j
		if err := dropJob(tx, *j); err != nil {
			return err
		}
		return appendAudit(tx, audit)
	})
	return out, err
}
