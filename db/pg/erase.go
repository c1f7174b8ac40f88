package pg

import (
	"context"
	"encoding/hex"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// The operator's reads and removals (mxid admin), as db.Store's: each
// removal writes its audit entries in its transaction, and a removed
// binding is in the change log, so every replica's index forgets it.

// BindingsOf returns the bindings of mxid, by medium and address.
func (s *Store) BindingsOf(mxid string) ([]db.Binding, error) {
	if !storable(mxid) {
		return nil, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	out, err := queryAll(ctx, s.pool, bindingFields, `SELECT medium, address, mxid, ts, not_before, not_after
		FROM bindings WHERE mxid = $1 ORDER BY medium, address`, mxid)
	return out, classify(err)
}

func bindingFields(b *db.Binding) []any {
	return []any{&b.Medium, &b.Address, &b.MXID, &b.TS, &b.NotBefore, &b.NotAfter}
}

// SessionsOf returns the validation sessions of a 3PID, oldest first.
func (s *Store) SessionsOf(medium, address string) ([]db.Session, error) {
	if !storable(medium, address) {
		return nil, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	out, err := queryAll(ctx, s.pool, sessionFields, `SELECT `+sessionColumns+` FROM sessions
		WHERE medium = $1 AND address = $2 ORDER BY created_ts, sid`, medium, address)
	return out, classify(err)
}

// Invites returns the invites f selects, by creation time.
func (s *Store) Invites(f db.InviteFilter) ([]db.Invite, error) {
	if !storable(f.Medium, f.Address, f.Sender) {
		return nil, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	out, err := queryAll(ctx, s.pool, inviteFields, `SELECT `+inviteColumns+` FROM invites
		WHERE ($1 = '' OR medium = $1 AND address = $2) AND ($3 = '' OR sender = $3)
		ORDER BY created_ts, token`, f.Medium, f.Address, f.Sender)
	return out, classify(err)
}

// withdrawInvites deletes the pending invites sender sent.
func withdrawInvites(ctx context.Context, tx pgx.Tx, sender string) (int, error) {
	tag, err := tx.Exec(ctx, "DELETE FROM invites WHERE sender = $1 AND queued_job = 0 AND delivered_ts = 0", sender)
	return int(tag.RowsAffected()), err
}

// WithdrawInvites deletes the invites sender sent that are still pending
// and writes the audit entries audit returns, in one transaction.
func (s *Store) WithdrawInvites(sender string, audit func(n int) []db.AuditEntry) (int, error) {
	n := 0
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		n = 0
		if storable(sender) {
			var err error
			if n, err = withdrawInvites(ctx, tx, sender); err != nil {
				return err
			}
		}
		return appendAudit(ctx, tx, audit(n)...)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Unbind is DeleteBinding that writes audit in the same transaction when it
// removes the binding.
func (s *Store) Unbind(medium, address, mxid string, audit db.AuditEntry) (bool, error) {
	if err := db.CheckAuditEntry(audit); err != nil {
		return false, err
	}
	if !storable(medium, address, mxid) {
		return false, nil
	}
	return s.deleteBinding(medium, address, mxid, audit)
}

// deleteBinding removes the binding of a 3PID if it belongs to mxid, with
// its change and the audit entries, in one transaction.
func (s *Store) deleteBinding(medium, address, mxid string, audit ...db.AuditEntry) (bool, error) {
	deleted := false
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM bindings WHERE medium = $1 AND address = $2 AND mxid = $3", medium, address, mxid)
		if err != nil {
			return err
		}
		if deleted = tag.RowsAffected() > 0; !deleted {
			return errNoChange
		}
		if err := appendAudit(ctx, tx, audit...); err != nil {
			return err
		}
		return appendChanges(ctx, tx, db.ChangeUnbind, db.Binding{Medium: medium, Address: address, MXID: mxid})
	})
	return deleted && err == nil, err
}

// EraseUser removes everything the database holds about mxid, in one
// transaction, as db.Store.EraseUser does; the removed bindings are in the
// change log. It takes the key locks of the user's 3PIDs in key order (the
// one writer that takes several), then the queue's rows before the invites'
// (as completing or dropping a delivery does), so writers do not deadlock.
func (s *Store) EraseUser(mxid string, audit func(db.Erased) []db.AuditEntry) (db.Erased, error) {
	return s.erase(audit, func(ctx context.Context, tx pgx.Tx, out *db.Erased) (gone []db.Binding, err error) {
		if !storable(mxid) {
			return nil, nil
		}
		bs, err := queryAll(ctx, tx, bindingFields, `SELECT medium, address, mxid, ts, not_before, not_after
			FROM bindings WHERE mxid = $1 ORDER BY medium, address`, mxid)
		if err != nil {
			return nil, err
		}
		var tps [][2]string
		for _, b := range bs {
			if removed, err := unbindLocked(ctx, tx, b.Medium, b.Address, mxid, out); err != nil {
				return nil, err
			} else if removed {
				tps = append(tps, [2]string{b.Medium, b.Address})
			}
		}
		if err := deleteJobs(ctx, tx, mxid, tps, out); err != nil {
			return nil, err
		}
		for _, tp := range tps {
			if err := eraseRows(ctx, tx, tp, out); err != nil {
				return nil, err
			}
		}
		if out.InvitesSent, err = withdrawInvites(ctx, tx, mxid); err != nil {
			return nil, err
		}
		// Each removed token is a change: every replica forgets it if it
		// remembers it.
		hashes, err := queryAll(ctx, tx, func(h *[]byte) []any { return []any{h} }, "DELETE FROM accounts WHERE user_id = $1 RETURNING token_hash", mxid)
		if err != nil {
			return nil, err
		}
		out.Tokens = len(hashes)
		for _, h := range hashes {
			gone = append(gone, db.Binding{Address: hex.EncodeToString(h)})
		}
		out.Terms, err = affectedIn(ctx, tx, "DELETE FROM terms WHERE user_id = $1", mxid)
		out.Terms = min(out.Terms, 1) // one row per policy: one acceptance
		return gone, err
	})
}

// Erase3PID removes everything the database holds about a 3PID, in one
// transaction, as db.Store.Erase3PID does.
func (s *Store) Erase3PID(medium, address string, audit func(db.Erased) []db.AuditEntry) (db.Erased, error) {
	return s.erase(audit, func(ctx context.Context, tx pgx.Tx, out *db.Erased) ([]db.Binding, error) {
		if !storable(medium, address) {
			return nil, nil
		}
		if _, err := unbindLocked(ctx, tx, medium, address, "", out); err != nil {
			return nil, err
		}
		tp := [][2]string{{medium, address}}
		if err := deleteJobs(ctx, tx, "", tp, out); err != nil {
			return nil, err
		}
		return nil, eraseRows(ctx, tx, tp[0], out)
	})
}

// erase runs an erasure, then writes its audit entries and the changes of
// the bindings and tokens it removed (fn returns the tokens as
// db.ChangeToken entries), in one transaction.
func (s *Store) erase(audit func(db.Erased) []db.AuditEntry, fn func(ctx context.Context, tx pgx.Tx, out *db.Erased) (tokens []db.Binding, err error)) (db.Erased, error) {
	var out db.Erased
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		out = db.Erased{}
		tokens, err := fn(ctx, tx, &out)
		if err != nil {
			return err
		}
		if err := appendAudit(ctx, tx, audit(out)...); err != nil {
			return err
		}
		if len(tokens) > 0 {
			if err := appendChanges(ctx, tx, db.ChangeToken, tokens...); err != nil {
				return err
			}
		}
		if len(out.Bindings) == 0 {
			return nil
		}
		return appendChanges(ctx, tx, db.ChangeUnbind, out.Bindings...)
	})
	if err != nil {
		return db.Erased{}, err
	}
	return out, nil
}

// affectedIn runs one statement in tx and says how many rows it changed.
func affectedIn(ctx context.Context, tx pgx.Tx, sql string, args ...any) (int, error) {
	tag, err := tx.Exec(ctx, sql, args...)
	return int(tag.RowsAffected()), err
}

// unbindLocked takes the 3PID's key lock (a bind of it waits, or is waited
// for, as between binds) and removes its binding if mxid holds it (anyone,
// when mxid is ""), counting it into out. It reports whether it did.
func unbindLocked(ctx context.Context, tx pgx.Tx, medium, address, mxid string, out *db.Erased) (bool, error) {
	cur, err := lockBinding(ctx, tx, medium, address)
	if err != nil || cur == nil || (mxid != "" && cur.MXID != mxid) {
		return false, err
	}
	if _, err := tx.Exec(ctx, "DELETE FROM bindings WHERE medium = $1 AND address = $2", medium, address); err != nil {
		return false, err
	}
	out.Bindings = append(out.Bindings, *cur)
	return true, nil
}

// eraseRows removes the invites addressed to a 3PID and its sessions,
// counting them into out.
func eraseRows(ctx context.Context, tx pgx.Tx, tp [2]string, out *db.Erased) error {
	n, err := affectedIn(ctx, tx, "DELETE FROM invites WHERE medium = $1 AND address = $2", tp[0], tp[1])
	if err != nil {
		return err
	}
	out.InvitesReceived += n
	n, err = affectedIn(ctx, tx, "DELETE FROM sessions WHERE medium = $1 AND address = $2", tp[0], tp[1])
	out.Sessions += n
	return err
}

// deleteJobs deletes the onbind deliveries for mxid (when set) or about one
// of the 3PIDs, found by their body as the bbolt store finds them
// (db.JobOf).
func deleteJobs(ctx context.Context, tx pgx.Tx, mxid string, tps [][2]string, out *db.Erased) error {
	type row struct {
		id   int64
		body []byte
	}
	jobs, err := queryAll(ctx, tx, func(r *row) []any { return []any{&r.id, &r.body} }, "SELECT id, body FROM jobs ORDER BY id FOR UPDATE")
	if err != nil {
		return err
	}
	var ids []int64
	for _, j := range jobs {
		match := db.JobOf(j.body, mxid, "", "")
		for _, tp := range tps {
			match = match || db.JobOf(j.body, "", tp[0], tp[1])
		}
		if match {
			ids = append(ids, j.id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	n, err := affectedIn(ctx, tx, "DELETE FROM jobs WHERE id = ANY($1)", ids)
	out.Deliveries += n
	return err
}
