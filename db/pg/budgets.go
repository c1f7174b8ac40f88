package pg

import (
	"context"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"mxid/db"
)

// Budgets: the token buckets of the limits that protect other people, in the
// budgets table, so every replica counts against the same buckets.
//
// A charge is one short transaction: an upsert locks every bucket's row (a
// new one inserted full) in key order and returns what it holds, the
// arithmetic (db.ChargeBuckets) runs here, and either all rows are updated
// or the transaction rolls back with nothing spent. Rows are locked in key
// order, so charges do not deadlock each other.
//
// The server charges the send budgets inside RequestSession's callback,
// while that transaction holds a pooled connection and a session lock.
// Charges therefore run on a pool of their own (budgetConns connections):
// were they to share the main pool, MaxConns concurrent requestTokens could
// each hold a connection while waiting for a second, until their deadlines.
// A charge holds nothing but bucket rows, which only other (short) charges
// wait for, so it always finishes.

// budgetConns is the size of the charges' own pool: a charge takes about a
// millisecond, so two connections serve thousands a second (each of which
// is a mail or an SMS).
const budgetConns = 2

// ChargeBudgets takes one token from each bucket, all or none (see
// server.Budgets): it returns -1 when all paid, else the index of the first
// bucket short of a token and the milliseconds until it holds one. nowMS
// is the caller's clock; replicas' clocks must agree to well within the
// limits' periods (NTP).
func (s *Store) ChargeBudgets(bs []db.Bucket, nowMS int64) (refused int, retryAfterMS int64, err error) {
	if err := db.CheckBuckets(bs); err != nil {
		return 0, 0, err
	}
	order := make([]int, len(bs)) // lock order: by key
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(bs[a].Key, bs[b].Key) })
	keys, full := make([][]byte, len(bs)), make([]float64, len(bs))
	for j, i := range order {
		keys[j], full[j] = []byte(bs[i].Key), float64(bs[i].Burst)
	}
	ctx, cancel := s.call()
	defer cancel()
	for attempt := 0; ; attempt++ {
		var committing bool
		refused, retryAfterMS, committing, err = s.chargeOnce(ctx, bs, order, keys, full, nowMS)
		// A connection that died while idle (PostgreSQL restarted) fails
		// the first statement: once, try on another. Nothing was spent
		// unless the commit was sent.
		if err != nil && !committing && attempt == 0 && unavailable(err) && ctx.Err() == nil {
			continue
		}
		return refused, retryAfterMS, classify(err)
	}
}

// chargeOnce is one charge's transaction; committing says the commit was
// sent (after which an error leaves unknown whether it was spent).
func (s *Store) chargeOnce(ctx context.Context, bs []db.Bucket, order []int, keys [][]byte, full []float64, nowMS int64) (refused int, retryAfterMS int64, committing bool, err error) {
	tx, err := s.budgetPool.Begin(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	defer tx.Rollback(ctx) // after Commit, a no-op
	rows, err := tx.Query(ctx, `INSERT INTO budgets AS b (key, tokens, updated_ms, full_ms)
		SELECT k, t, $3, $3 FROM unnest($1::bytea[], $2::float8[]) AS v(k, t) ORDER BY k
		ON CONFLICT (key) DO UPDATE SET tokens = b.tokens
		RETURNING key, tokens, updated_ms`, keys, full, nowMS)
	if err != nil {
		return 0, 0, false, err
	}
	held := map[string]db.BucketState{}
	var key []byte
	var st db.BucketState
	if _, err := pgx.ForEachRow(rows, []any{&key, &st.Tokens, &st.UpdatedMS}, func() error {
		held[string(key)] = st
		return nil
	}); err != nil {
		return 0, 0, false, err
	}
	states := make([]*db.BucketState, len(bs))
	for i, b := range bs {
		if st, ok := held[b.Key]; ok {
			states[i] = &st
		}
	}
	next, refused, retryAfterMS := db.ChargeBuckets(bs, states, nowMS)
	if refused >= 0 {
		return refused, retryAfterMS, false, nil // rolled back: nothing spent
	}
	tokens, updated, fullMS := make([]float64, len(bs)), make([]int64, len(bs)), make([]int64, len(bs))
	for j, i := range order {
		tokens[j], updated[j], fullMS[j] = next[i].Tokens, next[i].UpdatedMS, bs[i].FullMS(next[i])
	}
	if _, err := tx.Exec(ctx, `UPDATE budgets SET tokens = v.t, updated_ms = v.u, full_ms = v.f
		FROM unnest($1::bytea[], $2::float8[], $3::int8[], $4::int8[]) AS v(k, t, u, f)
		WHERE budgets.key = v.k`, keys, tokens, updated, fullMS); err != nil {
		return 0, 0, false, err
	}
	return -1, 0, true, tx.Commit(ctx)
}

// SweepBudgets deletes the buckets that are full at nowMS (a charge that
// holds one's row meanwhile keeps it: the delete re-checks it after the
// charge commits) and says how many.
func (s *Store) SweepBudgets(nowMS int64) (int, error) {
	return s.affected("DELETE FROM budgets WHERE full_ms <= $1", nowMS)
}

// ForgetBudgets deletes the buckets of keys (an erased address's, for
// instance: their keys name it) and says how many there were.
func (s *Store) ForgetBudgets(keys []string) (int, error) {
	bs := make([][]byte, len(keys))
	for i, k := range keys {
		bs[i] = []byte(k)
	}
	return s.affected("DELETE FROM budgets WHERE key = ANY($1)", bs)
}

// openBudgetPool opens the charges' pool (connections are made on demand).
func openBudgetPool(ctx context.Context, cfg *pgxpool.Config) (*pgxpool.Pool, error) {
	c := cfg.Copy()
	c.MaxConns = budgetConns
	c.MinConns = 0
	// A charge is not worth a WAL flush: should PostgreSQL crash, the last
	// moment's charges may be forgotten (a few more mails allowed), never
	// corrupted. The commit no longer waits for the disk.
	c.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	return pgxpool.NewWithConfig(ctx, c)
}
