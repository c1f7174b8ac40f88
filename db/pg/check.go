package pg

import (
	"fmt"
	"time"

	"mxid/db"
)

// Check is `mxid check-db` on PostgreSQL: what the database holds (the
// counts of db.Report) and the cross-table rules PostgreSQL's own
// constraints do not state: every invite that waits for a delivery job has
// its job, every binding its reverse-index-worthy fields, and the schema is
// the one this binary knows. Pages and checksums are PostgreSQL's own
// business (amcheck, pg_checksums).
func (s *Store) Check() (db.Report, error) {
	start := time.Now()
	r := db.Report{Path: s.path}
	ctx, cancel := s.call()
	defer cancel()
	err := s.pool.QueryRow(ctx, `SELECT pg_database_size(current_database()),
			(SELECT coalesce(max(version), 0) FROM schema_version),
			(SELECT count(*) FROM bindings), (SELECT count(*) FROM sessions),
			(SELECT count(*) FROM accounts), (SELECT count(*) FROM invites), (SELECT count(*) FROM jobs)`).
		Scan(&r.Size, &r.Schema, &r.Bindings, &r.Sessions, &r.Accounts, &r.Invites, &r.Queued)
	if err != nil {
		return db.Report{}, classify(err)
	}
	problem := func(format string, args ...any) {
		r.ProblemCount++
		if len(r.Problems) < 20 {
			r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		}
	}
	if r.Schema != SchemaVersion {
		problem("schema version %d, this binary knows %d", r.Schema, SchemaVersion)
	}
	for _, q := range []struct{ sql, what string }{
		{`SELECT count(*) FROM invites i WHERE i.queued_job <> 0 AND i.delivered_ts = 0
			AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = i.queued_job)`, "invite(s) wait for a delivery job that does not exist"},
		{`SELECT count(*) FROM bindings WHERE medium = '' OR address = '' OR mxid = ''`, "binding(s) with an empty medium, address or Matrix ID"},
		{`SELECT count(*) FROM sessions WHERE sid = '' OR client_secret = ''`, "session(s) without an id or client secret"},
	} {
		var n int
		if err := s.pool.QueryRow(ctx, q.sql).Scan(&n); err != nil {
			return db.Report{}, classify(err)
		}
		if n > 0 {
			problem("%d %s", n, q.what)
		}
	}
	r.DurationMS = time.Since(start).Milliseconds()
	return r, nil
}
