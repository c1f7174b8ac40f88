package server

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"mxid/db"
	"mxid/server/signing"
)

func TestSignEd25519(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		e := newTestEnvOn(t, be, nil)
		tok := e.register("@alice:hs.test")
		eph, _ := signing.NewKey(signing.LongTermKeyID)
		now := e.clock.Now()
		if err := e.store.PutInvite(db.Invite{Token: "invtok", Medium: "email", Address: "alice@example.org", RoomID: "!r:hs.test",
			Sender: "@bob:hs.test", Ephemeral: signing.EncodeBase64URL(eph.Public()), CreatedTS: now.UnixMilli(), ExpiresTS: now.Add(time.Hour).UnixMilli()}); err != nil {
			t.Fatal(err)
		}
		path := "/_matrix/identity/v2/sign-ed25519"
		priv := signing.EncodeBase64URL(eph.Private.Seed())
		r := e.request("POST", path, map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": priv}, tok)
		r.expect(t, "sign", 200, "")
		if r.body["mxid"] != "@alice:hs.test" || r.body["sender"] != "@bob:hs.test" || r.body["token"] != "invtok" {
			t.Errorf("signed object %s", r.raw)
		}
		if err := signing.Verify(r.body, e.srv.cfg.ServerName, "ed25519:0", eph.Public()); err != nil {
			t.Errorf("signature does not verify with the ephemeral key: %v", err)
		}
		// The standard base64 form of the key works too.
		e.request("POST", path, map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": signing.EncodeBase64(eph.Private.Seed())}, tok).
			expect(t, "std base64 key", 200, "")

		other, _ := signing.NewKey(signing.LongTermKeyID)
		for _, c := range []struct {
			name    string
			body    map[string]any
			status  int
			errcode string
		}{
			{"unknown token", map[string]any{"mxid": "@alice:hs.test", "token": "nope", "private_key": priv}, 404, "M_UNRECOGNIZED"},
			{"malformed key", map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": "!!!"}, 400, "M_INVALID_PARAM"},
			{"short key", map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": "AAAA"}, 400, "M_INVALID_PARAM"},
			{"bad mxid", map[string]any{"mxid": "alice", "token": "invtok", "private_key": priv}, 400, "M_INVALID_PARAM"},
			{"missing key", map[string]any{"mxid": "@alice:hs.test", "token": "invtok"}, 400, "M_MISSING_PARAMS"},
		} {
			e.request("POST", path, c.body, tok).expect(t, c.name, c.status, c.errcode)
		}
		// With an access token the supplied key signs, as the spec and sydent
		// say: the answer verifies with that key (and with no other).
		r = e.request("POST", path, map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": signing.EncodeBase64URL(other.Private.Seed())}, tok)
		r.expect(t, "another key, with a token", 200, "")
		if err := signing.Verify(r.body, e.srv.cfg.ServerName, "ed25519:0", other.Public()); err != nil {
			t.Errorf("not signed with the supplied key: %v", err)
		}

		// Without a token, a JSON body is refused as the spec says; only the
		// invite link's form (Element: a bodiless POST, everything in the
		// query) is served, and there the key must be the invite's own.
		e.request("POST", path, map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": priv}, "").expect(t, "JSON body without a token", 401, "M_UNAUTHORIZED")
		q := url.Values{"token": {"invtok"}, "private_key": {priv}, "mxid": {"@alice:hs.test"}}.Encode()
		r = e.request("POST", path+"?"+q, nil, "")
		r.expect(t, "parameters in the query", 200, "")
		if err := signing.Verify(r.body, e.srv.cfg.ServerName, "ed25519:0", eph.Public()); err != nil || r.body["mxid"] != "@alice:hs.test" {
			t.Errorf("query-string signing: %v %s", err, r.raw)
		}
		e.request("POST", path+"?"+q, "null", "").expect(t, "null body, query parameters", 200, "")
		qOther := url.Values{"token": {"invtok"}, "private_key": {signing.EncodeBase64URL(other.Private.Seed())}, "mxid": {"@alice:hs.test"}}.Encode()
		e.request("POST", path+"?"+qOther, nil, "").expect(t, "link form with another key", 400, "M_INVALID_PARAM")
		e.request("POST", path+"?"+q, nil, tok).expect(t, "link form with a token", 200, "")
		e.request("POST", path, map[string]any{"mxid": "@alice:hs.test", "token": "invtok", "private_key": priv}, "wrong").expect(t, "a wrong access token", 401, "M_UNAUTHORIZED")

		// The ephemeral key is valid while the invite is stored.
		r = e.request("GET", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+signing.EncodeBase64URL(eph.Public()), nil, "")
		if r.body["valid"] != true {
			t.Errorf("ephemeral isvalid = %s", r.raw)
		}
		r = e.request("GET", "/_matrix/identity/v2/pubkey/isvalid?public_key="+signing.EncodeBase64URL(eph.Public()), nil, "")
		if r.body["valid"] != false {
			t.Errorf("an ephemeral key passed as the long-term key: %s", r.raw)
		}
	})
}

func TestStoreInviteRefusals(t *testing.T) {
	e := newTestEnv(t, func(c *Config) {
		c.Invites.RoomBlocklist = []string{"!blocked:hs.test"}
		c.Invites.HomeserverBlocklist = []string{"spam.test"}
		c.Invites.KeywordBlocklist = []string{"Casino"}
	})
	bob := e.register("@bob:hs.test")
	spammer := e.register("@x:spam.test")
	if _, err := e.store.PutBinding(db.Binding{Medium: "email", Address: "taken@example.org", MXID: "@taken:hs.test", TS: 1, NotAfter: 2}); err != nil {
		t.Fatal(err)
	}
	invite := func(mutate func(map[string]any)) map[string]any {
		b := map[string]any{"medium": "email", "address": "carol@example.org", "room_id": "!room:hs.test", "sender": "@bob:hs.test"}
		if mutate != nil {
			mutate(b)
		}
		return b
	}
	path := "/_matrix/identity/v2/store-invite"
	for _, c := range []struct {
		name    string
		body    map[string]any
		tok     string
		status  int
		errcode string
	}{
		{"msisdn", invite(func(b map[string]any) { b["medium"] = "msisdn"; b["address"] = "447700900001" }), bob, 400, "M_UNRECOGNIZED"},
		{"sender not the caller", invite(func(b map[string]any) { b["sender"] = "@alice:hs.test" }), bob, 403, "M_FORBIDDEN"},
		{"invalid sender", invite(func(b map[string]any) { b["sender"] = "@a b:x.org" }), bob, 400, "M_INVALID_PARAM"},
		{"room_id without !", invite(func(b map[string]any) { b["room_id"] = "room:hs.test" }), bob, 400, "M_INVALID_PARAM"},
		{"room_id with HTML", invite(func(b map[string]any) { b["room_id"] = `!x:example.org"><img src=x onerror=alert(1)>` }), bob, 400, "M_INVALID_PARAM"},
		{"bad address", invite(func(b map[string]any) { b["address"] = "Alice <a@b.com>" }), bob, 400, "M_INVALID_EMAIL"},
		{"address with CRLF", invite(func(b map[string]any) { b["address"] = "a@b.com\r\nBcc: v@x.org" }), bob, 400, "M_INVALID_EMAIL"},
		{"missing room_id", invite(func(b map[string]any) { delete(b, "room_id") }), bob, 400, "M_MISSING_PARAMS"},
		{"room_name not a string", invite(func(b map[string]any) { b["room_name"] = 5 }), bob, 400, "M_INVALID_PARAM"},
		{"blocked room", invite(func(b map[string]any) { b["room_id"] = "!blocked:hs.test" }), bob, 403, "M_FORBIDDEN"},
		{"blocked homeserver", invite(func(b map[string]any) { b["sender"] = "@x:spam.test" }), spammer, 403, "M_FORBIDDEN"},
		{"blocked keyword", invite(func(b map[string]any) { b["room_name"] = "Free CASINO chips" }), bob, 403, "M_FORBIDDEN"},
		{"already bound", invite(func(b map[string]any) { b["address"] = "Taken@Example.org" }), bob, 400, "M_THREEPID_IN_USE"},
		{"no token", invite(nil), "", 401, "M_UNAUTHORIZED"},
	} {
		if c.status == 0 {
			continue
		}
		r := e.request("POST", path, c.body, c.tok)
		r.expect(t, c.name, c.status, c.errcode)
		if c.errcode == "M_THREEPID_IN_USE" && r.body["mxid"] != "@taken:hs.test" {
			t.Errorf("%s: mxid %v", c.name, r.body["mxid"])
		}
	}
	// Nothing refused left anything behind.
	if strings.Contains(e.logs(), "invite stored") {
		t.Error("a refused invite was stored")
	}
}

func TestRedactEmailAndClip(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.org": "ali...@exa...", "bob@x.io": "b...@x.i...", "a@bc.de": "...@bc....",
	} {
		if got := redactEmail(in); got != want {
			t.Errorf("redactEmail(%q) = %q, want %q", in, got, want)
		}
	}
	if got := clip("Bob\r\nSubject: hijack", 20); strings.ContainsAny(got, "\r\n") || len([]rune(got)) > 20 {
		t.Errorf("clip kept a line break or overran: %q", got)
	}
	if got := clip(strings.Repeat("é", 40), 30); len([]rune(got)) != 30 || !strings.HasSuffix(got, "…") {
		t.Errorf("clip = %q", got)
	}
}
