package pg

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

const sessionColumns = `sid, medium, address, client_secret, token, failures, attempted, send_attempt,
	undo_attempted, undo_send_attempt, next_link, created_ts, modified_ts, validated_ts`

func sessionFields(x *db.Session) []any {
	return []any{&x.ID, &x.Medium, &x.Address, &x.ClientSecret, &x.Token, &x.Failures, &x.Attempted, &x.SendAttempt,
		&x.UndoAttempted, &x.UndoSendAttempt, &x.NextLink, &x.CreatedTS, &x.ModifiedTS, &x.ValidatedTS}
}

// oneSession is the first of a query's sessions, or nil.
func oneSession(ss []db.Session, err error) (*db.Session, error) {
	if err != nil || len(ss) == 0 {
		return nil, err
	}
	return &ss[0], nil
}

// putSession writes a session, replacing the row with its sid.
func putSession(ctx context.Context, tx pgx.Tx, x *db.Session) error {
	if err := x.Validate(); err != nil {
		return err
	}
	if err := checkStorable("session", x.ID, x.Medium, x.Address, x.ClientSecret, x.Token, x.NextLink); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO sessions (`+sessionColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (sid) DO UPDATE SET token = excluded.token, failures = excluded.failures,
			attempted = excluded.attempted, send_attempt = excluded.send_attempt,
			undo_attempted = excluded.undo_attempted, undo_send_attempt = excluded.undo_send_attempt,
			next_link = excluded.next_link, created_ts = excluded.created_ts,
			modified_ts = excluded.modified_ts, validated_ts = excluded.validated_ts`,
		x.ID, x.Medium, x.Address, x.ClientSecret, x.Token, x.Failures, x.Attempted, x.SendAttempt,
		x.UndoAttempted, x.UndoSendAttempt, x.NextLink, x.CreatedTS, x.ModifiedTS, x.ValidatedTS)
	return err
}

// RequestSession runs decide in one transaction with the session stored for
// (medium, address, clientSecret), or nil when there is none, exactly as
// db.Store.RequestSession does. Concurrent calls for one (3PID,
// client_secret), from any replica, wait for each other on its key lock,
// so the second sees what the first stored and decide runs once per call.
func (s *Store) RequestSession(medium, address, clientSecret string, decide func(existing *db.Session) (next db.Session, write bool, err error)) (db.Session, error) {
	var out db.Session
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		out = db.Session{}
		var existing *db.Session
		if storable(medium, address, clientSecret) {
			if err := lockKey(ctx, tx, "session", medium, address, clientSecret); err != nil {
				return err
			}
			var err error
			existing, err = oneSession(queryAll(ctx, tx, sessionFields, `SELECT `+sessionColumns+` FROM sessions
				WHERE medium = $1 AND address = $2 AND client_secret = $3 FOR UPDATE`, medium, address, clientSecret))
			if err != nil {
				return err
			}
		}
		var arg *db.Session
		if existing != nil {
			cp := *existing
			arg = &cp
		}
		next, write, err := decide(arg)
		if err != nil {
			return &callbackError{err}
		}
		if !write {
			if existing != nil {
				out = *existing
			}
			return errNoChange
		}
		if err := db.CheckRequested(next, medium, address, clientSecret); err != nil {
			return err
		}
		if existing != nil && existing.ID != next.ID {
			if _, err := tx.Exec(ctx, "DELETE FROM sessions WHERE sid = $1", existing.ID); err != nil {
				return err
			}
		}
		if existing == nil || existing.ID != next.ID {
			var taken bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM sessions WHERE sid = $1)", next.ID).Scan(&taken); err != nil {
				return err
			}
			if taken {
				return errors.New("session id collision")
			}
		}
		if err := putSession(ctx, tx, &next); err != nil {
			return err
		}
		out = next
		return nil
	})
	if err != nil {
		return db.Session{}, err
	}
	return out, nil
}

// UpdateSession runs fn in one transaction on the session sid (row locked);
// fn reports whether it changed the session (only then is it written). A
// missing session is db.ErrNotFound; an error from fn aborts and is
// returned as is. The returned Session is the one stored afterwards.
func (s *Store) UpdateSession(sid string, fn func(sess *db.Session) (changed bool, err error)) (db.Session, error) {
	if !storable(sid) {
		return db.Session{}, db.ErrNotFound
	}
	var out db.Session
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		sess, err := oneSession(queryAll(ctx, tx, sessionFields, "SELECT "+sessionColumns+" FROM sessions WHERE sid = $1 FOR UPDATE", sid))
		if err != nil {
			return err
		}
		if sess == nil {
			return db.ErrNotFound
		}
		before := [4]string{sess.Medium, sess.Address, sess.ClientSecret, sess.ID}
		changed, err := fn(sess)
		if err != nil {
			return &callbackError{err}
		}
		out = *sess
		if !changed {
			return errNoChange
		}
		if [4]string{sess.Medium, sess.Address, sess.ClientSecret, sess.ID} != before {
			return errors.New("a session's sid, 3PID and client_secret cannot change")
		}
		return putSession(ctx, tx, sess)
	})
	if err != nil {
		return db.Session{}, err
	}
	return out, nil
}

// GetSession returns the session sid, or db.ErrNotFound.
func (s *Store) GetSession(sid string) (db.Session, error) {
	if !storable(sid) {
		return db.Session{}, db.ErrNotFound
	}
	ctx, cancel := s.call()
	defer cancel()
	sess, err := oneSession(queryAll(ctx, s.pool, sessionFields, "SELECT "+sessionColumns+" FROM sessions WHERE sid = $1", sid))
	if err != nil {
		return db.Session{}, classify(err)
	}
	if sess == nil {
		return db.Session{}, db.ErrNotFound
	}
	return *sess, nil
}

// CountSessions returns the number of stored sessions.
func (s *Store) CountSessions() (int, error) { return s.count("SELECT count(*) FROM sessions") }

// SweepSessions deletes every session for which expired returns true. It
// finds them with one read and deletes them in small transactions that lock
// and check them again, so a session renewed meanwhile (on any replica)
// survives. It returns how many were deleted.
func (s *Store) SweepSessions(expired func(db.Session) bool) (int, error) {
	ctx, cancel := s.call()
	all, err := queryAll(ctx, s.pool, sessionFields, "SELECT "+sessionColumns+" FROM sessions")
	cancel()
	if err != nil {
		return 0, classify(err)
	}
	var victims []string
	for _, x := range all {
		if expired(x) {
			victims = append(victims, x.ID)
		}
	}
	deleted := 0
	const chunk = 1000
	for start := 0; start < len(victims); start += chunk {
		end := min(start+chunk, len(victims))
		n := 0
		err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
			now, err := queryAll(ctx, tx, sessionFields, "SELECT "+sessionColumns+" FROM sessions WHERE sid = ANY($1) ORDER BY sid FOR UPDATE", victims[start:end])
			if err != nil {
				return err
			}
			var gone []string
			for _, x := range now {
				if expired(x) {
					gone = append(gone, x.ID)
				}
			}
			if len(gone) == 0 {
				return errNoChange
			}
			tag, err := tx.Exec(ctx, "DELETE FROM sessions WHERE sid = ANY($1)", gone)
			if err == nil {
				n = int(tag.RowsAffected())
			}
			return err
		})
		if err != nil {
			return deleted, err
		}
		deleted += n
	}
	return deleted, nil
}
