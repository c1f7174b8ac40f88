package pg

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// DueJobs claims and returns up to limit jobs due at or before nowMS and not
// claimed by anyone (or whose claim has lapsed), earliest first. The claim
// lasts Options.ClaimLease from nowMS; CompleteJob, RetryJob and DropJob
// end it. Replicas asking at once get different jobs (SKIP LOCKED).
func (s *Store) DueJobs(nowMS int64, limit int) ([]db.Job, error) {
	if limit <= 0 {
		return nil, nil
	}
	ctx, cancel := s.call()
	defer cancel()
	out, err := scanJobs(ctx, s.pool, `UPDATE jobs SET claimed_until = $2
		WHERE id IN (SELECT id FROM jobs WHERE due_ts <= $1 AND claimed_until <= $1
			ORDER BY due_ts, id LIMIT $3 FOR UPDATE SKIP LOCKED)
		RETURNING `+jobColumns,
		nowMS, nowMS+s.opts.ClaimLease.Milliseconds(), limit)
	if err != nil {
		return nil, classify(err)
	}
	slices.SortFunc(out, func(a, b db.Job) int { return cmp.Or(cmp.Compare(a.DueTS, b.DueTS), cmp.Compare(a.ID, b.ID)) })
	return out, nil
}

// NextJobDue returns when the earliest job can next be claimed: its due
// time, or the end of its claim if later. ok is false when the queue is
// empty.
func (s *Store) NextJobDue() (dueTS int64, ok bool, err error) {
	ctx, cancel := s.call()
	defer cancel()
	var due *int64
	if err := s.pool.QueryRow(ctx, "SELECT min(greatest(due_ts, claimed_until)) FROM jobs").Scan(&due); err != nil {
		return 0, false, classify(err)
	}
	if due == nil {
		return 0, false, nil
	}
	return *due, true, nil
}

// CompleteJob removes a delivered job and marks the invites it carried
// delivered at nowMS.
func (s *Store) CompleteJob(j db.Job, nowMS int64) error {
	return s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM jobs WHERE id = $1", int64(j.ID)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "UPDATE invites SET delivered_ts = $1 WHERE token = ANY($2)", nowMS, tokensOrEmpty(j.InviteTokens))
		return err
	})
}

// RetryJob reschedules a failed job at dueTS with one more attempt counted,
// ending its claim. A job that is no longer queued (another replica
// completed it after this one's claim lapsed) stays gone.
func (s *Store) RetryJob(j db.Job, dueTS int64, lastErr string) error {
	return s.exec(`UPDATE jobs SET attempts = $2, due_ts = $3, last_error = $4, claimed_until = 0 WHERE id = $1`,
		int64(j.ID), j.Attempts+1, dueTS, strings.ToValidUTF8(strings.ReplaceAll(lastErr, "\x00", ""), "\uFFFD"))
}

// DropJob gives up on a job. Its invites become pending again, so a later
// bind of the same 3PID carries them.
func (s *Store) DropJob(j db.Job) error {
	return s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM jobs WHERE id = $1", int64(j.ID)); err != nil {
			return err
		}
		return releaseInvites(ctx, tx, j)
	})
}

// releaseInvites makes the invites a dropped job carried pending again.
func releaseInvites(ctx context.Context, tx pgx.Tx, j db.Job) error {
	_, err := tx.Exec(ctx, "UPDATE invites SET queued_job = 0 WHERE token = ANY($1) AND queued_job = $2", tokensOrEmpty(j.InviteTokens), int64(j.ID))
	return err
}

// QueueDepth is the number of queued jobs, claimed or not.
func (s *Store) QueueDepth() (int, error) { return s.count("SELECT count(*) FROM jobs") }

const jobColumns = "id, destination, body, invite_tokens, attempts, due_ts, created_ts, last_error"

// scanJobs reads the rows of a query of jobColumns.
func scanJobs(ctx context.Context, q querier, sql string, args ...any) ([]db.Job, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	var out []db.Job
	var j db.Job
	var body []byte
	_, err = pgx.ForEachRow(rows, []any{&j.ID, &j.Destination, &body, &j.InviteTokens, &j.Attempts, &j.DueTS, &j.CreatedTS, &j.LastError}, func() error {
		j.Body = json.RawMessage(slices.Clone(body))
		if len(j.InviteTokens) == 0 {
			j.InviteTokens = nil
		}
		out = append(out, j)
		j.InviteTokens = nil
		return nil
	})
	return out, err
}

// Jobs returns every queued job, claimed or not, due first.
func (s *Store) Jobs() ([]db.Job, error) {
	ctx, cancel := s.call()
	defer cancel()
	out, err := scanJobs(ctx, s.pool, "SELECT "+jobColumns+" FROM jobs ORDER BY due_ts, id")
	return out, classify(err)
}

// GetJob returns the queued job id, or db.ErrNotFound.
func (s *Store) GetJob(id uint64) (db.Job, error) {
	ctx, cancel := s.call()
	defer cancel()
	out, err := scanJobs(ctx, s.pool, "SELECT "+jobColumns+" FROM jobs WHERE id = $1", int64(id))
	if err != nil {
		return db.Job{}, classify(err)
	}
	if len(out) == 0 {
		return db.Job{}, db.ErrNotFound
	}
	return out[0], nil
}

// RescheduleJob makes the queued job id due at dueTS with a fresh count of
// attempts, writing audit in the same transaction; db.ErrNotFound when it
// is not queued. A claim under way is kept: the replica delivering it
// finishes first.
func (s *Store) RescheduleJob(id uint64, dueTS int64, audit db.AuditEntry) (db.Job, error) {
	var out db.Job
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		js, err := scanJobs(ctx, tx, "UPDATE jobs SET due_ts = $2, attempts = 0 WHERE id = $1 RETURNING "+jobColumns, int64(id), dueTS)
		if err != nil {
			return err
		}
		if len(js) == 0 {
			return &callbackError{db.ErrNotFound}
		}
		out = js[0]
		return appendAudit(ctx, tx, audit)
	})
	return out, err
}

// DropJobByID drops the queued job id as DropJob does, writing audit in the
// same transaction, and returns it; db.ErrNotFound when it is not queued.
func (s *Store) DropJobByID(id uint64, audit db.AuditEntry) (db.Job, error) {
	var out db.Job
	err := s.inTx(func(ctx context.Context, tx pgx.Tx) error {
		js, err := scanJobs(ctx, tx, "DELETE FROM jobs WHERE id = $1 RETURNING "+jobColumns, int64(id))
		if err != nil {
			return err
		}
		if len(js) == 0 {
			return &callbackError{db.ErrNotFound}
		}
		out = js[0]
		if err := releaseInvites(ctx, tx, out); err != nil {
			return err
		}
		return appendAudit(ctx, tx, audit)
	})
	return out, err
}
