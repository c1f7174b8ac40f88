package pg

import (
	"context"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// The audit log (see package db's audit.go): the audit table. Its hash key
// is the meta document db.MetaAuditSecret, created once by whichever
// replica asks first (CreateMeta).

const auditColumns = "ts, actor, action, medium, address_hash, mxid, detail"

func auditFields(e *db.AuditEntry) []any {
	return []any{&e.TS, &e.Actor, &e.Action, &e.Medium, &e.AddressHash, &e.MXID, &e.Detail}
}

// appendAudit writes entries in tx.
func appendAudit(ctx context.Context, tx pgx.Tx, entries ...db.AuditEntry) error {
	for _, e := range entries {
		if err := db.CheckAuditEntry(e); err != nil {
			return &callbackError{err}
		}
		if err := checkStorable("audit entry", e.Actor, e.Action, e.Medium, e.AddressHash, e.MXID, e.Detail); err != nil {
			return &callbackError{err}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO audit (`+auditColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			e.TS, e.Actor, e.Action, e.Medium, e.AddressHash, e.MXID, e.Detail); err != nil {
			return err
		}
	}
	return nil
}

// AppendAudit writes entries to the audit log in one transaction.
func (s *Store) AppendAudit(entries ...db.AuditEntry) error {
	return s.inTx(func(ctx context.Context, tx pgx.Tx) error { return appendAudit(ctx, tx, entries...) })
}

// AuditEntries returns the entries q selects, oldest first.
func (s *Store) AuditEntries(q db.AuditQuery) ([]db.AuditEntry, error) {
	ctx, cancel := s.call()
	defer cancel()
	limit := any(nil) // no LIMIT
	if q.Limit > 0 {
		limit = q.Limit
	}
	out, err := queryAll(ctx, s.pool, auditFields, `SELECT `+auditColumns+` FROM audit
		WHERE ts >= $1 AND ($2 = '' OR address_hash = $2) ORDER BY ts, id LIMIT $3`, q.SinceMS, q.AddressHash, limit)
	return out, classify(err)
}

// SweepAudit deletes the entries written before beforeMS and says how many.
func (s *Store) SweepAudit(beforeMS int64) (int, error) {
	return s.affected("DELETE FROM audit WHERE ts < $1", beforeMS)
}
