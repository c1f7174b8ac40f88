package pg

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"mxid/db"
)

// Moving a store between backends (`mxid migrate-db`): Export and Import
// as db.Store's, with db's record types. Here the signing key is one of
// the records (the signing_key table).

// countsSQL counts each kind's records.
const countsSQL = `SELECT (SELECT count(*) FROM signing_key), (SELECT count(*) FROM meta),
	(SELECT count(*) FROM accounts), (SELECT count(DISTINCT user_id) FROM terms),
	(SELECT count(*) FROM bindings), (SELECT count(*) FROM sessions), (SELECT count(*) FROM invites),
	(SELECT count(*) FROM jobs), (SELECT count(*) FROM directory), (SELECT count(*) FROM directory_names),
	(SELECT count(*) FROM audit)`

func scanCounts(row pgx.Row) (db.Counts, error) {
	kinds := db.Kinds()
	n := make([]int, len(kinds))
	dest := make([]any, len(kinds))
	for i := range n {
		dest[i] = &n[i]
	}
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	c := db.Counts{}
	for i, k := range kinds {
		c[k] = n[i]
	}
	return c, nil
}

// Counts says how many records of each kind the database holds (the
// signing key counts as one).
func (s *Store) Counts() (db.Counts, error) {
	ctx, cancel := s.call()
	defer cancel()
	c, err := scanCounts(s.pool.QueryRow(ctx, countsSQL))
	return c, classify(err)
}

// exportFetch is how many rows Export reads per statement.
const exportFetch = 10000

// exports are Export's queries, in the order of db.Kinds(), each in key
// order (text keys are COLLATE "C": bytewise, as bbolt's), with the
// record each row makes.
var exports = []struct {
	sql  string
	scan func(rows pgx.Rows) (db.Record, error)
}{
	{"SELECT seed FROM signing_key", func(rows pgx.Rows) (db.Record, error) {
		var k db.SigningKey
		return k, rows.Scan(&k.Seed)
	}},
	{"SELECT key, value FROM meta ORDER BY key", func(rows pgx.Rows) (db.Record, error) {
		e := db.MetaEntry{}
		err := rows.Scan(&e.Key, &e.Value)
		if e.Value == nil {
			e.Value = []byte{}
		}
		return e, err
	}},
	{"SELECT token_hash, user_id, created_ts, used_ts FROM accounts ORDER BY token_hash", func(rows pgx.Rows) (db.Record, error) {
		var e db.AccountEntry
		return e, rows.Scan(&e.TokenHash, &e.Account.UserID, &e.Account.CreatedTS, &e.Account.UsedTS)
	}},
	{"SELECT user_id, policy, version FROM terms ORDER BY user_id, policy", func(rows pgx.Rows) (db.Record, error) {
		// One row per policy: Export merges a user's rows.
		var user, policy, version string
		err := rows.Scan(&user, &policy, &version)
		return db.TermsEntry{UserID: user, Accepted: map[string]string{policy: version}}, err
	}},
	{"SELECT medium, address, mxid, ts, not_before, not_after FROM bindings ORDER BY medium, address", func(rows pgx.Rows) (db.Record, error) {
		var b db.Binding
		return b, rows.Scan(&b.Medium, &b.Address, &b.MXID, &b.TS, &b.NotBefore, &b.NotAfter)
	}},
	{"SELECT " + sessionColumns + " FROM sessions ORDER BY sid", func(rows pgx.Rows) (db.Record, error) {
		var x db.Session
		return x, rows.Scan(sessionFields(&x)...)
	}},
	{"SELECT " + inviteColumns + " FROM invites ORDER BY token", func(rows pgx.Rows) (db.Record, error) {
		var inv db.Invite
		return inv, rows.Scan(inviteFields(&inv)...)
	}},
	{"SELECT id, destination, body, invite_tokens, attempts, due_ts, created_ts, last_error FROM jobs ORDER BY due_ts, id", func(rows pgx.Rows) (db.Record, error) {
		var j db.Job
		var body []byte
		err := rows.Scan(&j.ID, &j.Destination, &body, &j.InviteTokens, &j.Attempts, &j.DueTS, &j.CreatedTS, &j.LastError)
		j.Body = json.RawMessage(body)
		if len(j.InviteTokens) == 0 {
			j.InviteTokens = nil
		}
		return j, err
	}},
	{"SELECT medium, address, mxid FROM directory ORDER BY medium, address", func(rows pgx.Rows) (db.Record, error) {
		var e db.DirectoryEntry
		return e, rows.Scan(&e.Medium, &e.Address, &e.MXID)
	}},
	{"SELECT mxid, name FROM directory_names ORDER BY mxid", func(rows pgx.Rows) (db.Record, error) {
		var e db.DirectoryName
		return e, rows.Scan(&e.MXID, &e.Name)
	}},
	{"SELECT " + auditColumns + " FROM audit ORDER BY ts, id", func(rows pgx.Rows) (db.Record, error) {
		var e db.AuditEntry
		return e, rows.Scan(auditFields(&e)...)
	}},
}

// Export calls fn with every record the database holds, kind by kind in the
// order of db.Kinds() (the signing key first), each kind in key order, from
// one REPEATABLE READ transaction: a consistent copy even while replicas
// write (what they write after it started is not in it). Each kind is read
// through a cursor, exportFetch rows per statement, and fn runs between
// statements, never while one is open. An error from fn ends the export
// and is returned as is.
func (s *Store) Export(fn func(db.Record) error) error {
	ctx, cancel := s.call()
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	cancel()
	if err != nil {
		return classify(err)
	}
	defer tx.Rollback(context.Background())
	var pending *db.TermsEntry // a user's terms rows, merged
	emit := func(r db.Record) error {
		t, isTerms := r.(db.TermsEntry)
		if isTerms && pending != nil && pending.UserID == t.UserID {
			for p, v := range t.Accepted {
				pending.Accepted[p] = v
			}
			return nil
		}
		if pending != nil {
			done := *pending
			pending = nil
			if err := fn(done); err != nil {
				return err
			}
		}
		if isTerms {
			pending = &t
			return nil
		}
		return fn(r)
	}
	for i, e := range exports {
		// A cursor per query: pgx caches a statement's description by its
		// text, so one FETCH text must always return the same columns.
		if err := s.exportCursor(tx, fmt.Sprintf("export_%d", i), e.sql, e.scan, emit); err != nil {
			return err
		}
	}
	if pending != nil {
		return fn(*pending)
	}
	return nil
}

// exportCursor reads one query through a cursor in tx, handing each batch
// of records to emit once the statement that read it is done.
func (s *Store) exportCursor(tx pgx.Tx, cursor, sql string, scan func(pgx.Rows) (db.Record, error), emit func(db.Record) error) error {
	stmt := func(sql string) error {
		ctx, cancel := s.call()
		defer cancel()
		_, err := tx.Exec(ctx, sql)
		return classify(err)
	}
	if err := stmt("DECLARE " + cursor + " NO SCROLL CURSOR FOR " + sql); err != nil {
		return err
	}
	for {
		batch, err := s.fetch(tx, cursor, scan)
		if err != nil {
			return err
		}
		for _, r := range batch {
			if err := emit(r); err != nil {
				return err
			}
		}
		if len(batch) < exportFetch {
			return stmt("CLOSE " + cursor)
		}
	}
}

func (s *Store) fetch(tx pgx.Tx, cursor string, scan func(pgx.Rows) (db.Record, error)) ([]db.Record, error) {
	ctx, cancel := s.call()
	defer cancel()
	rows, err := tx.Query(ctx, fmt.Sprintf("FETCH %d FROM %s", exportFetch, cursor))
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out []db.Record
	for rows.Next() {
		r, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, classify(rows.Err())
}

// importFlush is how many rows of one table Import sends per COPY.
const importFlush = 10000

// Import stores the records fill puts into this database, which must be
// empty (a *db.NotEmptyError naming what it holds otherwise, before fill
// is called; a signing key counts: any mxid that started on the database
// made one), and returns the counts it holds afterwards. Records are
// checked as db.Store.Import checks them (db.ImportCheck, plus what
// PostgreSQL text cannot hold) and copied with COPY; a second record for
// the same key is refused. Queued deliveries keep their ids; the jobs
// sequence goes on after the highest id of a job or an invite. Claims and
// the change log do not move: replicas build their index from the tables
// when they start.
//
// Everything happens in one transaction, which holds the tables locked
// against writers and commits only when the counts are right: a failed
// import leaves the database empty. An error from fill, put or a check
// ends the import and is returned; put's error is fill's to return.
func (s *Store) Import(fill func(put func(db.Record) error) error) (db.Counts, error) {
	ctx, cancel := s.call()
	tx, err := s.pool.Begin(ctx)
	cancel()
	if err != nil {
		return nil, classify(err)
	}
	defer tx.Rollback(context.Background())
	im := &pgImport{s: s, tx: tx, put: db.Counts{}, rows: map[db.Kind][][]any{}}
	err = im.stmt(func(ctx context.Context) error {
		_, err := tx.Exec(ctx, `LOCK TABLE signing_key, meta, accounts, terms, bindings, sessions, invites, jobs, directory, directory_names, audit IN EXCLUSIVE MODE`)
		return err
	})
	if err != nil {
		return nil, err
	}
	before, err := im.counts()
	if err != nil {
		return nil, err
	}
	if before.Total() > 0 {
		return nil, &db.NotEmptyError{Path: s.path, Holds: before}
	}
	if err := fill(im.add); err != nil {
		return nil, err
	}
	for _, k := range db.Kinds() {
		if err := im.flush(k); err != nil {
			return nil, err
		}
	}
	if im.maxJob > 0 {
		err := im.stmt(func(ctx context.Context) error {
			_, err := tx.Exec(ctx, "SELECT setval(pg_get_serial_sequence('jobs', 'id'), $1)", int64(im.maxJob))
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	after, err := im.counts()
	if err != nil {
		return nil, err
	}
	if err := im.put.VerifyImport(after); err != nil {
		return nil, err
	}
	err = im.stmt(func(ctx context.Context) error { return tx.Commit(ctx) })
	if err != nil {
		return nil, err
	}
	return after, nil
}

// pgImport is the state of one Import.
type pgImport struct {
	s      *Store
	tx     pgx.Tx
	put    db.Counts
	rows   map[db.Kind][][]any // waiting for their COPY
	maxJob uint64
}

// stmt runs one statement of the import under the call deadline.
func (im *pgImport) stmt(fn func(ctx context.Context) error) error {
	ctx, cancel := im.s.call()
	defer cancel()
	return classify(fn(ctx))
}

func (im *pgImport) counts() (db.Counts, error) {
	var c db.Counts
	err := im.stmt(func(ctx context.Context) error {
		var err error
		c, err = scanCounts(im.tx.QueryRow(ctx, countsSQL))
		return err
	})
	return c, err
}

// imports are the tables Import copies into, by kind.
var imports = map[db.Kind]struct {
	table   string
	columns []string
}{
	db.KindSigningKey: {"signing_key", []string{"seed"}},
	db.KindMeta:       {"meta", []string{"key", "value"}},
	db.KindAccounts:   {"accounts", []string{"token_hash", "user_id", "created_ts", "used_ts"}},
	db.KindTerms:      {"terms", []string{"user_id", "policy", "version"}},
	db.KindBindings:   {"bindings", []string{"medium", "address", "mxid", "ts", "not_before", "not_after"}},
	db.KindSessions: {"sessions", []string{"sid", "medium", "address", "client_secret", "token", "failures", "attempted", "send_attempt",
		"undo_attempted", "undo_send_attempt", "next_link", "created_ts", "modified_ts", "validated_ts"}},
	db.KindInvites: {"invites", []string{"token", "medium", "address", "room_id", "sender", "ephemeral_public_key",
		"created_ts", "expires_ts", "queued_job", "delivered_ts"}},
	db.KindQueue:          {"jobs", []string{"id", "destination", "body", "invite_tokens", "attempts", "due_ts", "created_ts", "last_error"}},
	db.KindDirectory:      {"directory", []string{"medium", "address", "mxid"}},
	db.KindDirectoryNames: {"directory_names", []string{"mxid", "name"}},
	db.KindAudit:          {"audit", []string{"ts", "actor", "action", "medium", "address_hash", "mxid", "detail"}},
}

// add checks one record and queues its rows for the COPY of its table.
func (im *pgImport) add(r db.Record) error {
	if err := db.ImportCheck(r); err != nil {
		return err
	}
	var rows [][]any
	var err error
	switch r := r.(type) {
	case db.SigningKey:
		rows = [][]any{{r.Seed}}
	case db.MetaEntry:
		err = checkStorable("meta key", r.Key)
		rows = [][]any{{r.Key, r.Value}}
	case db.AccountEntry:
		err = checkStorable("account", r.Account.UserID)
		rows = [][]any{{r.TokenHash, r.Account.UserID, r.Account.CreatedTS, r.Account.UsedTS}}
	case db.TermsEntry:
		for p, v := range r.Accepted {
			if err = checkStorable("terms acceptance", r.UserID, p, v); err != nil {
				break
			}
			rows = append(rows, []any{r.UserID, p, v})
		}
	case db.Binding:
		err = checkBinding(r)
		rows = [][]any{{r.Medium, r.Address, r.MXID, r.TS, r.NotBefore, r.NotAfter}}
	case db.Session:
		err = checkStorable("session", r.ID, r.Medium, r.Address, r.ClientSecret, r.Token, r.NextLink)
		rows = [][]any{{r.ID, r.Medium, r.Address, r.ClientSecret, r.Token, r.Failures, r.Attempted, r.SendAttempt,
			r.UndoAttempted, r.UndoSendAttempt, r.NextLink, r.CreatedTS, r.ModifiedTS, r.ValidatedTS}}
	case db.Invite:
		err = checkStorable("invite", r.Token, r.Medium, r.Address, r.RoomID, r.Sender, r.Ephemeral)
		rows = [][]any{{r.Token, r.Medium, r.Address, r.RoomID, r.Sender, r.Ephemeral, r.CreatedTS, r.ExpiresTS, int64(r.QueuedJob), r.DeliveredTS}}
		im.maxJob = max(im.maxJob, r.QueuedJob)
	case db.Job:
		var body bytes.Buffer
		if err = checkStorable("queued delivery", append([]string{r.Destination, r.LastError}, r.InviteTokens...)...); err == nil {
			err = json.Compact(&body, r.Body) // as Bind stores it
		}
		rows = [][]any{{int64(r.ID), r.Destination, body.Bytes(), tokensOrEmpty(r.InviteTokens), r.Attempts, r.DueTS, r.CreatedTS, r.LastError}}
		im.maxJob = max(im.maxJob, r.ID)
	case db.DirectoryEntry:
		err = checkStorable("directory record", r.Medium, r.Address, r.MXID)
		rows = [][]any{{r.Medium, r.Address, r.MXID}}
	case db.DirectoryName:
		rows = [][]any{{r.MXID, r.Name}}
	case db.AuditEntry:
		err = checkStorable("audit entry", r.Actor, r.Action, r.Medium, r.AddressHash, r.MXID, r.Detail)
		rows = [][]any{{r.TS, r.Actor, r.Action, r.Medium, r.AddressHash, r.MXID, r.Detail}}
	}
	if err != nil {
		return err
	}
	k := r.Kind()
	im.put[k]++
	im.rows[k] = append(im.rows[k], rows...)
	if len(im.rows[k]) >= importFlush {
		return im.flush(k)
	}
	return nil
}

// flush copies the rows waiting for kind k's table.
func (im *pgImport) flush(k db.Kind) error {
	rows := im.rows[k]
	if len(rows) == 0 {
		return nil
	}
	im.rows[k] = rows[:0]
	t := imports[k]
	err := im.stmt(func(ctx context.Context) error {
		_, err := im.tx.CopyFrom(ctx, pgx.Identifier{t.table}, t.columns, pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		return fmt.Errorf("importing %s: %w", k, err)
	}
	return nil
}
