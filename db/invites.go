package db

import (
	"encoding/json"
	"errors"

	bolt "go.etcd.io/bbolt"
)

// Invite is a third-party invite stored for a 3PID that is not bound yet.
// Times are Unix milliseconds.
type Invite struct {
	Token   string `json:"token"`
	Medium  string `json:"medium"`
	Address string `json:"address"` // canonical
	RoomID  string `json:"room_id"`
	Sender  string `json:"sender"`
	// Ephemeral is the invite's ephemeral public key (unpadded URL-safe
	// base64); its private half went to the invitee in the email only.
	Ephemeral string `json:"ephemeral_public_key"`
	CreatedTS int64  `json:"created_ts"`
	ExpiresTS int64  `json:"expires_ts"`
	// QueuedJob is the onbind job that carries this invite, once a bind
	// has picked it up; 0 while pending.
	QueuedJob uint64 `json:"queued_job,omitempty"`
	// DeliveredTS is when the homeserver accepted the onbind that carried
	// it; the invite (its token and ephemeral key) stays until it expires,
	// so the mailed link keeps working.
	DeliveredTS int64 `json:"delivered_ts,omitempty"`
}

// ErrExists is returned when a key that must be new is already taken.
var ErrExists = errors.New("already exists")

// PutInvite stores a new invite with its ephemeral key, in one transaction.
func (s *Store) PutInvite(inv Invite) error {
	if inv.Token == "" || inv.Medium == "" || inv.Address == "" || inv.Ephemeral == "" {
		return errors.New("incomplete invite")
	}
	v, err := json.Marshal(inv)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInvites)
		if b.Get([]byte(inv.Token)) != nil {
			return ErrExists
		}
		if err := b.Put([]byte(inv.Token), v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketInvitesBy3PID).Put(key(inv.Medium, inv.Address, inv.Token), nil); err != nil {
			return err
		}
		return tx.Bucket(bucketEphemeralKeys).Put([]byte(inv.Ephemeral), []byte(inv.Token))
	})
}

// GetInvite returns the invite with token, or ErrNotFound.
func (s *Store) GetInvite(token string) (Invite, error) {
	var inv Invite
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketInvites).Get([]byte(token))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &inv)
	})
	return inv, err
}

// deleteInvite removes an invite, its 3PID index entry and its ephemeral
// key.
func deleteInvite(tx *bolt.Tx, inv Invite) error {
	if err := tx.Bucket(bucketInvites).Delete([]byte(inv.Token)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketInvitesBy3PID).Delete(key(inv.Medium, inv.Address, inv.Token)); err != nil {
		return err
	}
	return tx.Bucket(bucketEphemeralKeys).Delete([]byte(inv.Ephemeral))
}

// pendingInvites lists the invites of a 3PID that no onbind job carries yet
// and that have not expired at nowMS.
func pendingInvites(tx *bolt.Tx, medium, address string, nowMS int64) ([]Invite, error) {
	prefix := append(key(medium, address), 0)
	c := tx.Bucket(bucketInvitesBy3PID).Cursor()
	var out []Invite
	for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
		token := k[len(prefix):]
		v := tx.Bucket(bucketInvites).Get(token)
		if v == nil {
			continue
		}
		var inv Invite
		if err := json.Unmarshal(v, &inv); err != nil {
			return nil, err
		}
		if inv.QueuedJob == 0 && inv.ExpiresTS > nowMS {
			out = append(out, inv)
		}
	}
	return out, nil
}

// SweepInvites deletes invites that expired before nowMS, pending or
// delivered (one still waiting in an onbind job is kept with it), and
// returns how many it deleted.
func (s *Store) SweepInvites(nowMS int64) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		var expired []Invite
		err := tx.Bucket(bucketInvites).ForEach(func(_, v []byte) error {
			var inv Invite
			if err := json.Unmarshal(v, &inv); err != nil {
				return err
			}
			if (inv.QueuedJob == 0 || inv.DeliveredTS != 0) && inv.ExpiresTS <= nowMS {
				expired = append(expired, inv)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, inv := range expired {
			if err := deleteInvite(tx, inv); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
	})
	return n, err
}

// DeleteInvite removes an invite (its email could not be sent).
func (s *Store) DeleteInvite(token string) error {
	return s.update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketInvites).Get([]byte(token))
		if v == nil {
			return nil
		}
		var inv Invite
		if err := json.Unmarshal(v, &inv); err != nil {
			return err
		}
		return deleteInvite(tx, inv)
	})
}
