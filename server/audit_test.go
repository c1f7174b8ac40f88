package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"mxid/db"
	"mxid/server/signing"
)

// auditFields is every field of an audit entry as text: what a leaked log
// would show.
func auditFields(e db.AuditEntry) string {
	raw, _ := json.Marshal(e)
	return string(raw)
}

// noAddressIn fails when any field of any entry holds one of the
// addresses.
func noAddressIn(t *testing.T, entries []db.AuditEntry, addresses ...string) {
	t.Helper()
	for _, e := range entries {
		for _, a := range addresses {
			if f := auditFields(e); strings.Contains(f, a) {
				t.Errorf("audit entry names %s: %s", a, f)
			}
		}
	}
}

// The homeserver side of an erasure: when Synapse deactivates a user it
// sends one signed unbind per 3PID. After the sequence no binding of the
// user remains, the invites it sent that were still pending are gone (the
// delivered one stays with its room), every step is in the audit log with
// the homeserver as actor, and no entry holds an address. A retried unbind
// changes nothing and writes nothing.
func TestDeactivationByHomeserver(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		clock := newManualClock()
		hs := newSigningHS(t, "hs.test", clock)
		m := NewMetrics(nil)
		cfg := DefaultConfig()
		cfg.Outbound.Pins = map[string]string{"hs.test": hs.ts.URL}
		cfg.Outbound.CAFile = writeServerCertsPEM(t, hs.ts)
		store := be.open(t)
		e := startTestEnv(t, cfg, store, func(d *Deps) { d.Metrics = m })
		hs.doc = func() any { return hs.keyDoc(hs.key, e.clock.Now().Add(time.Hour)) }
		now := e.clock.Now().UnixMilli()

		const erin = "@erin:hs.test"
		addrs := []string{"erin@example.org", "erin.work@example.org", "erin.old@example.org"}
		for _, a := range addrs {
			if _, err := store.PutBinding(db.Binding{Medium: "email", Address: a, MXID: erin, TS: now, NotBefore: now, NotAfter: now + 1e9}); err != nil {
				t.Fatal(err)
			}
		}
		invite := func(tok, to, sender string) {
			t.Helper()
			eph, _ := signing.NewKey(signing.LongTermKeyID)
			if err := store.PutInvite(db.Invite{Token: tok, Medium: "email", Address: to, RoomID: "!r:hs.test", Sender: sender,
				Ephemeral: signing.EncodeBase64URL(eph.Public()), CreatedTS: now, ExpiresTS: now + 1e9}); err != nil {
				t.Fatal(err)
			}
		}
		invite("p1", "friend1@example.org", erin)
		invite("p2", "friend2@example.org", erin)
		invite("d1", "friend3@example.org", erin)
		invite("other", "friend1@example.org", "@olaf:hs.test")
		if _, err := e.srv.bind(context.Background(), "email", "friend3@example.org", "@friend3:hs.test", 0); err != nil {
			t.Fatal(err)
		}
		jobs, _ := store.Jobs()
		if err := store.CompleteJob(jobs[0], now); err != nil { // d1 delivered
			t.Fatal(err)
		}

		const uri = "/_matrix/identity/v2/3pid/unbind"
		unbind := func(address string) *response {
			t.Helper()
			body := map[string]any{"mxid": erin, "threepid": map[string]any{"medium": "email", "address": address}}
			req, _ := http.NewRequest("POST", e.http.URL+uri, requestBody(t, body))
			req.Header.Set("Authorization", xMatrixHeader(hs.key, "hs.test", "destination_is", cfg.ServerName, "POST", uri, body))
			return e.send(req)
		}
		pending := func() []string {
			invs, _ := store.Invites(db.InviteFilter{Sender: erin})
			var out []string
			for _, inv := range invs {
				out = append(out, inv.Token)
			}
			slices.Sort(out)
			return out
		}
		for i, a := range addrs {
			unbind(a).expect(t, "signed unbind of "+a, 200, "")
			if i < len(addrs)-1 && !slices.Equal(pending(), []string{"d1", "p1", "p2"}) {
				t.Errorf("after %d of 3 unbinds the invites sent are %v", i+1, pending())
			}
		}
		if bs, _ := store.BindingsOf(erin); len(bs) != 0 {
			t.Errorf("bindings left after the deactivation: %+v", bs)
		}
		if got := pending(); !slices.Equal(got, []string{"d1"}) {
			t.Errorf("invites sent left: %v, want only the delivered d1", got)
		}
		if _, err := store.GetInvite("other"); err != nil {
			t.Errorf("another user's invite: %v", err)
		}
		unbind(addrs[0]).expect(t, "retried unbind", 200, "")

		entries, _ := store.AuditEntries(db.AuditQuery{})
		if len(entries) != 4 {
			t.Fatalf("audit log: %d entries, want 3 unbinds and the withdrawal:\n%+v", len(entries), entries)
		}
		for i, a := range addrs {
			want, _ := e.srv.admin.audit.hash("email", a)
			if x := entries[i]; x.Actor != "hs.test" || x.Action != "unbind" || x.MXID != erin || x.Medium != "email" || x.AddressHash != want || x.TS != now {
				t.Errorf("entry %d: %+v", i, x)
			}
		}
		if x := entries[3]; x.Actor != "hs.test" || x.Action != "withdraw_invites" || x.MXID != erin || !strings.HasPrefix(x.Detail, "2 pending invites") {
			t.Errorf("withdrawal entry: %+v", x)
		}
		noAddressIn(t, entries, append(addrs, "friend1@example.org", "friend2@example.org")...)
		// The operator finds each step by asking with the address.
		for _, a := range addrs {
			if got, err := e.srv.admin.Audit(0, a); err != nil || len(got) != 1 || got[0].Actor != "hs.test" {
				t.Errorf("audit of %s: %+v %v", a, got, err)
			}
		}
		if logged := e.logs(); strings.Contains(logged, "erin@") || strings.Contains(logged, "friend1@") {
			t.Errorf("the log names an address:\n%s", logged)
		}
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for _, want := range []string{`mxid_unbinds_total{by="homeserver"} 3`, `mxid_erasures_total{by="homeserver"} 1`, `mxid_erased_records_total{kind="invites_sent"} 2`} {
			if !strings.Contains(rec.Body.String(), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
}

// An unbind by a validated session is audited with the user as actor; a
// homeserver's unbind of a user who still has bindings withdraws nothing.
func TestUnbindBySessionAudited(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		e := newTestEnvOn(t, be, nil)
		tok := e.register("@sam:hs.test")
		now := e.clock.Now().UnixMilli()
		const addr = "sam@example.org"
		sess := db.Session{ID: "sidsam", Medium: "email", Address: addr, ClientSecret: "secret", Token: "t", CreatedTS: now, ModifiedTS: now, ValidatedTS: now}
		if _, err := e.store.RequestSession("email", addr, "secret", func(*db.Session) (db.Session, bool, error) { return sess, true, nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := e.srv.bind(context.Background(), "email", addr, "@sam:hs.test", now); err != nil {
			t.Fatal(err)
		}
		body := map[string]any{"sid": "sidsam", "client_secret": "secret", "mxid": "@sam:hs.test", "threepid": map[string]any{"medium": "email", "address": "Sam@Example.org"}}
		e.request("POST", "/_matrix/identity/v2/3pid/unbind", body, tok).expect(t, "unbind by session", 200, "")
		e.request("POST", "/_matrix/identity/v2/3pid/unbind", body, tok).expect(t, "again", 200, "")
		entries, _ := e.store.AuditEntries(db.AuditQuery{})
		h, _ := e.srv.admin.audit.hash("email", addr)
		if len(entries) != 1 || entries[0].Actor != "@sam:hs.test" || entries[0].Action != "unbind" || entries[0].AddressHash != h {
			t.Errorf("audit %+v", entries)
		}
		noAddressIn(t, entries, addr)
	})
}

// adminCall asks the admin socket's handler (as mxid admin does). A list
// answer is in raw only.
func adminCall(t *testing.T, e *testEnv, method, path string, body any) *response {
	t.Helper()
	ts := httptest.NewServer(e.srv.adminServer().Handler)
	defer ts.Close()
	req, _ := http.NewRequest(method, ts.URL+path, requestBody(t, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := &response{status: resp.StatusCode, header: resp.Header}
	r.raw, _ = io.ReadAll(resp.Body)
	json.Unmarshal(r.raw, &r.body)
	return r
}

// The admin actions over the socket's handler: answers, clear refusals,
// audit entries for every change, nothing about addresses in the log.
func TestAdminActions(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		hs := newOnbindHS(t, 500, 500, 500, 500, 500)
		cfg := DefaultConfig()
		cfg.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		m := NewMetrics(nil)
		e := startTestEnv(t, cfg, be.open(t), func(d *Deps) { d.Metrics = m })
		ctx := context.Background()
		storeTestInvite(t, e, "tok", "ann@example.org")
		if _, err := e.srv.bind(ctx, "email", "ann@example.org", "@ann:hs.test", 0); err != nil {
			t.Fatal(err)
		}
		if _, err := e.srv.bind(ctx, "msisdn", "447700900123", "@ann:hs.test", 0); err != nil {
			t.Fatal(err)
		}
		e.srv.deliverDue(ctx) // fails: both deliveries stay queued

		r := adminCall(t, e, "GET", "/admin/show?address=Ann@Example.ORG", nil)
		r.expect(t, "show", 200, "")
		var show ShowResult
		json.Unmarshal(r.raw, &show)
		if show.Medium != "email" || show.Address != "ann@example.org" || len(show.Bindings) != 1 || show.Bindings[0].MXID != "@ann:hs.test" ||
			show.Bindings[0].Source != "local" || len(show.Invites) != 1 || show.Invites[0].State != "queued" {
			t.Errorf("show: %s", r.raw)
		}
		if strings.Contains(string(r.raw), `"tok"`) || strings.Contains(string(r.raw), "token") {
			t.Errorf("show tells an invite's token: %s", r.raw)
		}
		adminCall(t, e, "GET", "/admin/show?address=%2B44%207700%20900123", nil).expect(t, "show a phone number", 200, "")
		adminCall(t, e, "GET", "/admin/show?address=nobody@example.org", nil).expect(t, "show unknown", 404, "M_NOT_FOUND")
		adminCall(t, e, "GET", "/admin/show?address=ann", nil).expect(t, "show garbage", 400, "M_INVALID_PARAM")
		adminCall(t, e, "GET", "/admin/show", nil).expect(t, "show nothing", 400, "M_MISSING_PARAMS")

		r = adminCall(t, e, "GET", "/admin/queue", nil)
		var jobs []JobView
		json.Unmarshal(r.raw, &jobs)
		if len(jobs) != 2 || jobs[0].MXID != "@ann:hs.test" || jobs[0].Attempts != 1 {
			t.Fatalf("queue: %s", r.raw)
		}
		adminCall(t, e, "POST", "/admin/queue/retry", map[string]any{"id": jobs[0].ID}).expect(t, "retry", 200, "")
		if j, _ := e.store.Jobs(); j[0].Attempts != 0 || j[0].DueTS != e.clock.Now().UnixMilli() {
			t.Errorf("after retry: %+v", j[0])
		}
		adminCall(t, e, "POST", "/admin/queue/drop", map[string]any{"id": jobs[1].ID}).expect(t, "drop", 200, "")
		adminCall(t, e, "POST", "/admin/queue/drop", map[string]any{"id": jobs[1].ID}).expect(t, "drop again", 404, "M_NOT_FOUND")
		adminCall(t, e, "POST", "/admin/queue/retry", map[string]any{"id": -3}).expect(t, "retry -3", 400, "M_INVALID_PARAM")
		adminCall(t, e, "POST", "/admin/queue/retry", `{"id":`).expect(t, "retry bad JSON", 400, "M_NOT_JSON")

		r = adminCall(t, e, "GET", "/admin/stats", nil)
		var st StatsResult
		json.Unmarshal(r.raw, &st)
		if st.Counts["bindings"] != 2 || st.QueueDepth != 1 || st.IndexEntries == nil || *st.IndexEntries != 2 || st.PepperAgeSeconds == nil {
			t.Errorf("stats: %s", r.raw)
		}

		adminCall(t, e, "POST", "/admin/unbind", map[string]any{"address": "+447700900123"}).expect(t, "unbind", 200, "")
		adminCall(t, e, "POST", "/admin/unbind", map[string]any{"address": "+447700900123"}).expect(t, "unbind again", 404, "M_NOT_FOUND")
		adminCall(t, e, "POST", "/admin/erase", map[string]any{"subject": "@ann"}).expect(t, "erase a bad user", 400, "M_INVALID_PARAM")
		r = adminCall(t, e, "POST", "/admin/erase", map[string]any{"subject": "@ann:hs.test"})
		r.expect(t, "erase", 200, "")
		var er EraseResult
		json.Unmarshal(r.raw, &er)
		if len(er.Removed.Bindings) != 1 || er.Removed.InvitesReceived != 1 || er.Removed.Deliveries != 1 || !strings.HasPrefix(er.Traces, "scrubbed") && !strings.HasPrefix(er.Traces, "change log forgotten") {
			t.Errorf("erase: %s", r.raw)
		}
		r = adminCall(t, e, "POST", "/admin/erase", map[string]any{"subject": "@ann:hs.test"})
		if r.expect(t, "erase again", 200, ""); !strings.Contains(string(r.raw), `"bindings":[]`) {
			t.Errorf("erase again: %s", r.raw)
		}

		r = adminCall(t, e, "GET", "/admin/audit?address=ann@example.org", nil)
		var entries []db.AuditEntry
		json.Unmarshal(r.raw, &entries)
		if len(entries) != 1 || entries[0].Action != "erase" || entries[0].Actor != "admin" || entries[0].MXID != "@ann:hs.test" {
			t.Errorf("audit of the address: %s", r.raw)
		}
		all, _ := e.store.AuditEntries(db.AuditQuery{})
		var actions []string
		for _, x := range all {
			actions = append(actions, x.Action)
		}
		if want := []string{"queue_retry", "queue_drop", "unbind", "erase", "erase", "erase"}; !slices.Equal(actions, want) {
			t.Errorf("audit actions %v, want %v", actions, want)
		}
		noAddressIn(t, all, "ann@example.org", "447700900123")
		adminCall(t, e, "GET", "/admin/audit?since=x", nil).expect(t, "audit since x", 400, "M_INVALID_PARAM")
		if logged := e.logs(); strings.Contains(logged, "ann@") || strings.Contains(logged, "900123") {
			t.Errorf("the log names an address:\n%s", logged)
		}
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		for _, want := range []string{`mxid_admin_actions_total{action="show",outcome="ok"} 2`, `mxid_admin_actions_total{action="show",outcome="refused"} 2`,
			`mxid_admin_actions_total{action="erase",outcome="ok"} 2`, `mxid_admin_actions_total{action="queue_drop",outcome="refused"} 1`,
			`mxid_unbinds_total{by="admin"} 1`, `mxid_unbinds_total{by="erase"} 1`, `mxid_erasures_total{by="admin"} 2`, `mxid_erased_records_total{kind="bindings"} 1`} {
			if !strings.Contains(rec.Body.String(), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
}

// What mxid stores, and for how long (README "What mxid stores"): each
// lifetime is the sweep's, measured on the injected clock, one millisecond
// either side.
func TestRetentionSweeps(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		e := newTestEnvOn(t, be, func(c *Config) {
			c.Audit.Retention = 30 * 24 * time.Hour
			c.Accounts.TokenLifetime = 90 * 24 * time.Hour
			c.Invites.Lifetime = 7 * 24 * time.Hour
		})
		t0 := e.clock.Now()
		ms := t0.UnixMilli()
		st := e.store
		tok := e.register("@old:hs.test")
		if err := st.AcceptTerms("@old:hs.test", map[string]string{"privacy": "1"}); err != nil {
			t.Fatal(err)
		}
		// A session validated but never bound, and one never validated.
		for _, sess := range []db.Session{
			{ID: "validated", Medium: "email", Address: "v@example.org", ClientSecret: "c", Token: "t", CreatedTS: ms, ModifiedTS: ms, ValidatedTS: ms},
			{ID: "open", Medium: "email", Address: "o@example.org", ClientSecret: "c", Token: "t", CreatedTS: ms, ModifiedTS: ms},
		} {
			if _, err := st.RequestSession(sess.Medium, sess.Address, "c", func(*db.Session) (db.Session, bool, error) { return sess, true, nil }); err != nil {
				t.Fatal(err)
			}
		}
		storeTestInviteFor(t, e, "inv", "i@example.org", 7*24*time.Hour)
		if _, err := e.srv.admin.unbind("email", "none@example.org", "@x:hs.test", actorAdmin); err != nil { // writes nothing
			t.Fatal(err)
		}
		if err := st.AppendAudit(db.AuditEntry{TS: ms, Actor: "admin", Action: "erase", MXID: "@gone:hs.test"}); err != nil {
			t.Fatal(err)
		}

		sweep := func() {
			t.Helper()
			e.srv.sweepRetention()
			if _, err := e.srv.sweepSessions(); err != nil {
				t.Fatal(err)
			}
			if _, err := st.SweepInvites(e.clock.Now().UnixMilli()); err != nil {
				t.Fatal(err)
			}
		}
		type kept struct {
			sessions, invites, audit, tokens int
		}
		count := func() kept {
			c, _ := st.Counts()
			return kept{c[db.KindSessions], c[db.KindInvites], c[db.KindAudit], c[db.KindAccounts]}
		}
		at := func(d time.Duration, want kept) {
			t.Helper()
			e.clock.Advance(t0.Add(d).Sub(e.clock.Now()))
			sweep()
			if got := count(); got != want {
				t.Errorf("at t0+%v: %+v, want %+v", d, got, want)
			}
		}
		at(0, kept{2, 1, 1, 1})
		at(SessionKept, kept{2, 1, 1, 1})
		at(SessionKept+time.Millisecond, kept{0, 1, 1, 1}) // sessions: 48 h after their last change, bound or not
		at(7*24*time.Hour-time.Millisecond, kept{0, 1, 1, 1})
		at(7*24*time.Hour, kept{0, 0, 1, 1}) // invites: their lifetime
		at(30*24*time.Hour, kept{0, 0, 1, 1})
		at(30*24*time.Hour+time.Millisecond, kept{0, 0, 0, 1}) // audit entries: [audit] retention
		if terms, _ := st.AcceptedTerms("@old:hs.test"); len(terms) != 1 {
			t.Errorf("terms of a user holding a token: %v", terms)
		}
		// The token is used at t0+60d (an authenticated request records it,
		// once a day): it is kept 90 days from then.
		at(60*24*time.Hour, kept{0, 0, 0, 1})
		e.request("GET", "/_matrix/identity/v2/account", nil, tok).expect(t, "account", 200, "")
		e.clock.Advance(time.Hour)
		e.request("GET", "/_matrix/identity/v2/account", nil, tok).expect(t, "account again", 200, "")
		if a, _ := st.AccountByToken(tok); a.UsedTS != t0.Add(60*24*time.Hour).UnixMilli() {
			t.Errorf("the token's use: %+v (recorded once a day)", a)
		}
		at(90*24*time.Hour+time.Millisecond, kept{0, 0, 0, 1})
		at(150*24*time.Hour, kept{0, 0, 0, 1})
		at(150*24*time.Hour+time.Millisecond, kept{0, 0, 0, 0}) // tokens: [accounts] token_lifetime without use
		if terms, _ := st.AcceptedTerms("@old:hs.test"); len(terms) != 0 {
			t.Errorf("terms of a user with no token left: %v", terms)
		}
		if !strings.Contains(e.logs(), "swept audit entries past their retention") {
			t.Error("the audit sweep is not logged")
		}
	})
}

// storeTestInviteFor stores an invite expiring lifetime from now.
func storeTestInviteFor(t *testing.T, e *testEnv, token, address string, lifetime time.Duration) {
	t.Helper()
	eph, _ := signing.NewKey(signing.LongTermKeyID)
	now := e.clock.Now()
	if err := e.store.PutInvite(db.Invite{Token: token, Medium: "email", Address: address, RoomID: "!room:hs.test", Sender: "@bob:hs.test",
		Ephemeral: signing.EncodeBase64URL(eph.Public()), CreatedTS: now.UnixMilli(), ExpiresTS: now.Add(lifetime).UnixMilli()}); err != nil {
		t.Fatal(err)
	}
}

// The admin socket is a unix socket of mode 0600 in data_dir: only the
// server's user (and root) can connect. (main's TestAdminSocketRefusesOtherUsers
// runs mxid admin as another user against it.)
func TestAdminSocketMode(t *testing.T) {
	dir, err := os.MkdirTemp("", "mxid-sock-") // short: a socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := ListenAdmin(dir, slogTo(&syncBuffer{}))
	if err != nil || ln == nil {
		t.Fatal(ln, err)
	}
	defer ln.Close()
	path := filepath.Join(dir, AdminSocketName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v, want a socket with 0600", fi.Mode())
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Errorf("the server's own user cannot connect: %v", err)
	} else {
		c.Close()
	}
}
