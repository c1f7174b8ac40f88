package storetest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mxid/db"
)

// Run runs every case of the contract, each as a parallel subtest on a
// fresh, empty store from open (which arranges for it to be closed).
func Run(t *testing.T, open func(t *testing.T) Store) {
	cases := []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"BindingsReplaceAndReverseIndex", bindingsReplaceAndReverseIndex},
		{"ScanBindingsAcrossChunks", scanBindingsAcrossChunks},
		{"AccountsTermsMeta", accountsTermsMeta},
		{"Sessions", sessions},
		{"BindOnce", bindOnce},
		{"InvitesAndOnbindQueue", invitesAndOnbindQueue},
		{"ConcurrentRequestSession", concurrentRequestSession},
		{"ConcurrentBind", concurrentBind},
		{"QueueClaims", queueClaims},
		{"ChangeLog", changeLog},
		{"ChangeLogOrderUnderConcurrentWrites", changeLogOrder},
		{"ChangeLogMeta", changeLogMeta},
		{"DirectorySnapshot", directorySnapshot},
		{"DirectoryNames", directoryNames},
		{"CheckCounts", checkCounts},
		{"CreateMetaOnce", createMetaOnce},
		{"ExportImport", func(t *testing.T, s Store) { exportImport(t, s, open) }},
	}
	cases = append(cases, adminCases()...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, open(t))
		})
	}
}

// second is another handle on s's data: a replica's where the backend has
// replicas, s itself otherwise.
func second(t *testing.T, s Store) Store {
	if r, ok := s.(Replicated); ok {
		return r.Replica(t)
	}
	return s
}

func bindingsReplaceAndReverseIndex(t *testing.T, s Store) {
	b := db.Binding{Medium: "email", Address: "alice@example.org", MXID: "@alice:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}
	if prev, err := s.PutBinding(b); err != nil || prev != nil {
		t.Fatalf("first bind: %v %v", prev, err)
	}
	b2 := b
	b2.MXID = "@mallory:hs.test"
	prev, err := s.PutBinding(b2)
	if err != nil || prev == nil || *prev != b {
		t.Fatalf("rebind: %+v %v", prev, err)
	}
	got, err := s.GetBinding("email", "alice@example.org")
	if err != nil || got != b2 {
		t.Errorf("after rebind: %+v %v", got, err)
	}
	if mxid, ok, err := s.BoundMXID("email", "alice@example.org"); err != nil || !ok || mxid != b2.MXID {
		t.Errorf("BoundMXID: %q %v %v", mxid, ok, err)
	}
	var rows []string
	s.ScanBindings(func(m, a, x []byte) error { rows = append(rows, string(m)+" "+string(a)+" "+string(x)); return nil })
	if len(rows) != 1 || rows[0] != "email alice@example.org @mallory:hs.test" {
		t.Errorf("reverse index after rebind: %v", rows)
	}
	// Only the owner's unbind removes it; unbinding twice is fine.
	if ok, err := s.DeleteBinding("email", "alice@example.org", "@alice:hs.test"); ok || err != nil {
		t.Errorf("unbind by the old owner: %v %v", ok, err)
	}
	if ok, err := s.DeleteBinding("email", "alice@example.org", "@mallory:hs.test"); !ok || err != nil {
		t.Errorf("unbind by the owner: %v %v", ok, err)
	}
	if ok, err := s.DeleteBinding("email", "alice@example.org", "@mallory:hs.test"); ok || err != nil {
		t.Errorf("second unbind: %v %v", ok, err)
	}
	if _, err := s.GetBinding("email", "alice@example.org"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("after unbind: %v", err)
	}
	if _, ok, err := s.BoundMXID("email", "alice@example.org"); ok || err != nil {
		t.Errorf("BoundMXID after unbind: %v %v", ok, err)
	}
	if n, _ := s.CountBindings(); n != 0 {
		t.Errorf("count %d", n)
	}
	if _, err := s.PutBinding(db.Binding{Medium: "email", Address: "a\x00b", MXID: "@a:b"}); err == nil {
		t.Error("a NUL in an address was stored")
	}
	if _, err := s.PutBinding(db.Binding{Medium: "email", Address: "a@b", MXID: ""}); err == nil {
		t.Error("a binding without an mxid was stored")
	}
	// Whatever a client sends as a key is a miss, never an error.
	s.PutBinding(db.Binding{Medium: "email", Address: "bob@example.org", MXID: "@bob:hs.test"})
	got3, err := s.BoundMXIDs([][2]string{{"email", "bob@example.org"}, {"email", "a\x00b"}, {"email", "\xff\xfe"}, {"msisdn", "bob@example.org"}, {"email", "bob@example.org"}})
	if err != nil || !slices.Equal(got3, []string{"@bob:hs.test", "", "", "", "@bob:hs.test"}) {
		t.Errorf("BoundMXIDs: %q %v", got3, err)
	}
	for _, addr := range []string{"a\x00b", "\xff\xfe"} {
		if _, err := s.GetBinding("email", addr); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("GetBinding(%q): %v", addr, err)
		}
		if ok, err := s.DeleteBinding("email", addr, "@bob:hs.test"); ok || err != nil {
			t.Errorf("DeleteBinding(%q): %v %v", addr, ok, err)
		}
	}
}

func scanBindingsAcrossChunks(t *testing.T, s Store) {
	const n = 45000 // more than two read chunks
	bs := make([]db.Binding, n)
	for i := range bs {
		bs[i] = db.Binding{Medium: "email", Address: fmt.Sprintf("u%06d@example.org", i), MXID: fmt.Sprintf("@u%06d:hs.test", n-i), TS: int64(i)}
	}
	if stored, err := s.PutBindings(bs, 10000); err != nil || stored != n {
		t.Fatalf("PutBindings: %d %v", stored, err)
	}
	seen := map[string]string{}
	var last []byte
	err := s.ScanBindings(func(m, a, x []byte) error {
		if _, dup := seen[string(a)]; dup {
			return fmt.Errorf("%s seen twice", a)
		}
		key := bytes.Join([][]byte{x, m, a}, []byte{0})
		if bytes.Compare(key, last) <= 0 {
			return fmt.Errorf("%q after %q: not in (mxid, medium, address) order", key, last)
		}
		last = key
		seen[string(a)] = string(x)
		return nil
	})
	if err != nil || len(seen) != n {
		t.Fatalf("ScanBindings saw %d of %d: %v", len(seen), n, err)
	}
	if seen["u012345@example.org"] != fmt.Sprintf("@u%06d:hs.test", n-12345) {
		t.Errorf("wrong mxid: %s", seen["u012345@example.org"])
	}
	if c, _ := s.CountBindings(); c != n {
		t.Errorf("CountBindings = %d", c)
	}
	// fn's error ends the scan and comes back as it is.
	stop := errors.New("enough")
	calls := 0
	if err := s.ScanBindings(func(m, a, x []byte) error { calls++; return stop }); err != stop || calls != 1 {
		t.Errorf("a failing fn: %v after %d calls", err, calls)
	}
	// Within one import, the last binding of a 3PID wins.
	dup := []db.Binding{
		{Medium: "email", Address: "dup@example.org", MXID: "@first:hs.test"},
		{Medium: "email", Address: "dup@example.org", MXID: "@second:hs.test"},
	}
	if stored, err := s.PutBindings(dup, 0); err != nil || stored != 2 {
		t.Fatalf("PutBindings with a repeated 3PID: %d %v", stored, err)
	}
	if mxid, _, _ := s.BoundMXID("email", "dup@example.org"); mxid != "@second:hs.test" {
		t.Errorf("repeated 3PID in one import: %s bound", mxid)
	}
	if _, err := s.PutBindings([]db.Binding{{Medium: "email", Address: "ok@example.org", MXID: "@ok:hs.test"}, {Medium: "email", Address: "x\x00", MXID: "@x:hs.test"}}, 0); err == nil {
		t.Error("an import with a NUL in an address was accepted")
	}
	if _, ok, _ := s.BoundMXID("email", "ok@example.org"); ok {
		t.Error("a refused import stored part of itself")
	}
}

func accountsTermsMeta(t *testing.T, s Store) {
	now := time.Unix(1700000000, 0)
	if err := s.CreateAccountToken("tok", "@a:hs.test", now); err != nil {
		t.Fatal(err)
	}
	a, err := s.AccountByToken("tok")
	if err != nil || a.UserID != "@a:hs.test" || a.CreatedTS != now.UnixMilli() {
		t.Errorf("AccountByToken: %+v %v", a, err)
	}
	if _, err := s.AccountByToken("other"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("unknown token: %v", err)
	}
	if err := s.CreateAccountToken("", "@a:hs.test", now); err == nil {
		t.Error("an empty token was stored")
	}
	if err := s.DeleteAccountToken("tok"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AccountByToken("tok"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
	if err := s.DeleteAccountToken("tok"); err != nil {
		t.Errorf("deleting an unknown token: %v", err)
	}
	if got, err := s.AcceptedTerms("@a:hs.test"); err != nil || got == nil || len(got) != 0 {
		t.Errorf("AcceptedTerms before any: %v %v", got, err)
	}
	s.AcceptTerms("@a:hs.test", map[string]string{"privacy": "1", "tos": "1"})
	s.AcceptTerms("@a:hs.test", map[string]string{"tos": "2"})
	got, _ := s.AcceptedTerms("@a:hs.test")
	if len(got) != 2 || got["privacy"] != "1" || got["tos"] != "2" {
		t.Errorf("AcceptedTerms = %v", got)
	}
	if v, err := s.SchemaVersion(); err != nil || v < 1 {
		t.Errorf("SchemaVersion: %d %v", v, err)
	}
	if err := s.PutMeta("schema", nil); err == nil {
		t.Error("the schema key could be overwritten through PutMeta")
	}
	if _, _, err := s.GetMeta("schema"); err == nil {
		t.Error("the schema key could be read through GetMeta")
	}
	if _, ok, err := s.GetMeta("lookup_pepper"); ok || err != nil {
		t.Errorf("absent meta key: %v %v", ok, err)
	}
	s.PutMeta("lookup_pepper", []byte(`{"pepper":"a"}`))
	s.PutMeta("lookup_pepper", []byte(`{"pepper":"b"}`))
	if v, ok, err := s.GetMeta("lookup_pepper"); !ok || err != nil || string(v) != `{"pepper":"b"}` {
		t.Errorf("meta: %q %v %v", v, ok, err)
	}
	s.PutMeta("empty", []byte{})
	if v, ok, err := s.GetMeta("empty"); !ok || err != nil || len(v) != 0 {
		t.Errorf("empty meta value: %q %v %v", v, ok, err)
	}
}

func sessions(t *testing.T, s Store) {
	create := func(id string, ts int64) func(*db.Session) (db.Session, bool, error) {
		return func(ex *db.Session) (db.Session, bool, error) {
			if ex != nil && ex.ID == id {
				return *ex, false, nil
			}
			return db.Session{ID: id, Medium: "email", Address: "a@example.org", ClientSecret: "cs", Token: "t", ModifiedTS: ts}, true, nil
		}
	}
	a, err := s.RequestSession("email", "a@example.org", "cs", create("sidA", 1))
	if err != nil || a.ID != "sidA" {
		t.Fatalf("create: %+v %v", a, err)
	}
	// Same 3PID and secret: decide sees the existing session.
	again, err := s.RequestSession("email", "a@example.org", "cs", create("sidA", 2))
	if err != nil || again.ID != "sidA" || again.ModifiedTS != 1 {
		t.Fatalf("existing: %+v %v", again, err)
	}
	// Another secret is another session.
	if o, err := s.RequestSession("email", "a@example.org", "cs2", func(ex *db.Session) (db.Session, bool, error) {
		if ex != nil {
			t.Error("decide saw another client_secret's session")
		}
		return db.Session{ID: "sidO", Medium: "email", Address: "a@example.org", ClientSecret: "cs2"}, true, nil
	}); err != nil || o.ID != "sidO" {
		t.Fatalf("other secret: %+v %v", o, err)
	}
	// A replacement deletes the old session and moves the index.
	b, err := s.RequestSession("email", "a@example.org", "cs", create("sidB", 3))
	if err != nil || b.ID != "sidB" {
		t.Fatalf("replace: %+v %v", b, err)
	}
	if _, err := s.GetSession("sidA"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("replaced session still there: %v", err)
	}
	// A mismatching session is refused, and so is a taken sid.
	if _, err := s.RequestSession("email", "a@example.org", "cs", func(*db.Session) (db.Session, bool, error) {
		return db.Session{ID: "sidC", Medium: "email", Address: "other@example.org", ClientSecret: "cs"}, true, nil
	}); err == nil {
		t.Error("a session for another 3PID was stored under this one")
	}
	if _, err := s.RequestSession("email", "z@example.org", "cs", func(*db.Session) (db.Session, bool, error) {
		return db.Session{ID: "sidO", Medium: "email", Address: "z@example.org", ClientSecret: "cs"}, true, nil
	}); err == nil {
		t.Error("a session took another session's sid")
	}
	// decide's error aborts and comes back as it is.
	refuse := errors.New("rate limited")
	if _, err := s.RequestSession("email", "a@example.org", "cs", func(*db.Session) (db.Session, bool, error) {
		return db.Session{}, false, refuse
	}); err != refuse {
		t.Errorf("decide's error: %v", err)
	}
	// UpdateSession writes only when changed, and not the identity fields.
	if _, err := s.UpdateSession("sidB", func(x *db.Session) (bool, error) { x.Failures = 3; return true, nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetSession("sidB"); got.Failures != 3 {
		t.Errorf("failures %d", got.Failures)
	}
	if got, err := s.UpdateSession("sidB", func(x *db.Session) (bool, error) { x.Failures = 9; return false, nil }); err != nil || got.Failures != 9 {
		t.Errorf("unchanged update returns fn's view: %+v %v", got, err)
	}
	if got, _ := s.GetSession("sidB"); got.Failures != 3 {
		t.Errorf("an update fn said unchanged was written: failures %d", got.Failures)
	}
	if _, err := s.UpdateSession("sidB", func(x *db.Session) (bool, error) { return false, refuse }); err != refuse {
		t.Errorf("fn's error: %v", err)
	}
	if _, err := s.UpdateSession("sidB", func(x *db.Session) (bool, error) { x.Address = "x@example.org"; return true, nil }); err == nil {
		t.Error("a session's address was changed")
	}
	if _, err := s.UpdateSession("nope", func(*db.Session) (bool, error) { return false, nil }); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("missing session: %v", err)
	}
	for _, sid := range []string{"nope", "a\x00b", "\xff"} {
		if _, err := s.GetSession(sid); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("GetSession(%q): %v", sid, err)
		}
	}
	// Every field survives a round trip.
	full := db.Session{ID: "sidF", Medium: "msisdn", Address: "447700900002", ClientSecret: "cs", Token: "123456",
		Failures: 2, Attempted: true, SendAttempt: 7, UndoAttempted: true, UndoSendAttempt: 6,
		NextLink: "https://example.org/next", CreatedTS: 10, ModifiedTS: 11, ValidatedTS: 12}
	if _, err := s.RequestSession("msisdn", "447700900002", "cs", func(*db.Session) (db.Session, bool, error) { return full, true, nil }); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSession("sidF"); err != nil || got != full {
		t.Errorf("round trip:\n got %+v %v\nwant %+v", got, err, full)
	}
	// Sweep deletes the session and its index entry.
	s.RequestSession("msisdn", "447700900001", "cs", func(*db.Session) (db.Session, bool, error) {
		return db.Session{ID: "sidD", Medium: "msisdn", Address: "447700900001", ClientSecret: "cs", ModifiedTS: 100}, true, nil
	})
	n, err := s.SweepSessions(func(x db.Session) bool { return x.ModifiedTS < 50 })
	if err != nil || n != 3 { // sidB, sidO, sidF
		t.Fatalf("sweep: %d %v", n, err)
	}
	if c, _ := s.CountSessions(); c != 1 {
		t.Errorf("%d sessions left", c)
	}
	fresh, _ := s.RequestSession("email", "a@example.org", "cs", func(ex *db.Session) (db.Session, bool, error) {
		if ex != nil {
			t.Error("the swept session's index entry survived")
		}
		return db.Session{ID: "sidE", Medium: "email", Address: "a@example.org", ClientSecret: "cs"}, true, nil
	})
	if fresh.ID != "sidE" {
		t.Errorf("after sweep: %+v", fresh)
	}
}

func bindOnce(t *testing.T, s Store) {
	b := db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs", TS: 10, NotBefore: 10, NotAfter: 20}
	if got, changed, _, err := s.Bind(b, 5, nil); err != nil || !changed || got != b {
		t.Fatalf("first: %+v %v %v", got, changed, err)
	}
	later := b
	later.TS = 11
	if got, changed, _, _ := s.Bind(later, 5, nil); changed || got != b {
		t.Errorf("same session again: %+v changed=%v", got, changed)
	}
	if got, changed, _, _ := s.Bind(later, 11, nil); !changed || got != later {
		t.Errorf("newer validation: %+v changed=%v", got, changed)
	}
	other := later
	other.MXID = "@b:hs"
	if _, changed, _, _ := s.Bind(other, 0, nil); !changed {
		t.Error("a new owner did not replace the binding")
	}
	if n, _ := s.QueueDepth(); n != 0 {
		t.Errorf("binds without onbind queued %d jobs", n)
	}
	if _, _, _, err := s.Bind(db.Binding{Medium: "email", Address: "x\x00", MXID: "@a:hs"}, 0, nil); err == nil {
		t.Error("a NUL in an address was bound")
	}
}

func tokens(invs []db.Invite) []string {
	var out []string
	for _, inv := range invs {
		out = append(out, inv.Token)
	}
	return out
}

func invitesAndOnbindQueue(t *testing.T, s Store) {
	const now = int64(1_000_000)
	invite := func(tok, addr string, expires int64) db.Invite {
		return db.Invite{Token: tok, Medium: "email", Address: addr, RoomID: "!r:hs", Sender: "@s:hs", Ephemeral: "eph-" + tok, CreatedTS: now, ExpiresTS: expires}
	}
	for _, inv := range []db.Invite{
		invite("t2", "a@example.org", now+1000), invite("t1", "a@example.org", now+1000),
		invite("t3", "a@example.org", now-1), // expired
		invite("t4", "b@example.org", now+5000),
		invite("t5", "c@example.org", now+10),
	} {
		if err := s.PutInvite(inv); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutInvite(invite("t1", "z@example.org", now)); !errors.Is(err, db.ErrExists) {
		t.Errorf("a taken token: %v", err)
	}
	if err := s.PutInvite(db.Invite{Token: "t9", Medium: "email", Address: "a@example.org"}); err == nil {
		t.Error("an invite without an ephemeral key was stored")
	}
	if got, err := s.GetInvite("t1"); err != nil || got != invite("t1", "a@example.org", now+1000) {
		t.Errorf("GetInvite: %+v %v", got, err)
	}
	if _, err := s.GetInvite("nope"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("unknown invite: %v", err)
	}
	if ok, err := s.EphemeralKeyExists("eph-t1"); !ok || err != nil {
		t.Errorf("ephemeral key: %v %v", ok, err)
	}
	if ok, err := s.EphemeralKeyExists("nope"); ok || err != nil {
		t.Errorf("unknown ephemeral key: %v %v", ok, err)
	}

	// A bind carries the 3PID's pending, unexpired invites, in token order,
	// and marks them queued.
	onbind := func(got *[]string, body string) db.OnbindFunc {
		return func(pending []db.Invite) (string, []byte, error) {
			*got = tokens(pending)
			return "hs", []byte(body), nil
		}
	}
	var carried []string
	ba := db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs", TS: now, NotBefore: now, NotAfter: now + 1}
	_, changed, j1, err := s.Bind(ba, 0, onbind(&carried, `{ "n": 1 }`))
	if err != nil || !changed || j1 == nil {
		t.Fatalf("bind: %v %v %v", changed, j1, err)
	}
	if !slices.Equal(carried, []string{"t1", "t2"}) || !slices.Equal(j1.InviteTokens, carried) || j1.Destination != "hs" || j1.DueTS != now {
		t.Errorf("job %+v carrying %v", j1, carried)
	}
	if inv, _ := s.GetInvite("t1"); inv.QueuedJob != j1.ID {
		t.Errorf("carried invite: queued_job %d, job %d", inv.QueuedJob, j1.ID)
	}
	// A new owner is told even with no invite left; a rebind to the same
	// owner with none queues nothing; an onbind error binds nothing.
	bb := ba
	bb.MXID, bb.TS = "@b:hs", now+1
	_, _, j2, err := s.Bind(bb, 0, onbind(&carried, `{"n":2}`))
	if err != nil || j2 == nil || len(carried) != 0 || j2.ID == j1.ID {
		t.Fatalf("new owner: %+v %v %v", j2, carried, err)
	}
	bb.TS = now + 2
	if _, changed, j, err := s.Bind(bb, now+2, onbind(&carried, `{}`)); err != nil || !changed || j != nil {
		t.Errorf("rebind to the same owner: %v %+v %v", changed, j, err)
	}
	failed := errors.New("cannot sign")
	bc := db.Binding{Medium: "email", Address: "c@example.org", MXID: "@c:hs", TS: now}
	if _, _, _, err := s.Bind(bc, 0, func([]db.Invite) (string, []byte, error) { return "", nil, failed }); err != failed {
		t.Errorf("onbind's error: %v", err)
	}
	if _, ok, _ := s.BoundMXID("email", "c@example.org"); ok {
		t.Error("a bind whose onbind failed was stored")
	}
	if inv, _ := s.GetInvite("t5"); inv.QueuedJob != 0 {
		t.Error("a failed bind queued an invite")
	}
	if n, _ := s.QueueDepth(); n != 2 {
		t.Fatalf("queue depth %d", n)
	}
	if due, ok, err := s.NextJobDue(); !ok || err != nil || due != now {
		t.Errorf("NextJobDue: %d %v %v", due, ok, err)
	}

	// Due jobs come earliest first, with their body (compact JSON).
	if jobs, err := s.DueJobs(now-1, 10); err != nil || len(jobs) != 0 {
		t.Fatalf("nothing due yet: %v %v", jobs, err)
	}
	if jobs, err := s.DueJobs(now, 0); err != nil || len(jobs) != 0 {
		t.Fatalf("limit 0: %v %v", jobs, err)
	}
	jobs, err := s.DueJobs(now+1, 10)
	if err != nil || len(jobs) != 2 || jobs[0].ID != j1.ID || jobs[1].ID != j2.ID {
		t.Fatalf("due jobs: %+v %v", jobs, err)
	}
	if string(jobs[0].Body) != `{"n":1}` || !slices.Equal(jobs[0].InviteTokens, []string{"t1", "t2"}) || jobs[0].Attempts != 0 || jobs[0].CreatedTS != now {
		t.Errorf("job read back: %+v (body %s)", jobs[0], jobs[0].Body)
	}
	// Retried: due again later with the attempt counted. Dropped: its
	// invites are pending again.
	if err := s.RetryJob(jobs[1], now+500, "boom"); err != nil {
		t.Fatal(err)
	}
	if err := s.DropJob(jobs[0]); err != nil {
		t.Fatal(err)
	}
	if inv, _ := s.GetInvite("t1"); inv.QueuedJob != 0 || inv.DeliveredTS != 0 {
		t.Errorf("invite of a dropped job: %+v", inv)
	}
	if due, ok, _ := s.NextJobDue(); !ok || due != now+500 {
		t.Errorf("NextJobDue after retry: %d %v", due, ok)
	}
	if jobs, _ := s.DueJobs(now+499, 10); len(jobs) != 0 {
		t.Errorf("a retried job came back early: %+v", jobs)
	}
	jobs, err = s.DueJobs(now+500, 10)
	if err != nil || len(jobs) != 1 || jobs[0].ID != j2.ID || jobs[0].Attempts != 1 || jobs[0].LastError != "boom" || jobs[0].DueTS != now+500 {
		t.Fatalf("retried job: %+v %v", jobs, err)
	}
	if err := s.CompleteJob(jobs[0], now+600); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextJobDue(); ok {
		t.Error("NextJobDue with an empty queue")
	}
	// The dropped invites ride on the next bind; completing its job marks
	// them delivered.
	bd := ba
	bd.MXID, bd.TS = "@d:hs", now+3
	_, _, j3, err := s.Bind(bd, 0, onbind(&carried, `{}`))
	if err != nil || j3 == nil || !slices.Equal(carried, []string{"t1", "t2"}) {
		t.Fatalf("bind after a drop: %+v %v %v", j3, carried, err)
	}
	_, _, j4, err := s.Bind(bc, 0, onbind(&carried, `{}`)) // carries t5, left undelivered
	if err != nil || j4 == nil || !slices.Equal(carried, []string{"t5"}) {
		t.Fatalf("bind of c: %+v %v %v", j4, carried, err)
	}
	jobs, _ = s.DueJobs(now+3, 10)
	if len(jobs) != 2 || jobs[0].ID != j4.ID || jobs[1].ID != j3.ID {
		t.Fatalf("due: %+v", jobs)
	}
	if err := s.CompleteJob(jobs[1], now+700); err != nil {
		t.Fatal(err)
	}
	if inv, _ := s.GetInvite("t2"); inv.DeliveredTS != now+700 || inv.QueuedJob != j3.ID {
		t.Errorf("delivered invite: %+v", inv)
	}
	// The sweep removes expired invites, pending (t3) or delivered (t1,
	// t2), but keeps one still waiting in a job (t5) and unexpired ones (t4).
	if n, err := s.SweepInvites(now + 1000); err != nil || n != 3 {
		t.Errorf("sweep: %d %v", n, err)
	}
	for tok, want := range map[string]bool{"t1": false, "t2": false, "t3": false, "t4": true, "t5": true} {
		_, err := s.GetInvite(tok)
		if (err == nil) != want {
			t.Errorf("after the sweep, invite %s: %v", tok, err)
		}
		if ok, _ := s.EphemeralKeyExists("eph-" + tok); ok != want {
			t.Errorf("after the sweep, ephemeral key of %s: %v", tok, ok)
		}
	}
	if err := s.DeleteInvite("t4"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.EphemeralKeyExists("eph-t4"); ok {
		t.Error("a deleted invite's ephemeral key is still there")
	}
	if err := s.DeleteInvite("t4"); err != nil {
		t.Errorf("deleting a deleted invite: %v", err)
	}
}

// concurrentRequestSession: requests for one (3PID, client_secret) racing
// on two handles make one session; every caller gets its sid.
func concurrentRequestSession(t *testing.T, s Store) {
	handles := []Store{s, second(t, s)}
	const n = 16
	var wg sync.WaitGroup
	ids := make([]string, n)
	var created atomic.Int32
	for i := range n {
		h := handles[i%2]
		wg.Go(func() {
			sess, err := h.RequestSession("email", "race@example.org", "cs", func(ex *db.Session) (db.Session, bool, error) {
				if ex != nil {
					return *ex, false, nil
				}
				created.Add(1)
				return db.Session{ID: rand.Text(), Medium: "email", Address: "race@example.org", ClientSecret: "cs", Token: "t"}, true, nil
			})
			if err != nil {
				t.Error(err)
			}
			ids[i] = sess.ID
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || id == "" {
			t.Fatalf("racing requests got different sessions: %v", ids)
		}
	}
	if c := created.Load(); c != 1 {
		t.Errorf("decide created %d sessions", c)
	}
	if c, _ := s.CountSessions(); c != 1 {
		t.Errorf("%d sessions stored", c)
	}
}

// concurrentBind: binds of one validated session racing on two handles
// store one binding and queue one job carrying the pending invite.
func concurrentBind(t *testing.T, s Store) {
	if err := s.PutInvite(db.Invite{Token: "tok", Medium: "email", Address: "race@example.org", Ephemeral: "eph", ExpiresTS: 1 << 50}); err != nil {
		t.Fatal(err)
	}
	handles := []Store{s, second(t, s)}
	b := db.Binding{Medium: "email", Address: "race@example.org", MXID: "@race:hs", TS: 1000, NotBefore: 1000, NotAfter: 2000}
	const n = 16
	var wg sync.WaitGroup
	var changed, queued, calls atomic.Int32
	for i := range n {
		h := handles[i%2]
		wg.Go(func() {
			got, ch, j, err := h.Bind(b, b.TS, func(pending []db.Invite) (string, []byte, error) {
				calls.Add(1)
				if len(pending) != 1 {
					t.Errorf("onbind saw %d pending invites", len(pending))
				}
				return "hs", []byte(`{}`), nil
			})
			if err != nil || got != b {
				t.Errorf("bind: %+v %v", got, err)
			}
			if ch {
				changed.Add(1)
			}
			if j != nil {
				queued.Add(1)
			}
		})
	}
	wg.Wait()
	if changed.Load() != 1 || queued.Load() != 1 || calls.Load() != 1 {
		t.Errorf("%d racing binds: %d changed, %d queued, onbind called %d times", n, changed.Load(), queued.Load(), calls.Load())
	}
	if d, _ := s.QueueDepth(); d != 1 {
		t.Errorf("queue depth %d", d)
	}
	if c, _ := s.CountBindings(); c != 1 {
		t.Errorf("%d bindings", c)
	}
}

// queueJobs binds n 3PIDs with an onbind each, due at now.
func queueJobs(t *testing.T, s Store, n int, now int64) {
	for i := range n {
		b := db.Binding{Medium: "email", Address: fmt.Sprintf("q%d@example.org", i), MXID: "@q:hs", TS: now}
		if _, _, j, err := s.Bind(b, 0, func([]db.Invite) (string, []byte, error) { return "hs", []byte(`{}`), nil }); err != nil || j == nil {
			t.Fatalf("queue: %v %v", j, err)
		}
	}
}

// queueClaims: jobs claimed by one replica are not handed to another until
// the claim lapses or is ended.
func queueClaims(t *testing.T, s Store) {
	if _, ok := s.(Replicated); !ok {
		t.Skip("one process: nothing to claim")
	}
	const now, n = int64(1_000_000), 20
	queueJobs(t, s, n, now)
	handles := []Store{s, second(t, s)}
	var mu sync.Mutex
	owner := map[uint64]int{}
	var wg sync.WaitGroup
	for h := range handles {
		wg.Go(func() {
			for {
				jobs, err := handles[h].DueJobs(now, 3)
				if err != nil {
					t.Error(err)
					return
				}
				if len(jobs) == 0 {
					return
				}
				mu.Lock()
				for _, j := range jobs {
					if o, dup := owner[j.ID]; dup {
						t.Errorf("job %d handed to handle %d and %d", j.ID, o, h)
					}
					owner[j.ID] = h
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(owner) != n {
		t.Fatalf("%d of %d jobs claimed", len(owner), n)
	}
	if jobs, _ := s.DueJobs(now+1, n); len(jobs) != 0 {
		t.Fatalf("claimed jobs handed out again: %d", len(jobs))
	}
	if d, _ := s.QueueDepth(); d != n {
		t.Errorf("claimed jobs are still queued: depth %d", d)
	}
	// A claim lapses (the replica died): another replica gets the jobs.
	const later = now + int64(365*24*time.Hour/time.Millisecond)
	jobs, err := handles[1].DueJobs(later, n)
	if err != nil || len(jobs) != n {
		t.Fatalf("after the lease: %d jobs, %v", len(jobs), err)
	}
	if due, ok, _ := s.NextJobDue(); !ok || due <= later {
		t.Errorf("NextJobDue while all are claimed: %d (claims taken at %d)", due, later)
	}
	// Complete, retry and drop end the claim.
	if err := s.CompleteJob(jobs[0], later); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryJob(jobs[1], later, "try again"); err != nil {
		t.Fatal(err)
	}
	if err := s.DropJob(jobs[2]); err != nil {
		t.Fatal(err)
	}
	got, err := handles[0].DueJobs(later, n)
	if err != nil || len(got) != 1 || got[0].ID != jobs[1].ID || got[0].Attempts != 1 {
		t.Fatalf("after complete, retry, drop: %+v %v", got, err)
	}
	if d, _ := s.QueueDepth(); d != n-2 {
		t.Errorf("depth %d", d)
	}
	// A job completed by another replica after a claim lapsed stays gone
	// when the first retries it late.
	if err := s.CompleteJob(got[0], later); err != nil {
		t.Fatal(err)
	}
	if err := handles[1].RetryJob(got[0], later, "late"); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.QueueDepth(); d != n-3 {
		t.Errorf("a late retry brought a completed job back: depth %d", d)
	}
}

func changeLogOf(t *testing.T, s Store) ChangeLog {
	cl, ok := s.(ChangeLog)
	if !ok {
		t.Skip("no change log: one process, the lookup index follows through in-process hooks")
	}
	return cl
}

func changeLog(t *testing.T, s Store) {
	cl := changeLogOf(t, s)
	if seq, err := cl.LatestChange(); seq != 0 || err != nil {
		t.Fatalf("empty log: %d %v", seq, err)
	}
	if cs, err := cl.ChangesSince(0, 10); len(cs) != 0 || err != nil {
		t.Fatalf("empty log: %v %v", cs, err)
	}
	b := db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs", TS: 5}
	s.PutBinding(b)
	s.Bind(b, 0, nil) // no change: same owner, same validation
	s.DeleteBinding("email", "a@example.org", "@nobody:hs")
	s.DeleteBinding("email", "a@example.org", "@a:hs")
	s.Bind(db.Binding{Medium: "msisdn", Address: "15550001", MXID: "@m:hs", TS: 6}, 0, nil)
	s.PutBindings([]db.Binding{
		{Medium: "email", Address: "x@example.org", MXID: "@x:hs"},
		{Medium: "email", Address: "y@example.org", MXID: "@y:hs"},
	}, 1)
	cs, err := cl.ChangesSince(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		kind                  db.ChangeKind
		medium, address, mxid string
	}
	var got []entry
	for i, c := range cs {
		got = append(got, entry{c.Kind, c.Medium, c.Address, c.MXID})
		if i > 0 && c.Seq <= cs[i-1].Seq {
			t.Errorf("seq %d after %d", c.Seq, cs[i-1].Seq)
		}
		if c.TS == 0 {
			t.Errorf("change %d has no time", c.Seq)
		}
	}
	want := []entry{
		{db.ChangeBind, "email", "a@example.org", "@a:hs"},
		{db.ChangeUnbind, "email", "a@example.org", "@a:hs"},
		{db.ChangeBind, "msisdn", "15550001", "@m:hs"},
		{db.ChangeBind, "email", "x@example.org", "@x:hs"},
		{db.ChangeBind, "email", "y@example.org", "@y:hs"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("changes:\n got %v\nwant %v", got, want)
	}
	latest, err := cl.LatestChange()
	if err != nil || latest != cs[len(cs)-1].Seq {
		t.Errorf("LatestChange %d %v, last change %d", latest, err, cs[len(cs)-1].Seq)
	}
	if part, _ := cl.ChangesSince(cs[1].Seq, 2); len(part) != 2 || part[0].Seq != cs[2].Seq || part[1].Seq != cs[3].Seq {
		t.Errorf("ChangesSince(%d, 2): %v", cs[1].Seq, part)
	}
	// Pruning: nothing is old enough a decade ago; everything is a decade
	// on. A reader behind the pruned part is told to rebuild.
	decade := int64(10 * 365 * 24 * time.Hour / time.Millisecond)
	now := time.Now().UnixMilli()
	if n, err := cl.PruneChanges(now - decade); n != 0 || err != nil {
		t.Errorf("prune of nothing: %d %v", n, err)
	}
	if n, err := cl.PruneChanges(now + decade); n != len(cs) || err != nil {
		t.Errorf("prune of everything: %d %v", n, err)
	}
	if _, err := cl.ChangesSince(0, 10); !errors.Is(err, db.ErrChangesPruned) {
		t.Errorf("reading pruned changes: %v", err)
	}
	if after, err := cl.LatestChange(); after != latest || err != nil {
		t.Errorf("LatestChange after pruning all: %d %v, want %d", after, err, latest)
	}
	if rest, err := cl.ChangesSince(latest, 10); len(rest) != 0 || err != nil {
		t.Errorf("a reader that had everything: %v %v", rest, err)
	}
	s.PutBinding(b)
	if rest, err := cl.ChangesSince(latest, 10); len(rest) != 1 || rest[0].Seq <= latest || err != nil {
		t.Errorf("a change after pruning: %v %v", rest, err)
	}
}

// changeLogMeta: a meta write (the lookup pepper a leader rotated) is
// logged with its key, after the changes before it, so other replicas read
// the document again; the directory snapshot's own summary is logged as the
// directory change, not as a meta write.
func changeLogMeta(t *testing.T, s Store) {
	cl := changeLogOf(t, s)
	s.PutBinding(db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs"})
	if err := s.PutMeta("lookup_pepper", []byte(`{"current":"x"}`)); err != nil {
		t.Fatal(err)
	}
	s.ReplaceDirectory([]byte(`{}`), PutAll([][3]string{{"email", "d@example.org", "@d:hs"}}))
	cs, err := cl.ChangesSince(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cs {
		got = append(got, string(c.Kind)+" "+c.Address)
	}
	if want := []string{"bind a@example.org", "meta lookup_pepper", "directory "}; !slices.Equal(got, want) {
		t.Errorf("changes %q, want %q", got, want)
	}
}

// changeLogOrder: writers on two handles bind and unbind a few 3PIDs in a
// storm while a follower applies the log as it grows; the follower never
// sees a seq twice or out of order and ends with exactly the stored
// bindings, so no change committed out of seq order was skipped.
func changeLogOrder(t *testing.T, s Store) {
	cl := changeLogOf(t, s)
	handles := []Store{s, second(t, s)}
	const writers, perWriter, threepids = 6, 40, 5
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		h := handles[w%2]
		wg.Go(func() {
			for i := range perWriter {
				addr := fmt.Sprintf("p%d@example.org", (w+i)%threepids)
				mxid := fmt.Sprintf("@w%d:hs", w)
				var err error
				switch i % 3 {
				case 0, 1:
					_, err = h.PutBinding(db.Binding{Medium: "email", Address: addr, MXID: mxid, TS: int64(i)})
				case 2:
					_, err = h.DeleteBinding("email", addr, mxid)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	state := map[string]string{}
	var last int64
	apply := func() int {
		cs, err := cl.ChangesSince(last, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.Seq <= last {
				t.Fatalf("seq %d after %d", c.Seq, last)
			}
			last = c.Seq
			switch c.Kind {
			case db.ChangeBind:
				state[c.Address] = c.MXID
			case db.ChangeUnbind:
				if state[c.Address] != c.MXID {
					t.Errorf("unbind of %s from %s, which the log had bound to %q", c.Address, c.MXID, state[c.Address])
				}
				delete(state, c.Address)
			}
		}
		return len(cs)
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			if apply() == 0 {
				time.Sleep(time.Millisecond) // the writers are between commits
			}
		}
	}
	for apply() > 0 {
	}
	stored := map[string]string{}
	s.ScanBindings(func(m, a, x []byte) error { stored[string(a)] = string(x); return nil })
	if fmt.Sprint(stored) != fmt.Sprint(state) {
		t.Errorf("the follower's view differs from the store:\nfollower %v\nstore    %v", state, stored)
	}
}

// PutAll is a directory snapshot fill that puts recs ({medium, address,
// mxid} each).
func PutAll(recs [][3]string) func(put func(medium, address, mxid string) error) error {
	return func(put func(medium, address, mxid string) error) error {
		for _, r := range recs {
			if err := put(r[0], r[1], r[2]); err != nil {
				return err
			}
		}
		return nil
	}
}

// ScanDirectory reads the whole directory snapshot of s.
func ScanDirectory(t *testing.T, s interface {
	ScanDirectory(fn func(medium, address, mxid []byte) error) error
}) map[[2]string]string {
	t.Helper()
	got := map[[2]string]string{}
	if err := s.ScanDirectory(func(m, a, x []byte) error {
		got[[2]string{string(m), string(a)}] = string(x)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// The directory snapshot is replaced whole or not at all; its summary goes
// with it; a later record for a 3PID replaces an earlier one.
func directorySnapshot(t *testing.T, s Store) {
	if _, ok, err := s.DirectorySummary(); ok || err != nil {
		t.Fatalf("a new store has a snapshot: %v %v", ok, err)
	}
	// Larger than one scan chunk.
	var first [][3]string
	for i := range 45000 {
		first = append(first, [3]string{"email", fmt.Sprintf("user%05d@example.org", i), fmt.Sprintf("@user%05d:example.org", i)})
	}
	first = append(first, [3]string{"msisdn", "442079460000", "@frank:example.org"})
	if err := s.ReplaceDirectory([]byte(`{"n":1}`), PutAll(first)); err != nil {
		t.Fatal(err)
	}
	if got := ScanDirectory(t, s); len(got) != len(first) || got[[2]string{"email", "user44999@example.org"}] != "@user44999:example.org" {
		t.Fatalf("first snapshot: %d records", len(got))
	}
	next := [][3]string{{"email", "new@example.org", "@old:example.org"}, {"msisdn", "442079460000", "@frank:example.org"}, {"email", "new@example.org", "@new:example.org"}}
	if err := s.ReplaceDirectory([]byte(`{"n":2}`), PutAll(next)); err != nil {
		t.Fatal(err)
	}
	// A failing fill leaves the second snapshot as it was.
	boom := errors.New("the directory read broke off")
	err := s.ReplaceDirectory([]byte(`{"n":3}`), func(put func(string, string, string) error) error {
		put("email", "half@example.org", "@half:example.org")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("failing fill: %v", err)
	}
	if err := s.ReplaceDirectory(nil, PutAll([][3]string{{"email", "a\x00b", "@x:y"}})); err == nil {
		t.Error("a NUL in an address was stored")
	}
	got := ScanDirectory(t, s)
	if len(got) != 2 || got[[2]string{"email", "new@example.org"}] != "@new:example.org" || got[[2]string{"msisdn", "442079460000"}] != "@frank:example.org" {
		t.Errorf("second snapshot: %v", got)
	}
	if sum, ok, err := s.DirectorySummary(); string(sum) != `{"n":2}` || !ok || err != nil {
		t.Errorf("summary %q %v %v", sum, ok, err)
	}
	mxids, err := second(t, s).DirectoryMXIDs([][2]string{{"email", "new@example.org"}, {"email", "user00001@example.org"}, {"email", "half@example.org"}, {"msisdn", "442079460000"}})
	if err != nil || fmt.Sprint(mxids) != "[@new:example.org   @frank:example.org]" {
		t.Errorf("DirectoryMXIDs = %q, %v", mxids, err)
	}
	// Dropped: nothing left, no summary.
	if err := s.ReplaceDirectory(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := ScanDirectory(t, s); len(got) != 0 {
		t.Errorf("after drop: %v", got)
	}
	if _, ok, _ := s.DirectorySummary(); ok {
		t.Error("summary kept after drop")
	}
}

// Check (mxid check-db) counts what the store holds and finds nothing wrong
// with a store written only through the contract.
func checkCounts(t *testing.T, s Store) {
	if r, err := s.Check(); err != nil || r.ProblemCount != 0 || r.Bindings+r.Sessions+r.Accounts+r.Invites+r.Queued != 0 {
		t.Fatalf("Check of an empty store: %+v %v", r, err)
	}
	now := time.Unix(1700000000, 0)
	if err := s.CreateAccountToken("tok", "@a:hs.test", now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RequestSession("email", "a@example.org", "cs", func(*db.Session) (db.Session, bool, error) {
		return db.Session{ID: "sid1", Medium: "email", Address: "a@example.org", ClientSecret: "cs", Token: "t", CreatedTS: 1, ModifiedTS: 1}, true, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"inv1", "inv2"} {
		if err := s.PutInvite(db.Invite{Token: tok, Medium: "email", Address: "b@example.org", RoomID: "!r:hs.test", Sender: "@a:hs.test", Ephemeral: "key-" + tok, CreatedTS: 1, ExpiresTS: 1 << 50}); err != nil {
			t.Fatal(err)
		}
	}
	b := db.Binding{Medium: "email", Address: "b@example.org", MXID: "@b:hs.test", TS: 2, NotBefore: 2, NotAfter: 3}
	if _, _, queued, err := s.Bind(b, 0, func([]db.Invite) (string, []byte, error) { return "hs.test", []byte(`{}`), nil }); err != nil || queued == nil {
		t.Fatalf("bind: %v %v", queued, err)
	}
	r, err := s.Check()
	if err != nil || r.ProblemCount != 0 {
		t.Fatalf("Check: %+v %v", r, err)
	}
	if r.Bindings != 1 || r.Sessions != 1 || r.Accounts != 1 || r.Invites != 2 || r.Queued != 1 || r.Schema == 0 {
		t.Errorf("Check counts %+v, want 1 binding, 1 session, 1 account, 2 invites, 1 queued delivery", r)
	}
}

// CreateMeta creates a document once: callers racing on two handles (two
// replicas starting on one database) all get the one value that was
// created, and a later call gets it too.
func createMetaOnce(t *testing.T, s Store) {
	other := second(t, s)
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	created := 0
	for i := range 8 {
		h := s
		if i%2 == 1 {
			h = other
		}
		wg.Go(func() {
			v, made, err := h.CreateMeta("first_value", []byte(fmt.Sprintf("value %d", i)))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[string(v)]++
			if made {
				created++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(seen) != 1 || created != 1 {
		t.Fatalf("CreateMeta racing: %d values seen (%v), %d created; want one value, created once", len(seen), seen, created)
	}
	var want string
	for v := range seen {
		want = v
	}
	if v, made, err := s.CreateMeta("first_value", []byte("late")); err != nil || made || string(v) != want {
		t.Errorf("a later CreateMeta: %q %v %v, want %q", v, made, err, want)
	}
	if v, ok, err := other.GetMeta("first_value"); err != nil || !ok || string(v) != want {
		t.Errorf("GetMeta after CreateMeta: %q %v %v", v, ok, err)
	}
}
