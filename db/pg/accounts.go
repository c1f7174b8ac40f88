package pg

import (
	"context"
	"encoding/hex"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// metaSchema is reserved: the schema version lives in schema_version.
const metaSchema = "schema"

// GetMeta reads a small document; ok is false when the key is absent.
func (s *Store) GetMeta(key string) (value []byte, ok bool, err error) {
	if key == metaSchema {
		return nil, false, errors.New("reserved meta key")
	}
	if !storable(key) {
		return nil, false, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	err = s.pool.QueryRow(ctx, "SELECT value FROM meta WHERE key = $1", key).Scan(&value)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, classify(err)
	}
	if value == nil {
		value = []byte{}
	}
	return value, true, nil
}

// PutMeta writes a small document, logged as a db.ChangeMeta so that other
// replicas holding it in memory (the lookup pepper) read it again.
func (s *Store) PutMeta(key string, value []byte) error {
	if key == metaSchema {
		return errors.New("reserved meta key")
	}
	if err := checkStorable("meta key", key); err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	return s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value); err != nil {
			return err
		}
		return appendChanges(ctx, tx, db.ChangeMeta, db.Binding{Address: key})
	})
}

// CreateMeta writes a meta document only if the key holds none yet, as
// db.Store.CreateMeta: replicas starting together agree on the first
// value (INSERT … ON CONFLICT DO NOTHING, then read back, in one
// transaction); a created value is a change in the log.
func (s *Store) CreateMeta(key string, value []byte) (stored []byte, created bool, err error) {
	if key == metaSchema {
		return nil, false, errors.New("reserved meta key")
	}
	if err := checkStorable("meta key", key); err != nil {
		return nil, false, err
	}
	if value == nil {
		value = []byte{}
	}
	err = s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value)
		if err != nil {
			return err
		}
		if created = tag.RowsAffected() == 1; created {
			stored = value
			return appendChanges(ctx, tx, db.ChangeMeta, db.Binding{Address: key})
		}
		return tx.QueryRow(ctx, "SELECT value FROM meta WHERE key = $1", key).Scan(&stored)
	})
	return stored, created, err
}

// exec runs one statement under the call's deadline.
func (s *Store) exec(sql string, args ...any) error {
	ctx, cancel := s.call()
	defer cancel()
	_, err := s.pool.Exec(ctx, sql, args...)
	return classify(err)
}

// CreateAccountToken records a new access token for userID.
func (s *Store) CreateAccountToken(token, userID string, now time.Time) error {
	if token == "" || userID == "" {
		return errors.New("empty token or user")
	}
	if err := checkStorable("user id", userID); err != nil {
		return err
	}
	return s.exec(`INSERT INTO accounts (token_hash, user_id, created_ts) VALUES ($1, $2, $3)
		ON CONFLICT (token_hash) DO UPDATE SET user_id = excluded.user_id, created_ts = excluded.created_ts`,
		db.TokenHash(token), userID, now.UnixMilli())
}

// AccountByToken finds the account of an access token, or db.ErrNotFound.
func (s *Store) AccountByToken(token string) (db.Account, error) {
	ctx, cancel := s.call()
	defer cancel()
	var a db.Account
	err := s.pool.QueryRow(ctx, "SELECT user_id, created_ts, used_ts FROM accounts WHERE token_hash = $1", db.TokenHash(token)).Scan(&a.UserID, &a.CreatedTS, &a.UsedTS)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Account{}, db.ErrNotFound
	}
	return a, classify(err)
}

// DeleteAccountToken ends one token (logout). Deleting an unknown token is
// not an error.
// The removal is a ChangeToken in the change log, so that every replica
// forgets the token if it remembers it.
func (s *Store) DeleteAccountToken(token string) error {
	hash := db.TokenHash(token)
	return s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM accounts WHERE token_hash = $1", hash)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		return appendChanges(ctx, tx, db.ChangeToken, db.Binding{Address: hex.EncodeToString(hash)})
	})
}

// AcceptedTerms returns, for userID, the version of each policy it accepted.
func (s *Store) AcceptedTerms(userID string) (map[string]string, error) {
	out := map[string]string{}
	if !storable(userID) {
		return out, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	rows, err := s.pool.Query(ctx, "SELECT policy, version FROM terms WHERE user_id = $1", userID)
	if err != nil {
		return nil, classify(err)
	}
	var policy, version string
	_, err = pgx.ForEachRow(rows, []any{&policy, &version}, func() error {
		out[policy] = version
		return nil
	})
	if err != nil {
		return nil, classify(err)
	}
	return out, nil
}

// AcceptTerms records that userID accepted the given policy versions, keeping
// what it accepted before for other policies.
func (s *Store) AcceptTerms(userID string, accepted map[string]string) error {
	policies, versions := make([]string, 0, len(accepted)), make([]string, 0, len(accepted))
	for p, v := range accepted {
		policies, versions = append(policies, p), append(versions, v)
	}
	if err := checkStorable("terms acceptance", append(append([]string{userID}, policies...), versions...)...); err != nil {
		return err
	}
	return s.exec(`INSERT INTO terms (user_id, policy, version)
		SELECT $1, p, v FROM unnest($2::text[], $3::text[]) AS u(p, v)
		ON CONFLICT (user_id, policy) DO UPDATE SET version = excluded.version`, userID, policies, versions)
}

// TouchAccountToken records that the token was used at nowMS.
func (s *Store) TouchAccountToken(token string, nowMS int64) error {
	return s.exec("UPDATE accounts SET used_ts = greatest(used_ts, $2) WHERE token_hash = $1", db.TokenHash(token), nowMS)
}

// SweepAccounts deletes the access tokens last active before idleBeforeMS
// (none when it is 0), then the terms acceptances of users left with no
// token, in one transaction, and says how many of each (terms: users).
func (s *Store) SweepAccounts(idleBeforeMS int64) (tokens, terms int, err error) {
	err = s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM accounts WHERE greatest(created_ts, used_ts) < $1", idleBeforeMS)
		if err != nil {
			return err
		}
		tokens = int(tag.RowsAffected())
		return tx.QueryRow(ctx, `WITH gone AS (DELETE FROM terms t
				WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.user_id = t.user_id) RETURNING user_id)
			SELECT count(DISTINCT user_id) FROM gone`).Scan(&terms)
	})
	if err != nil {
		return 0, 0, err
	}
	return tokens, terms, nil
}
