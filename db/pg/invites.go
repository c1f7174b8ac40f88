package pg

import (
	"errors"

	"mxid/db"
)

const inviteColumns = `token, medium, address, room_id, sender, ephemeral_public_key,
	created_ts, expires_ts, queued_job, delivered_ts`

func inviteFields(inv *db.Invite) []any {
	return []any{&inv.Token, &inv.Medium, &inv.Address, &inv.RoomID, &inv.Sender, &inv.Ephemeral,
		&inv.CreatedTS, &inv.ExpiresTS, &inv.QueuedJob, &inv.DeliveredTS}
}

// PutInvite stores a new invite with its ephemeral key; db.ErrExists when
// the token is taken.
func (s *Store) PutInvite(inv db.Invite) error {
	if inv.Token == "" || inv.Medium == "" || inv.Address == "" || inv.Ephemeral == "" {
		return errors.New("incomplete invite")
	}
	if err := checkStorable("invite", inv.Token, inv.Medium, inv.Address, inv.RoomID, inv.Sender, inv.Ephemeral); err != nil {
		return err
	}
	ctx, cancel := s.call()
	defer cancel()
	tag, err := s.pool.Exec(ctx, `INSERT INTO invites (`+inviteColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (token) DO NOTHING`,
		inv.Token, inv.Medium, inv.Address, inv.RoomID, inv.Sender, inv.Ephemeral,
		inv.CreatedTS, inv.ExpiresTS, inv.QueuedJob, inv.DeliveredTS)
	if err != nil {
		return classify(err)
	}
	if tag.RowsAffected() == 0 {
		return db.ErrExists
	}
	return nil
}

// GetInvite returns the invite with token, or db.ErrNotFound.
func (s *Store) GetInvite(token string) (db.Invite, error) {
	if !storable(token) {
		return db.Invite{}, db.ErrNotFound
	}
	ctx, cancel := s.call()
	defer cancel()
	invs, err := queryAll(ctx, s.pool, inviteFields, "SELECT "+inviteColumns+" FROM invites WHERE token = $1", token)
	if err != nil {
		return db.Invite{}, classify(err)
	}
	if len(invs) == 0 {
		return db.Invite{}, db.ErrNotFound
	}
	return invs[0], nil
}

// EphemeralKeyExists reports whether pub (unpadded URL-safe base64) is the
// ephemeral public key of a stored invite.
func (s *Store) EphemeralKeyExists(pub string) (bool, error) {
	if !storable(pub) {
		return false, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	var found bool
	err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM invites WHERE ephemeral_public_key = $1)", pub).Scan(&found)
	return found, classify(err)
}

// SweepInvites deletes invites that expired before nowMS, pending or
// delivered (one still waiting in an onbind job is kept with it), and
// returns how many it deleted.
func (s *Store) SweepInvites(nowMS int64) (int, error) {
	return s.affected("DELETE FROM invites WHERE (queued_job = 0 OR delivered_ts <> 0) AND expires_ts <= $1", nowMS)
}

// DeleteInvite removes an invite (its email could not be sent).
func (s *Store) DeleteInvite(token string) error {
	if !storable(token) {
		return nil
	}
	return s.exec("DELETE FROM invites WHERE token = $1", token)
}
