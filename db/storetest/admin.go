package storetest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"mxid/db"
)

// The operator's tools (mxid admin), the audit log and the retention
// sweeps of accounts: the cases Run adds for them.

func adminCases() []struct {
	name string
	fn   func(t *testing.T, s Store)
} {
	return []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"AuditSecretOnce", auditSecretOnce},
		{"AuditLog", auditLog},
		{"UnbindAudited", unbindAudited},
		{"EraseUser", eraseUser},
		{"Erase3PID", erase3PIDCase},
		{"WithdrawInvites", withdrawInvitesCase},
		{"ListInvitesSessionsBindings", listInvitesSessionsBindings},
		{"AdminQueue", adminQueue},
		{"SweepAccounts", sweepAccounts},
	}
}

// auditSecretOnce: the audit log's key, asked for as the server's auditor
// does (CreateMeta of a random key of its own), is made once, whoever asks
// first, even two handles at the same moment; it never changes.
func auditSecretOnce(t *testing.T, s Store) {
	other := second(t, s)
	var wg sync.WaitGroup
	got := make([][]byte, 8)
	for i := range got {
		h := s
		if i%2 == 1 {
			h = other
		}
		wg.Go(func() { got[i] = auditSecret(t, h) })
	}
	wg.Wait()
	for _, k := range got {
		if len(k) != db.AuditSecretSize || !bytes.Equal(k, got[0]) {
			t.Fatalf("keys %x", got)
		}
	}
	if again := auditSecret(t, other); !bytes.Equal(again, got[0]) {
		t.Errorf("asked again: %x, first %x", again, got[0])
	}
	if bytes.Equal(got[0], make([]byte, db.AuditSecretSize)) {
		t.Error("the key is zeros")
	}
}

// auditSecret asks for the audit log's key as the server's auditor does:
// CreateMeta with a random key, which the key already there (if any) wins
// over.
func auditSecret(t *testing.T, s Store) []byte {
	fresh := make([]byte, db.AuditSecretSize)
	rand.Read(fresh)
	k, _, err := s.CreateMeta(db.MetaAuditSecret, fresh)
	if err != nil {
		t.Error(err)
	}
	return k
}

func auditEntryAt(ts int64, action, hash string) db.AuditEntry {
	return db.AuditEntry{TS: ts, Actor: "admin", Action: action, Medium: "email", AddressHash: hash, MXID: "@a:hs.test", Detail: "d"}
}

// auditLog: entries come back oldest first, selected by time and address
// hash; the sweep removes those before its cutoff; bad entries are refused.
func auditLog(t *testing.T, s Store) {
	in := []db.AuditEntry{auditEntryAt(300, "unbind", "h1"), auditEntryAt(100, "unbind", "h1"), auditEntryAt(200, "erase", "h2"), auditEntryAt(200, "queue_drop", "")}
	if err := s.AppendAudit(in...); err != nil {
		t.Fatal(err)
	}
	all, err := s.AuditEntries(db.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	want := []db.AuditEntry{in[1], in[2], in[3], in[0]}
	if !slices.Equal(all, want) {
		t.Errorf("all entries:\n%+v\nwant\n%+v", all, want)
	}
	if got, _ := s.AuditEntries(db.AuditQuery{SinceMS: 200}); !slices.Equal(got, want[1:]) {
		t.Errorf("since 200: %+v", got)
	}
	if got, _ := s.AuditEntries(db.AuditQuery{AddressHash: "h1"}); !slices.Equal(got, []db.AuditEntry{in[1], in[0]}) {
		t.Errorf("of h1: %+v", got)
	}
	if got, _ := s.AuditEntries(db.AuditQuery{AddressHash: "h1", SinceMS: 101}); !slices.Equal(got, []db.AuditEntry{in[0]}) {
		t.Errorf("of h1 since 101: %+v", got)
	}
	if got, _ := s.AuditEntries(db.AuditQuery{Limit: 2}); !slices.Equal(got, want[:2]) {
		t.Errorf("limit 2: %+v", got)
	}
	if got, err := s.AuditEntries(db.AuditQuery{AddressHash: "none"}); len(got) != 0 || err != nil {
		t.Errorf("of an unknown hash: %+v %v", got, err)
	}
	for _, bad := range []db.AuditEntry{{TS: 1, Action: "x"}, {TS: 1, Actor: "admin"}, {Actor: "admin", Action: "x"}} {
		if err := s.AppendAudit(auditEntryAt(400, "unbind", "h3"), bad); err == nil {
			t.Errorf("entry %+v stored", bad)
		}
	}
	if got, _ := s.AuditEntries(db.AuditQuery{SinceMS: 400}); len(got) != 0 {
		t.Errorf("a refused append stored %+v", got)
	}
	if n, err := s.SweepAudit(200); n != 1 || err != nil {
		t.Errorf("sweep before 200: %d %v", n, err)
	}
	if n, err := s.SweepAudit(300); n != 2 || err != nil {
		t.Errorf("sweep before 300: %d %v", n, err)
	}
	if got, _ := s.AuditEntries(db.AuditQuery{}); !slices.Equal(got, []db.AuditEntry{in[0]}) {
		t.Errorf("after the sweeps: %+v", got)
	}
	if c, err := s.Counts(); err != nil || c[db.KindAudit] != 1 {
		t.Errorf("counts %v %v", c, err)
	}
}

// unbindAudited: the entry is written with the removal, and only then.
func unbindAudited(t *testing.T, s Store) {
	b := db.Binding{Medium: "email", Address: "u@example.org", MXID: "@u:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}
	if _, err := s.PutBinding(b); err != nil {
		t.Fatal(err)
	}
	e := auditEntryAt(10, "unbind", "hu")
	if ok, err := s.Unbind("email", "u@example.org", "@someone:hs.test", e); ok || err != nil {
		t.Errorf("another user's unbind: %v %v", ok, err)
	}
	if _, err := s.Unbind("email", "u@example.org", "@u:hs.test", db.AuditEntry{}); err == nil {
		t.Error("an unbind without an audit entry")
	}
	if _, ok, _ := s.BoundMXID("email", "u@example.org"); !ok {
		t.Fatal("a refused unbind removed the binding")
	}
	if ok, err := s.Unbind("email", "u@example.org", "@u:hs.test", e); !ok || err != nil {
		t.Errorf("unbind: %v %v", ok, err)
	}
	if ok, err := s.Unbind("email", "u@example.org", "@u:hs.test", e); ok || err != nil {
		t.Errorf("unbind again: %v %v", ok, err)
	}
	if got, _ := s.AuditEntries(db.AuditQuery{}); !slices.Equal(got, []db.AuditEntry{e}) {
		t.Errorf("entries %+v", got)
	}
	if _, ok, _ := s.BoundMXID("email", "u@example.org"); ok {
		t.Error("still bound")
	}
	if cl, ok := s.(ChangeLog); ok {
		cs, _ := cl.ChangesSince(0, 10)
		if len(cs) != 2 || cs[1].Kind != db.ChangeUnbind || cs[1].Address != "u@example.org" {
			t.Errorf("change log %+v", cs)
		}
	}
}

// eraseUser: a user with three bindings, two pending invites sent, an
// account with terms, sessions and a queued delivery loses all of it in
// one call; other users' data stays; the audit entries come from what was
// removed; a second erasure removes nothing.
func eraseUser(t *testing.T, s Store) {
	const now = int64(1_000_000)
	const user, other = "@erin:hs.test", "@olaf:hs.test"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	invite := func(tok, addr, sender string) db.Invite {
		return db.Invite{Token: tok, Medium: "email", Address: addr, RoomID: "!r:hs.test", Sender: sender, Ephemeral: "eph-" + tok, CreatedTS: now, ExpiresTS: now + 1e9}
	}
	// Invites to Erin's first address (from Olaf), and Erin's own: two
	// pending, one delivered.
	for _, inv := range []db.Invite{
		invite("to-erin", "erin@example.org", other),
		invite("sent-1", "friend1@example.org", user), invite("sent-2", "friend2@example.org", user),
		invite("sent-delivered", "friend3@example.org", user),
		invite("olaf-pending", "friend1@example.org", other),
	} {
		must(s.PutInvite(inv))
	}
	bind := func(medium, addr, mxid string) *db.Job {
		t.Helper()
		b := db.Binding{Medium: medium, Address: addr, MXID: mxid, TS: now, NotBefore: now, NotAfter: now + 1}
		_, _, j, err := s.Bind(b, 0, func([]db.Invite) (string, []byte, error) {
			return "hs.test", fmt.Appendf(nil, `{"medium":%q,"address":%q,"mxid":%q}`, medium, addr, mxid), nil
		})
		must(err)
		return j
	}
	erinJob := bind("email", "erin@example.org", user) // carries to-erin, stays queued
	bind("email", "erin.work@example.org", user)
	bind("msisdn", "447700900123", user)
	friend3Job := bind("email", "friend3@example.org", "@friend3:hs.test")
	must(s.CompleteJob(*friend3Job, now+1)) // sent-delivered is delivered
	bind("email", "olaf@example.org", other)
	if erinJob == nil || len(erinJob.InviteTokens) != 1 {
		t.Fatalf("Erin's delivery %+v", erinJob)
	}
	for _, sess := range []db.Session{
		{ID: "sid-e1", Medium: "email", Address: "erin@example.org", ClientSecret: "cs1", Token: "t", CreatedTS: now, ModifiedTS: now, ValidatedTS: now},
		{ID: "sid-e2", Medium: "email", Address: "erin@example.org", ClientSecret: "cs2", Token: "t", CreatedTS: now, ModifiedTS: now},
		{ID: "sid-o", Medium: "email", Address: "olaf@example.org", ClientSecret: "cs", Token: "t", CreatedTS: now, ModifiedTS: now},
	} {
		_, err := s.RequestSession(sess.Medium, sess.Address, sess.ClientSecret, func(*db.Session) (db.Session, bool, error) { return sess, true, nil })
		must(err)
	}
	must(s.CreateAccountToken("erin-token", user, time.UnixMilli(now)))
	must(s.CreateAccountToken("erin-token-2", user, time.UnixMilli(now)))
	must(s.CreateAccountToken("olaf-token", other, time.UnixMilli(now)))
	must(s.AcceptTerms(user, map[string]string{"privacy": "1", "tos": "1"}))
	must(s.AcceptTerms(other, map[string]string{"privacy": "1"}))

	var seen []db.Erased
	audit := func(e db.Erased) []db.AuditEntry {
		seen = append(seen, e)
		out := []db.AuditEntry{{TS: now, Actor: "admin", Action: "erase", MXID: user, Detail: e.String()}}
		for _, b := range e.Bindings {
			out = append(out, db.AuditEntry{TS: now, Actor: "admin", Action: "erase", MXID: user, Medium: b.Medium, AddressHash: "hash-of-" + b.Address})
		}
		return out
	}
	got, err := s.EraseUser(user, audit)
	if err != nil {
		t.Fatal(err)
	}
	var removed []string
	for _, b := range got.Bindings {
		removed = append(removed, b.Medium+" "+b.Address)
	}
	slices.Sort(removed)
	if want := []string{"email erin.work@example.org", "email erin@example.org", "msisdn 447700900123"}; !slices.Equal(removed, want) {
		t.Errorf("bindings removed %v, want %v", removed, want)
	}
	want := db.Erased{Bindings: got.Bindings, InvitesSent: 2, InvitesReceived: 1, Deliveries: 3, Tokens: 2, Terms: 1, Sessions: 2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("erased %+v, want %+v", got, want)
	}
	if got.String() != "3 bindings, 2 pending invites sent, 1 invite received, 3 queued deliveries, 2 access tokens, 1 terms acceptance, 2 validation sessions" {
		t.Errorf("in words: %s", got)
	}
	// Nothing of Erin's is left; Olaf's data and the delivered invite stay.
	if bs, err := s.BindingsOf(user); len(bs) != 0 || err != nil {
		t.Errorf("bindings left: %v %v", bs, err)
	}
	for _, tok := range []string{"to-erin", "sent-1", "sent-2"} {
		if _, err := s.GetInvite(tok); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("invite %s: %v", tok, err)
		}
	}
	for _, tok := range []string{"sent-delivered", "olaf-pending"} {
		if _, err := s.GetInvite(tok); err != nil {
			t.Errorf("invite %s: %v", tok, err)
		}
	}
	if ok, _ := s.EphemeralKeyExists("eph-sent-1"); ok {
		t.Error("the ephemeral key of a withdrawn invite is still known")
	}
	for _, sid := range []string{"sid-e1", "sid-e2"} {
		if _, err := s.GetSession(sid); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("session %s: %v", sid, err)
		}
	}
	if _, err := s.GetSession("sid-o"); err != nil {
		t.Errorf("Olaf's session: %v", err)
	}
	if _, err := s.AccountByToken("erin-token"); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("Erin's token: %v", err)
	}
	if a, err := s.AccountByToken("olaf-token"); err != nil || a.UserID != other {
		t.Errorf("Olaf's token: %v %v", a, err)
	}
	if terms, _ := s.AcceptedTerms(user); len(terms) != 0 {
		t.Errorf("Erin's terms: %v", terms)
	}
	if terms, _ := s.AcceptedTerms(other); len(terms) != 1 {
		t.Errorf("Olaf's terms: %v", terms)
	}
	jobs, _ := s.Jobs()
	for _, j := range jobs {
		if db.JobOf(j.Body, user, "", "") {
			t.Errorf("Erin's delivery %d is queued", j.ID)
		}
	}
	if len(jobs) != 1 {
		t.Errorf("deliveries left: %+v", jobs)
	}
	if _, ok, _ := s.BoundMXID("email", "olaf@example.org"); !ok {
		t.Error("Olaf's binding went too")
	}
	entries, _ := s.AuditEntries(db.AuditQuery{})
	if len(entries) != 4 || entries[0].Detail != got.String() {
		t.Errorf("audit %+v", entries)
	}
	if cl, ok := s.(ChangeLog); ok {
		cs, _ := cl.ChangesSince(0, 100)
		var unbound []string
		tokensGone := 0
		for _, c := range cs {
			switch c.Kind {
			case db.ChangeUnbind:
				unbound = append(unbound, c.Medium+" "+c.Address)
			case db.ChangeToken:
				tokensGone++
			}
		}
		if tokensGone != 2 {
			t.Errorf("%d removed tokens logged, want Erin's 2: %+v", tokensGone, cs)
		}
		slices.Sort(unbound)
		if !slices.Equal(unbound, removed) {
			t.Errorf("unbinds logged %v, want %v", unbound, removed)
		}
		forgetChanges(t, s, cl, got.Bindings)
	}

	// Idempotent: nothing more to remove; the caller still records it.
	again, err := s.EraseUser(user, audit)
	if err != nil || !again.Empty() || again.String() != "nothing" || len(seen) != 2 {
		t.Errorf("erase again: %+v %v (audit called %d times)", again, err, len(seen))
	}
}

// withdrawInvitesCase: only the invites still pending go; audit is told
// how many.
func withdrawInvitesCase(t *testing.T, s Store) {
	const now = int64(5_000)
	for _, tok := range []string{"p1", "p2", "q"} {
		inv := db.Invite{Token: tok, Medium: "email", Address: tok + "@example.org", RoomID: "!r:hs.test", Sender: "@w:hs.test", Ephemeral: "e-" + tok, CreatedTS: now, ExpiresTS: now + 1000}
		if err := s.PutInvite(inv); err != nil {
			t.Fatal(err)
		}
	}
	b := db.Binding{Medium: "email", Address: "q@example.org", MXID: "@q:hs.test", TS: now}
	if _, _, j, err := s.Bind(b, 0, func([]db.Invite) (string, []byte, error) { return "hs.test", []byte(`{}`), nil }); err != nil || j == nil {
		t.Fatalf("bind: %v %v", j, err)
	}
	var told []int
	audit := func(n int) []db.AuditEntry {
		told = append(told, n)
		if n == 0 {
			return nil
		}
		return []db.AuditEntry{{TS: now, Actor: "hs.test", Action: "withdraw_invites", MXID: "@w:hs.test", Detail: fmt.Sprint(n)}}
	}
	if n, err := s.WithdrawInvites("@w:hs.test", audit); n != 2 || err != nil {
		t.Errorf("withdraw: %d %v", n, err)
	}
	if _, err := s.GetInvite("q"); err != nil {
		t.Errorf("the queued invite: %v", err)
	}
	if n, err := s.WithdrawInvites("@w:hs.test", audit); n != 0 || err != nil {
		t.Errorf("withdraw again: %d %v", n, err)
	}
	if entries, _ := s.AuditEntries(db.AuditQuery{}); len(entries) != 1 || !slices.Equal(told, []int{2, 0}) {
		t.Errorf("audit %+v, told %v", entries, told)
	}
}

// listInvitesSessionsBindings: the reads of mxid admin show and invites.
func listInvitesSessionsBindings(t *testing.T, s Store) {
	for i, inv := range []db.Invite{
		{Token: "b", Medium: "email", Address: "x@example.org", Sender: "@s1:hs.test", CreatedTS: 20},
		{Token: "a", Medium: "email", Address: "x@example.org", Sender: "@s2:hs.test", CreatedTS: 20},
		{Token: "c", Medium: "email", Address: "y@example.org", Sender: "@s1:hs.test", CreatedTS: 10},
	} {
		inv.RoomID, inv.Ephemeral, inv.ExpiresTS = "!r:hs.test", fmt.Sprint("e", i), 100
		if err := s.PutInvite(inv); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		f    db.InviteFilter
		want []string
	}{
		{db.InviteFilter{}, []string{"c", "a", "b"}},
		{db.InviteFilter{Medium: "email", Address: "x@example.org"}, []string{"a", "b"}},
		{db.InviteFilter{Medium: "email", Address: "nobody@example.org"}, nil},
		{db.InviteFilter{Sender: "@s1:hs.test"}, []string{"c", "b"}},
		{db.InviteFilter{Medium: "email", Address: "x@example.org", Sender: "@s1:hs.test"}, []string{"b"}},
	} {
		got, err := s.Invites(c.f)
		if err != nil || !slices.Equal(tokens(got), c.want) {
			t.Errorf("Invites(%+v) = %v %v, want %v", c.f, tokens(got), err, c.want)
		}
	}
	for _, sess := range []db.Session{
		{ID: "s2", Medium: "email", Address: "x@example.org", ClientSecret: "c2", Token: "t", CreatedTS: 2, ModifiedTS: 2},
		{ID: "s1", Medium: "email", Address: "x@example.org", ClientSecret: "c1", Token: "t", CreatedTS: 1, ModifiedTS: 1},
		{ID: "s3", Medium: "email", Address: "x@example.orgg", ClientSecret: "c1", Token: "t", CreatedTS: 1, ModifiedTS: 1},
	} {
		if _, err := s.RequestSession(sess.Medium, sess.Address, sess.ClientSecret, func(*db.Session) (db.Session, bool, error) { return sess, true, nil }); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.SessionsOf("email", "x@example.org")
	if err != nil || len(got) != 2 || got[0].ID != "s1" || got[1].ID != "s2" {
		t.Errorf("SessionsOf: %+v %v", got, err)
	}
	if got, err := s.SessionsOf("msisdn", "x@example.org"); len(got) != 0 || err != nil {
		t.Errorf("SessionsOf another medium: %+v %v", got, err)
	}
	s.PutBindings([]db.Binding{
		{Medium: "msisdn", Address: "15550001", MXID: "@b:hs.test"},
		{Medium: "email", Address: "b@example.org", MXID: "@b:hs.test"},
		{Medium: "email", Address: "bb@example.org", MXID: "@bb:hs.test"},
	}, 0)
	bs, err := s.BindingsOf("@b:hs.test")
	if err != nil || len(bs) != 2 || bs[0].Address != "b@example.org" || bs[1].Address != "15550001" {
		t.Errorf("BindingsOf: %+v %v", bs, err)
	}
	if bs, err := s.BindingsOf("@nobody:hs.test"); len(bs) != 0 || err != nil {
		t.Errorf("BindingsOf nobody: %+v %v", bs, err)
	}
}

// adminQueue: list, read, retry now with a fresh count, drop (the invites
// go back to pending); unknown ids are ErrNotFound and write no entry.
func adminQueue(t *testing.T, s Store) {
	const now = int64(9_000)
	inv := db.Invite{Token: "qi", Medium: "email", Address: "q@example.org", RoomID: "!r:hs.test", Sender: "@s:hs.test", Ephemeral: "e", CreatedTS: now, ExpiresTS: now + 1000}
	if err := s.PutInvite(inv); err != nil {
		t.Fatal(err)
	}
	var jobs []*db.Job
	for _, addr := range []string{"q@example.org", "r@example.org"} {
		b := db.Binding{Medium: "email", Address: addr, MXID: "@q:hs.test", TS: now}
		_, _, j, err := s.Bind(b, 0, func([]db.Invite) (string, []byte, error) { return "hs.test", []byte(`{"mxid":"@q:hs.test"}`), nil })
		if err != nil || j == nil {
			t.Fatalf("bind: %v %v", j, err)
		}
		jobs = append(jobs, j)
	}
	if err := s.RetryJob(*jobs[0], now+500, "refused"); err != nil {
		t.Fatal(err)
	}
	list, err := s.Jobs()
	if err != nil || len(list) != 2 || list[0].ID != jobs[1].ID || list[1].ID != jobs[0].ID || list[1].Attempts != 1 || list[1].LastError != "refused" {
		t.Fatalf("Jobs: %+v %v", list, err)
	}
	if j, err := s.GetJob(jobs[0].ID); err != nil || j.DueTS != now+500 || !slices.Equal(j.InviteTokens, []string{"qi"}) {
		t.Errorf("GetJob: %+v %v", j, err)
	}
	e := db.AuditEntry{TS: now, Actor: "admin", Action: "queue_retry", Detail: "job"}
	j, err := s.RescheduleJob(jobs[0].ID, now+1, e)
	if err != nil || j.DueTS != now+1 || j.Attempts != 0 || j.ID != jobs[0].ID {
		t.Errorf("RescheduleJob: %+v %v", j, err)
	}
	if due, err := s.DueJobs(now+1, 10); err != nil || len(due) != 2 {
		t.Errorf("due after the retry: %+v %v", due, err)
	}
	for _, id := range []uint64{jobs[0].ID, jobs[1].ID} { // give the claims back
		j, _ := s.GetJob(id)
		s.RetryJob(j, now+1, "")
	}
	d := db.AuditEntry{TS: now, Actor: "admin", Action: "queue_drop", Detail: "job"}
	dropped, err := s.DropJobByID(jobs[0].ID, d)
	if err != nil || dropped.ID != jobs[0].ID {
		t.Errorf("DropJobByID: %+v %v", dropped, err)
	}
	if got, _ := s.GetInvite("qi"); got.QueuedJob != 0 {
		t.Errorf("the dropped delivery's invite is not pending: %+v", got)
	}
	if _, err := s.GetJob(jobs[0].ID); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("GetJob of a dropped job: %v", err)
	}
	if _, err := s.RescheduleJob(jobs[0].ID, now, e); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("retry of a dropped job: %v", err)
	}
	if _, err := s.DropJobByID(12345, d); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("drop of an unknown job: %v", err)
	}
	if entries, _ := s.AuditEntries(db.AuditQuery{}); len(entries) != 2 || entries[0].Action != "queue_retry" || entries[1].Action != "queue_drop" {
		t.Errorf("audit %+v", entries)
	}
}

// sweepAccounts: tokens idle since before the cutoff go (their last use,
// else their creation), and then the terms of users who hold no token; a
// cutoff of 0 removes no token.
func sweepAccounts(t *testing.T, s Store) {
	for _, a := range []struct {
		token, user string
		created     int64
	}{{"old", "@old:hs.test", 100}, {"new", "@new:hs.test", 300}, {"mixed-old", "@mixed:hs.test", 100}, {"mixed-new", "@mixed:hs.test", 300},
		{"old-but-used", "@used:hs.test", 100}} {
		if err := s.CreateAccountToken(a.token, a.user, time.UnixMilli(a.created)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.TouchAccountToken("old-but-used", 250); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchAccountToken("old-but-used", 240); err != nil { // an older use changes nothing
		t.Fatal(err)
	}
	if err := s.TouchAccountToken("nobody's", 250); err != nil {
		t.Errorf("touching an unknown token: %v", err)
	}
	if a, err := s.AccountByToken("old-but-used"); err != nil || a.UsedTS != 250 || a.CreatedTS != 100 || a.LastActive() != 250 {
		t.Errorf("a used token: %+v %v", a, err)
	}
	for _, u := range []string{"@old:hs.test", "@new:hs.test", "@mixed:hs.test", "@loggedout:hs.test", "@used:hs.test"} {
		if err := s.AcceptTerms(u, map[string]string{"privacy": "1", "tos": "2"}); err != nil {
			t.Fatal(err)
		}
	}
	if tokens, terms, err := s.SweepAccounts(0); tokens != 0 || terms != 1 || err != nil {
		t.Errorf("sweep with no token lifetime: %d tokens, %d terms, %v", tokens, terms, err)
	}
	if tokens, terms, err := s.SweepAccounts(200); tokens != 2 || terms != 1 || err != nil {
		t.Errorf("sweep before 200: %d tokens, %d terms, %v", tokens, terms, err)
	}
	for tok, ok := range map[string]bool{"old": false, "mixed-old": false, "new": true, "mixed-new": true, "old-but-used": true} {
		if _, err := s.AccountByToken(tok); (err == nil) != ok {
			t.Errorf("token %s: %v", tok, err)
		}
	}
	for u, n := range map[string]int{"@old:hs.test": 0, "@loggedout:hs.test": 0, "@new:hs.test": 2, "@mixed:hs.test": 2, "@used:hs.test": 2} {
		if got, _ := s.AcceptedTerms(u); len(got) != n {
			t.Errorf("terms of %s: %v", u, got)
		}
	}
	if tokens, terms, err := s.SweepAccounts(200); tokens+terms != 0 || err != nil {
		t.Errorf("sweep again: %d %d %v", tokens, terms, err)
	}
	if tokens, _, err := s.SweepAccounts(251); tokens != 1 || err != nil {
		t.Errorf("sweep after the use: %d %v", tokens, err)
	}
}

// forgetChanges: once forgotten, an erased 3PID is nowhere in the change
// log; a reader from before the erasure finds the log pruned (and
// rebuilds), one from after it reads on; a later bind of the 3PID is kept.
func forgetChanges(t *testing.T, s Store, cl ChangeLog, erased []db.Binding) {
	before, _ := cl.LatestChange()
	rebound := db.Binding{Medium: erased[0].Medium, Address: erased[0].Address, MXID: "@next:hs.test", TS: 1}
	if _, err := s.PutBinding(rebound); err != nil {
		t.Fatal(err)
	}
	var tps [][2]string
	for _, b := range erased {
		tps = append(tps, [2]string{b.Medium, b.Address})
	}
	n, err := cl.ForgetChanges(tps)
	if err != nil || n != 2*len(erased) { // each one's bind and unbind
		t.Fatalf("ForgetChanges: %d %v", n, err)
	}
	if _, err := cl.ChangesSince(0, 100); !errors.Is(err, db.ErrChangesPruned) {
		t.Errorf("a reader from the start: %v", err)
	}
	cs, err := cl.ChangesSince(before, 100)
	if err != nil || len(cs) != 1 || cs[0].MXID != "@next:hs.test" {
		t.Errorf("a reader from the erasure on: %+v %v", cs, err)
	}
	if latest, _ := cl.LatestChange(); latest != cs[0].Seq {
		t.Errorf("latest %d", latest)
	}
	if n, err := cl.ForgetChanges(tps[1:]); n != 0 || err != nil {
		t.Errorf("forget again: %d %v", n, err)
	}
}

// erase3PIDCase: erasing an address removes its binding whoever holds it,
// the invites to it, the deliveries about it and its sessions, and nothing
// of the user's other data; an address already unbound (a homeserver's
// unbind) still has its leftovers removed.
func erase3PIDCase(t *testing.T, s Store) {
	const now = int64(2_000_000)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	inv := func(tok, addr string) db.Invite {
		return db.Invite{Token: tok, Medium: "email", Address: addr, RoomID: "!r:hs.test", Sender: "@x:hs.test", Ephemeral: "e-" + tok, CreatedTS: now, ExpiresTS: now + 1e9}
	}
	must(s.PutInvite(inv("to-a", "a@example.org")))
	must(s.PutInvite(inv("to-b", "b@example.org")))
	must(s.PutInvite(inv("to-c", "c@example.org")))
	for _, addr := range []string{"a@example.org", "b@example.org"} {
		b := db.Binding{Medium: "email", Address: addr, MXID: "@x:hs.test", TS: now, NotBefore: now, NotAfter: now + 1}
		_, _, _, err := s.Bind(b, 0, func([]db.Invite) (string, []byte, error) {
			return "hs.test", fmt.Appendf(nil, `{"medium":"email","address":%q,"mxid":"@x:hs.test"}`, addr), nil
		})
		must(err)
		sess := db.Session{ID: "sid-" + addr, Medium: "email", Address: addr, ClientSecret: "cs", Token: "t", CreatedTS: now, ModifiedTS: now, ValidatedTS: now}
		_, err = s.RequestSession("email", addr, "cs", func(*db.Session) (db.Session, bool, error) { return sess, true, nil })
		must(err)
	}
	must(s.CreateAccountToken("x-token", "@x:hs.test", time.UnixMilli(now)))
	// b@example.org: unbound by its homeserver before; the rest stays.
	if ok, err := s.DeleteBinding("email", "b@example.org", "@x:hs.test"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	var calls int
	audit := func(e db.Erased) []db.AuditEntry {
		calls++
		return []db.AuditEntry{{TS: now, Actor: "admin", Action: "erase", Medium: "email", AddressHash: "h", Detail: e.String()}}
	}
	got, err := s.Erase3PID("email", "a@example.org", audit)
	if err != nil || len(got.Bindings) != 1 || got.Bindings[0].MXID != "@x:hs.test" || got.InvitesReceived != 1 || got.Deliveries != 1 || got.Sessions != 1 ||
		got.InvitesSent+got.Tokens+got.Terms != 0 {
		t.Errorf("erase a@: %+v %v", got, err)
	}
	got, err = s.Erase3PID("email", "b@example.org", audit)
	if err != nil || len(got.Bindings) != 0 || got.InvitesReceived != 1 || got.Deliveries != 1 || got.Sessions != 1 {
		t.Errorf("erase the unbound b@: %+v %v", got, err)
	}
	if got, err = s.Erase3PID("email", "b@example.org", audit); err != nil || !got.Empty() || calls != 3 {
		t.Errorf("erase b@ again: %+v %v", got, err)
	}
	if _, err := s.GetInvite("to-c"); err != nil {
		t.Errorf("an invite to another address: %v", err)
	}
	if _, err := s.AccountByToken("x-token"); err != nil {
		t.Errorf("the user's token: %v", err)
	}
	if jobs, _ := s.Jobs(); len(jobs) != 0 {
		t.Errorf("deliveries left %+v", jobs)
	}
	for _, addr := range []string{"a@example.org", "b@example.org"} {
		if ss, _ := s.SessionsOf("email", addr); len(ss) != 0 {
			t.Errorf("sessions of %s: %+v", addr, ss)
		}
	}
	if es, _ := s.AuditEntries(db.AuditQuery{AddressHash: "h"}); len(es) != 3 {
		t.Errorf("audit %+v", es)
	}
}
