package pg

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// SigningKey returns the seed of the long-term signing key kept in the
// database. The first replica to ask creates it with generate, in one
// transaction (INSERT … ON CONFLICT DO NOTHING, then read back), so
// replicas starting together agree on one key; created reports that this
// call made it.
func (s *Store) SigningKey(generate func() ([]byte, error)) (seed []byte, created bool, err error) {
	err = s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SELECT seed FROM signing_key").Scan(&seed); err == nil {
			return nil
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		fresh, err := generate()
		if err != nil {
			return &callbackError{err}
		}
		tag, err := tx.Exec(ctx, "INSERT INTO signing_key (seed) VALUES ($1) ON CONFLICT DO NOTHING", fresh)
		if err != nil {
			return err
		}
		created = tag.RowsAffected() == 1
		return tx.QueryRow(ctx, "SELECT seed FROM signing_key").Scan(&seed)
	})
	return seed, created, err
}
