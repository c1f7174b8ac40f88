package pg

import (
	"context"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// appendChanges logs one change per binding and notifies mxid_changes with
// the last seq; PostgreSQL delivers the notification at commit. It is the
// last thing a writing transaction does: the lock it takes, held to commit,
// makes seq order commit order (see the package doc).
func appendChanges(ctx context.Context, tx pgx.Tx, kind db.ChangeKind, bs ...db.Binding) error {
	media, addresses, mxids := make([]string, len(bs)), make([]string, len(bs)), make([]string, len(bs))
	for i, b := range bs {
		media[i], addresses[i], mxids[i] = b.Medium, b.Address, b.MXID
	}
	batch := &pgx.Batch{}
	batch.Queue("SELECT pg_advisory_xact_lock($1, $2)", lockClass, lockChanges)
	batch.Queue(`WITH logged AS (
			INSERT INTO changes (kind, medium, address, mxid, ts)
			SELECT $1, m, a, x, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
			FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u(m, a, x, i)
			ORDER BY i
			RETURNING seq)
		SELECT pg_notify('mxid_changes', max(seq)::text) FROM logged`, string(kind), media, addresses, mxids)
	return tx.SendBatch(ctx, batch).Close()
}

// ChangesSince returns up to limit changes with a sequence number above
// seq, in order. When changes after seq have been pruned it returns
// db.ErrChangesPruned: the reader rebuilds from a full scan.
func (s *Store) ChangesSince(seq int64, limit int) ([]db.Change, error) {
	ctx, cancel := s.call()
	defer cancel()
	out, err := queryAll(ctx, s.pool, func(c *db.Change) []any { return []any{&c.Seq, &c.Kind, &c.Medium, &c.Address, &c.MXID, &c.TS} },
		`SELECT seq, kind, medium, address, mxid, ts FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2`, seq, max(limit, 0))
	if err != nil {
		return nil, classify(err)
	}
	// Read after the changes: a prune in between errs on the safe side.
	var through int64
	if err := s.pool.QueryRow(ctx, "SELECT through FROM changes_pruned").Scan(&through); err != nil {
		return nil, classify(err)
	}
	if seq < through {
		return nil, db.ErrChangesPruned
	}
	return out, nil
}

// LatestChange returns the sequence number of the newest change (0 when
// there has been none). A reader that builds its state from a full scan
// reads it before the scan, then follows from it: changes committed during
// the scan are applied again, which is harmless.
func (s *Store) LatestChange() (int64, error) {
	ctx, cancel := s.call()
	defer cancel()
	var seq int64
	err := s.pool.QueryRow(ctx, `SELECT greatest((SELECT max(seq) FROM changes), through) FROM changes_pruned`).Scan(&seq)
	return seq, classify(err)
}

// PruneChanges deletes the changes written more than Options.ChangeRetention
// before nowMS (Unix ms), oldest first, and returns how many it deleted.
// Readers still behind them get db.ErrChangesPruned.
func (s *Store) PruneChanges(nowMS int64) (int, error) {
	cutoff := nowMS - s.opts.ChangeRetention.Milliseconds()
	n := 0
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		var through *int64
		if err := tx.QueryRow(ctx, "SELECT max(seq) FROM changes WHERE ts < $1", cutoff).Scan(&through); err != nil {
			return err
		}
		if through == nil {
			return errNoChange
		}
		tag, err := tx.Exec(ctx, "DELETE FROM changes WHERE seq <= $1", *through)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		_, err = tx.Exec(ctx, "UPDATE changes_pruned SET through = greatest(through, $1)", *through)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// ForgetChanges removes from the change log every change of the given 3PIDs
// ({medium, address} pairs) up to and including its latest unbind, and
// moves the pruned mark past them, so that the addresses are nowhere in the
// database once they are unbound (an erasure). A replica that has not
// read that far yet finds the log pruned and rebuilds its index from the
// tables, which no longer hold the bindings: call it once the replicas had
// time to follow the unbinds (about a second). Changes after the latest
// unbind (a new bind of the 3PID) stay. It says how many changes it
// removed.
func (s *Store) ForgetChanges(threepids [][2]string) (int, error) {
	var media, addresses []string
	for _, tp := range threepids {
		if storable(tp[0], tp[1]) {
			media, addresses = append(media, tp[0]), append(addresses, tp[1])
		}
	}
	if len(media) == 0 {
		return 0, nil
	}
	n := 0
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		// Under the appenders' lock: no change is being numbered meanwhile.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2)", lockClass, lockChanges); err != nil {
			return err
		}
		var through *int64
		err := tx.QueryRow(ctx, `WITH last AS (
				SELECT medium, address, max(seq) AS seq FROM changes
				WHERE kind = $3 AND (medium, address) IN (SELECT * FROM unnest($1::text[], $2::text[]))
				GROUP BY medium, address),
			gone AS (DELETE FROM changes c USING last l
				WHERE c.medium = l.medium AND c.address = l.address AND c.seq <= l.seq RETURNING c.seq)
			SELECT count(*), max(seq) FROM gone`, media, addresses, string(db.ChangeUnbind)).Scan(&n, &through)
		if err != nil {
			return err
		}
		if through == nil {
			return errNoChange
		}
		_, err = tx.Exec(ctx, "UPDATE changes_pruned SET through = greatest(through, $1)", *through)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
