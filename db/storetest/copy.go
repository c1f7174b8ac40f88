package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"mxid/db"
)

// RunCopy checks a copy from one backend to another (or the same): a
// store from openFrom, holding every kind of record, is exported into an
// empty store from openTo, which then holds the same records and behaves
// as the original would (tokens, indexes, the queue's numbering); a
// non-empty store and bad records are refused.
func RunCopy(t *testing.T, openFrom, openTo func(t *testing.T) Store) {
	exportImport(t, openFrom(t), openTo)
}

// Records reads everything s holds, in export order.
func Records(t testing.TB, s interface {
	Export(func(db.Record) error) error
}) []db.Record {
	t.Helper()
	var out []db.Record
	if err := s.Export(func(r db.Record) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// SameRecords reports the first difference between two exports.
func SameRecords(t testing.TB, a, b []db.Record) {
	t.Helper()
	for i := range min(len(a), len(b)) {
		if !reflect.DeepEqual(a[i], b[i]) {
			t.Fatalf("record %d differs:\n%#v\n%#v", i, a[i], b[i])
		}
	}
	if len(a) != len(b) {
		t.Fatalf("%d records, then %d", len(a), len(b))
	}
}

// copyFacts are what fillEveryKind made, to check the copy against.
type copyFacts struct {
	queued, delivered, bare *db.Job // retried once; completed; carrying no invite
}

// FillEveryKind writes every kind of record a store keeps (but the signing
// key, which not every backend keeps) through the contract: meta
// documents, accounts, terms, 12,349 bindings, sessions, invites pending,
// queued and delivered, queued deliveries (one retried) and a directory
// snapshot. Times are around now (Unix ms): invites expire 11 days
// later, jobs are due from now on.
func FillEveryKind(t *testing.T, s Store, now int64) { fillEveryKind(t, s, now) }

func fillEveryKind(t *testing.T, s Store, now int64) copyFacts {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.PutMeta("some_feature", []byte(`{"state":"p1"}`)))
	must(s.PutMeta("empty", []byte{}))
	must(s.CreateAccountToken("tok-a", "@a:hs.test", time.UnixMilli(now)))
	must(s.CreateAccountToken("tok-b", "@b:hs.test", time.UnixMilli(now+1)))
	must(s.TouchAccountToken("tok-b", now+5))
	must(s.AcceptTerms("@a:hs.test", map[string]string{"privacy": "1", "tos": "2"}))
	must(s.AcceptTerms("@b:hs.test", map[string]string{"privacy": "1"}))
	// More than one read (PostgreSQL: 10,000 rows per fetch) and write batch.
	bs := make([]db.Binding, 12345)
	for i := range bs {
		bs[i] = db.Binding{Medium: "email", Address: fmt.Sprintf("u%05d@example.org", i), MXID: fmt.Sprintf("@u%05d:hs.test", i), TS: now + int64(i), NotBefore: now, NotAfter: now + 1e12}
	}
	bs = append(bs, db.Binding{Medium: "msisdn", Address: "447700900001", MXID: "@phone:hs.test", TS: now, NotBefore: now, NotAfter: now + 1})
	if _, err := s.PutBindings(bs, 0); err != nil {
		t.Fatal(err)
	}
	for _, sess := range []db.Session{
		{ID: "sid-1", Medium: "email", Address: "s@example.org", ClientSecret: "cs1", Token: "123456", Attempted: true, SendAttempt: 2, CreatedTS: now, ModifiedTS: now + 5, ValidatedTS: now + 5},
		{ID: "sid-2", Medium: "msisdn", Address: "447700900002", ClientSecret: "cs2", Token: "654321", Failures: 2, NextLink: "https://app.example/next", CreatedTS: now, ModifiedTS: now},
	} {
		if _, err := s.RequestSession(sess.Medium, sess.Address, sess.ClientSecret, func(*db.Session) (db.Session, bool, error) { return sess, true, nil }); err != nil {
			t.Fatal(err)
		}
	}
	invite := func(tok, addr string) db.Invite {
		return db.Invite{Token: tok, Medium: "email", Address: addr, RoomID: "!r:hs.test", Sender: "@s:hs.test", Ephemeral: "eph-" + tok, CreatedTS: now, ExpiresTS: now + 1e9}
	}
	for _, inv := range []db.Invite{invite("inv-pending", "new@example.org"), invite("inv-q1", "q@example.org"), invite("inv-q2", "q@example.org"), invite("inv-d", "d@example.org")} {
		must(s.PutInvite(inv))
	}
	bind := func(addr, mxid string) *db.Job {
		t.Helper()
		b := db.Binding{Medium: "email", Address: addr, MXID: mxid, TS: now + 100, NotBefore: now + 100, NotAfter: now + 200}
		_, _, j, err := s.Bind(b, 0, func(p []db.Invite) (string, []byte, error) {
			return "hs.test", fmt.Appendf(nil, `{ "invites": %d }`, len(p)), nil
		})
		if err != nil || j == nil {
			t.Fatalf("bind %s: %v %v", addr, j, err)
		}
		return j
	}
	var f copyFacts
	f.queued, f.delivered, f.bare = bind("q@example.org", "@q:hs.test"), bind("d@example.org", "@d:hs.test"), bind("e@example.org", "@e:hs.test")
	must(s.RetryJob(*f.queued, now+5000, "connection refused"))
	f.queued.Attempts, f.queued.DueTS, f.queued.LastError = 1, now+5000, "connection refused"
	must(s.CompleteJob(*f.delivered, now+200))
	// The audit log with its key: the hashes of the copy's entries must
	// keep matching, so both move.
	if k := auditSecret(t, s); len(k) != db.AuditSecretSize {
		t.Fatalf("the audit log's key: %x", k)
	}
	must(s.AppendAudit(
		db.AuditEntry{TS: now + 300, Actor: "hs.test", Action: "unbind", Medium: "email", AddressHash: "2f1e", MXID: "@gone:hs.test"},
		db.AuditEntry{TS: now + 300, Actor: "admin", Action: "erase", MXID: "@gone:hs.test", Detail: "1 binding"},
		db.AuditEntry{TS: now + 200, Actor: "admin", Action: "queue_drop", Detail: "job 7"},
	))
	must(s.ReplaceDirectoryWithNames([]byte(`{"entries":3}`), PutAll([][3]string{
		{"email", "ldap1@example.org", "@ldap1:hs.test"}, {"email", "ldap2@example.org", "@ldap2:hs.test"}, {"msisdn", "447700900003", "@ldap3:hs.test"},
	}), func(put func(mxid, name string) error) error {
		for _, n := range [][2]string{{"@ldap1:hs.test", "Ldap Éin"}, {"@ldap2:hs.test", ""}} {
			if err := put(n[0], n[1]); err != nil {
				return err
			}
		}
		return nil
	}))
	return f
}

// copyInto exports from into to.
func copyInto(from, to Store) (db.Counts, error) {
	return to.Import(func(put func(db.Record) error) error { return from.Export(put) })
}

func exportImport(t *testing.T, from Store, openTo func(t *testing.T) Store) {
	f := fillEveryKind(t, from, 1_700_000_000_000)
	want, err := from.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if want[db.KindBindings] != 12349 || want[db.KindInvites] != 4 || want[db.KindQueue] != 2 || want[db.KindSessions] != 2 ||
		want[db.KindAccounts] != 2 || want[db.KindTerms] != 2 || want[db.KindMeta] < 3 || want[db.KindDirectory] != 3 || want[db.KindDirectoryNames] != 2 || want[db.KindAudit] != 3 {
		t.Fatalf("the source holds %v", want)
	}
	to := openTo(t)
	got, err := copyInto(from, to)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range db.Kinds() {
		if got[k] != want[k] {
			t.Errorf("%s: imported %d, the source holds %d", k, got[k], want[k])
		}
	}
	SameRecords(t, Records(t, from), Records(t, to))

	// The copy works as the original: tokens (hashed the same way),
	// terms, meta, sessions by 3PID, invites by 3PID and key, the queue.
	if a, err := to.AccountByToken("tok-a"); err != nil || a.UserID != "@a:hs.test" {
		t.Errorf("token in the copy: %+v %v", a, err)
	}
	if a, err := to.AccountByToken("tok-b"); err != nil || a.UsedTS != 1_700_000_000_005 {
		t.Errorf("a token's last use in the copy: %+v %v", a, err)
	}
	if terms, _ := to.AcceptedTerms("@a:hs.test"); len(terms) != 2 || terms["tos"] != "2" {
		t.Errorf("terms in the copy: %v", terms)
	}
	if v, ok, _ := to.GetMeta("some_feature"); !ok || string(v) != `{"state":"p1"}` {
		t.Errorf("meta in the copy: %q %v", v, ok)
	}
	if mxids, _ := to.BoundMXIDs([][2]string{{"email", "u12344@example.org"}, {"msisdn", "447700900001"}, {"email", "q@example.org"}}); !slices.Equal(mxids, []string{"@u12344:hs.test", "@phone:hs.test", "@q:hs.test"}) {
		t.Errorf("bindings in the copy: %v", mxids)
	}
	scanned := 0
	to.ScanBindings(func(_, _, _ []byte) error { scanned++; return nil })
	if scanned != want[db.KindBindings] {
		t.Errorf("reverse index of the copy: %d bindings", scanned)
	}
	if sess, err := to.RequestSession("email", "s@example.org", "cs1", func(ex *db.Session) (db.Session, bool, error) {
		if ex == nil {
			return db.Session{}, false, errors.New("the session of the 3PID and client_secret is not found in the copy")
		}
		return *ex, false, nil
	}); err != nil || sess.ID != "sid-1" || sess.ValidatedTS == 0 {
		t.Errorf("session by 3PID in the copy: %+v %v", sess, err)
	}
	if ok, _ := to.EphemeralKeyExists("eph-inv-pending"); !ok {
		t.Error("an invite's ephemeral key is not found in the copy")
	}
	if inv, _ := to.GetInvite("inv-d"); inv.DeliveredTS == 0 || inv.QueuedJob != f.delivered.ID {
		t.Errorf("delivered invite in the copy: %+v", inv)
	}
	jobs, err := to.DueJobs(1<<62, 10)
	if err != nil || len(jobs) != 2 || jobs[0].ID != f.bare.ID || jobs[1].ID != f.queued.ID {
		t.Fatalf("queue of the copy: %+v %v", jobs, err)
	}
	if j := jobs[1]; j.Attempts != 1 || j.LastError != "connection refused" || j.DueTS != f.queued.DueTS || !slices.Equal(j.InviteTokens, []string{"inv-q1", "inv-q2"}) || string(j.Body) != `{"invites":2}` {
		t.Errorf("retried job in the copy: %+v %s", j, j.Body)
	}
	if err := to.CompleteJob(jobs[1], 1_800_000_000_000); err != nil {
		t.Fatal(err)
	}
	if inv, _ := to.GetInvite("inv-q2"); inv.DeliveredTS != 1_800_000_000_000 {
		t.Errorf("completing a copied job: %+v", inv)
	}
	// A bind of the invited address carries the pending invite, in a job
	// numbered after every copied one.
	var carried []string
	_, _, j, err := to.Bind(db.Binding{Medium: "email", Address: "new@example.org", MXID: "@new:hs.test", TS: 1_700_000_001_000}, 0, func(p []db.Invite) (string, []byte, error) {
		carried = tokens(p)
		return "hs.test", []byte(`{}`), nil
	})
	if err != nil || j == nil || !slices.Equal(carried, []string{"inv-pending"}) {
		t.Fatalf("bind in the copy: %+v %v %v", j, carried, err)
	}
	if j.ID <= max(f.queued.ID, f.delivered.ID, f.bare.ID) {
		t.Errorf("a new job in the copy got id %d, not after the copied ones (%d, %d, %d)", j.ID, f.queued.ID, f.delivered.ID, f.bare.ID)
	}
	if a, b := mustSecret(t, from), mustSecret(t, to); !slices.Equal(a, b) {
		t.Errorf("the audit log's key in the copy: %x, the source's %x", b, a)
	}
	if es, _ := to.AuditEntries(db.AuditQuery{AddressHash: "2f1e"}); len(es) != 1 || es[0].MXID != "@gone:hs.test" {
		t.Errorf("the audit log in the copy: %+v", es)
	}
	if sum, ok, _ := to.DirectorySummary(); !ok || string(sum) != `{"entries":3}` {
		t.Errorf("directory summary in the copy: %q", sum)
	}
	if mxids, _ := to.DirectoryMXIDs([][2]string{{"msisdn", "447700900003"}}); mxids[0] != "@ldap3:hs.test" {
		t.Errorf("directory in the copy: %v", mxids)
	}
	if r, err := to.Check(); err != nil || r.ProblemCount != 0 || r.Bindings != want[db.KindBindings]+1 {
		t.Errorf("check of the copy: %+v %v", r, err)
	}

	// Only an empty store takes an import; it says what the other holds.
	var ne *db.NotEmptyError
	if _, err := copyInto(from, to); !errors.As(err, &ne) || ne.Holds[db.KindBindings] != want[db.KindBindings]+1 || ne.Holds[db.KindAccounts] != 2 {
		t.Errorf("import into a store that holds records: %v", err)
	}

	// Bad records and a failing source store nothing.
	fresh := openTo(t)
	boom := errors.New("the source broke off")
	b := db.Binding{Medium: "email", Address: "x@example.org", MXID: "@x:hs.test"}
	for name, fill := range map[string]func(put func(db.Record) error) error{
		"source error": func(put func(db.Record) error) error { put(b); return boom },
		"twice":        func(put func(db.Record) error) error { put(b); return put(b) },
		"NUL": func(put func(db.Record) error) error {
			return put(db.Binding{Medium: "email", Address: "a\x00b", MXID: "@x:hs.test"})
		},
		"job body": func(put func(db.Record) error) error {
			return put(db.Job{ID: 1, Destination: "hs.test", Body: []byte("{")})
		},
		"token hash": func(put func(db.Record) error) error {
			return put(db.AccountEntry{TokenHash: []byte("short"), Account: db.Account{UserID: "@a:hs"}})
		},
		"terms":         func(put func(db.Record) error) error { return put(db.TermsEntry{UserID: "@a:hs"}) },
		"schema":        func(put func(db.Record) error) error { return put(db.MetaEntry{Key: "schema", Value: []byte{1}}) },
		"empty session": func(put func(db.Record) error) error { return put(db.Session{ID: "s"}) },
		"audit entry":   func(put func(db.Record) error) error { return put(db.AuditEntry{TS: 1, Action: "unbind"}) },
	} {
		_, err := fresh.Import(fill)
		if err == nil || (name == "source error" && !errors.Is(err, boom)) {
			t.Errorf("%s: import %v", name, err)
		}
		if c, _ := fresh.Counts(); c.Total() != 0 {
			t.Errorf("%s: a failed import left %v", name, c)
		}
	}
}

// mustSecret is the audit log's key the store holds.
func mustSecret(t *testing.T, s Store) []byte {
	t.Helper()
	k, ok, err := s.GetMeta(db.MetaAuditSecret)
	if err != nil || !ok {
		t.Fatalf("the audit log's key: %v %v", ok, err)
	}
	return k
}
