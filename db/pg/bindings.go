package pg

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

func checkBinding(b db.Binding) error {
	if err := b.Validate(); err != nil {
		return err
	}
	return checkStorable("binding", b.Medium, b.Address, b.MXID)
}

const upsertBindings = `INSERT INTO bindings (medium, address, mxid, ts, not_before, not_after)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[])
	ON CONFLICT (medium, address) DO UPDATE SET mxid = excluded.mxid, ts = excluded.ts,
		not_before = excluded.not_before, not_after = excluded.not_after`

// putBindings upserts bs (each 3PID at most once) without reading them.
func putBindings(ctx context.Context, tx pgx.Tx, bs []db.Binding) error {
	var cols struct {
		medium, address, mxid []string
		ts, nb, na            []int64
	}
	for _, b := range bs {
		cols.medium, cols.address, cols.mxid = append(cols.medium, b.Medium), append(cols.address, b.Address), append(cols.mxid, b.MXID)
		cols.ts, cols.nb, cols.na = append(cols.ts, b.TS), append(cols.nb, b.NotBefore), append(cols.na, b.NotAfter)
	}
	_, err := tx.Exec(ctx, upsertBindings, cols.medium, cols.address, cols.mxid, cols.ts, cols.nb, cols.na)
	return err
}

// lockBinding takes the 3PID's key lock and reads its binding (nil when
// unbound), locking the row.
func lockBinding(ctx context.Context, tx pgx.Tx, medium, address string) (*db.Binding, error) {
	if err := lockKey(ctx, tx, "binding", medium, address); err != nil {
		return nil, err
	}
	b, err := scanBinding(tx.QueryRow(ctx, `SELECT medium, address, mxid, ts, not_before, not_after
		FROM bindings WHERE medium = $1 AND address = $2 FOR UPDATE`, medium, address))
	if errors.Is(err, db.ErrNotFound) {
		return nil, nil
	}
	return &b, err
}

func scanBinding(row pgx.Row) (db.Binding, error) {
	var b db.Binding
	err := row.Scan(&b.Medium, &b.Address, &b.MXID, &b.TS, &b.NotBefore, &b.NotAfter)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Binding{}, db.ErrNotFound
	}
	return b, err
}

// PutBinding stores b, replacing any earlier owner of the same 3PID, in one
// transaction with its change. It returns the binding it replaced, if any.
func (s *Store) PutBinding(b db.Binding) (previous *db.Binding, err error) {
	if err := checkBinding(b); err != nil {
		return nil, err
	}
	err = s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		var err error
		if previous, err = lockBinding(ctx, tx, b.Medium, b.Address); err != nil {
			return err
		}
		if err := putBindings(ctx, tx, []db.Binding{b}); err != nil {
			return err
		}
		return appendChanges(ctx, tx, db.ChangeBind, b)
	})
	if err != nil {
		return nil, err
	}
	return previous, nil
}

// PutBindings stores many bindings (an import), committing every chunk
// bindings in its own transaction (with their changes). It stops at the
// first error and reports how many were stored. Within a chunk, the last
// binding of a 3PID wins, as if they were stored one by one.
func (s *Store) PutBindings(bs []db.Binding, chunk int) (stored int, err error) {
	if chunk <= 0 {
		chunk = 10000
	}
	for _, b := range bs {
		if err := checkBinding(b); err != nil {
			return 0, err
		}
	}
	for start := 0; start < len(bs); start += chunk {
		end := min(start+chunk, len(bs))
		part := lastOfEach(bs[start:end])
		err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
			if err := putBindings(ctx, tx, part); err != nil {
				return err
			}
			return appendChanges(ctx, tx, db.ChangeBind, part...)
		})
		if err != nil {
			return stored, err
		}
		stored = end
	}
	return stored, nil
}

// lastOfEach keeps, in order, the last binding of each 3PID (one statement
// may not upsert a row twice).
func lastOfEach(bs []db.Binding) []db.Binding {
	last := make(map[[2]string]int, len(bs))
	for i, b := range bs {
		last[[2]string{b.Medium, b.Address}] = i
	}
	if len(last) == len(bs) {
		return bs
	}
	out := make([]db.Binding, 0, len(last))
	for i, b := range bs {
		if last[[2]string{b.Medium, b.Address}] == i {
			out = append(out, b)
		}
	}
	return out
}

// GetBinding returns the binding of a 3PID, or db.ErrNotFound.
func (s *Store) GetBinding(medium, address string) (db.Binding, error) {
	if !storable(medium, address) {
		return db.Binding{}, db.ErrNotFound
	}
	ctx, cancel := s.call()
	defer cancel()
	b, err := scanBinding(s.pool.QueryRow(ctx, `SELECT medium, address, mxid, ts, not_before, not_after
		FROM bindings WHERE medium = $1 AND address = $2`, medium, address))
	return b, classify(err)
}

// DeleteBinding removes the binding of a 3PID if it belongs to mxid, with its
// change. It reports whether anything was removed; removing what is not
// there is not an error, so unbind is idempotent.
func (s *Store) DeleteBinding(medium, address, mxid string) (bool, error) {
	if !storable(medium, address, mxid) {
		return false, nil
	}
	return s.deleteBinding(medium, address, mxid)
}

// CountBindings returns the number of stored bindings.
func (s *Store) CountBindings() (int, error) { return s.count("SELECT count(*) FROM bindings") }

func (s *Store) count(sql string) (int, error) {
	ctx, cancel := s.call()
	defer cancel()
	var n int
	err := s.pool.QueryRow(ctx, sql).Scan(&n)
	return n, classify(err)
}

// Bind stores b and queues its onbind delivery in one transaction, exactly
// as db.Store.Bind does (see there for since and onbind). Concurrent binds of
// one 3PID, from any replica, wait for each other on the 3PID's key lock, so
// many binds of one validated session store one binding and queue one job.
func (s *Store) Bind(b db.Binding, since int64, onbind db.OnbindFunc) (stored db.Binding, changed bool, queued *db.Job, err error) {
	if err := checkBinding(b); err != nil {
		return db.Binding{}, false, nil, err
	}
	err = s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		old, err := lockBinding(ctx, tx, b.Medium, b.Address)
		if err != nil {
			return err
		}
		if old != nil && old.MXID == b.MXID && old.TS >= since {
			stored = *old
			return errNoChange
		}
		if err := putBindings(ctx, tx, []db.Binding{b}); err != nil {
			return err
		}
		stored, changed = b, true
		if onbind != nil {
			if queued, err = queueOnbind(ctx, tx, b, old, onbind); err != nil {
				return err
			}
		}
		return appendChanges(ctx, tx, db.ChangeBind, b)
	})
	if err != nil {
		return db.Binding{}, false, nil, err
	}
	return stored, changed, queued, nil
}

// queueOnbind queues the onbind delivery of a new binding b carrying the
// 3PID's pending invites (locked, then marked queued). A rebind to the same
// MXID with no pending invite queues nothing.
func queueOnbind(ctx context.Context, tx pgx.Tx, b db.Binding, old *db.Binding, onbind db.OnbindFunc) (*db.Job, error) {
	pending, err := queryAll(ctx, tx, inviteFields, `SELECT `+inviteColumns+` FROM invites
		WHERE medium = $1 AND address = $2 AND queued_job = 0 AND expires_ts > $3
		ORDER BY token FOR UPDATE`, b.Medium, b.Address, b.TS)
	if err != nil {
		return nil, err
	}
	if old != nil && old.MXID == b.MXID && len(pending) == 0 {
		return nil, nil
	}
	dest, body, err := onbind(pending)
	if err != nil {
		return nil, &callbackError{err}
	}
	stored, err := json.Marshal(json.RawMessage(body)) // compact, as the bbolt store keeps it
	if err != nil {
		return nil, err
	}
	j := db.Job{Destination: dest, Body: body, DueTS: b.TS, CreatedTS: b.TS}
	for _, inv := range pending {
		j.InviteTokens = append(j.InviteTokens, inv.Token)
	}
	if err := checkStorable("onbind destination", dest); err != nil {
		return nil, err
	}
	err = tx.QueryRow(ctx, `INSERT INTO jobs (destination, body, invite_tokens, attempts, due_ts, created_ts, last_error)
		VALUES ($1, $2, $3, 0, $4, $5, '') RETURNING id`, dest, stored, tokensOrEmpty(j.InviteTokens), j.DueTS, j.CreatedTS).Scan(&j.ID)
	if err != nil {
		return nil, err
	}
	if len(pending) > 0 {
		if _, err := tx.Exec(ctx, "UPDATE invites SET queued_job = $1 WHERE token = ANY($2)", j.ID, j.InviteTokens); err != nil {
			return nil, err
		}
	}
	return &j, nil
}

func tokensOrEmpty(t []string) []string {
	if t == nil {
		return []string{}
	}
	return t
}
