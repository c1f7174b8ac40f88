package server

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"mxid/server/signing"
)

var inviteLinkRE = regexp.MustCompile(`https://app\.element\.io/#/room/\S+`)

// inviteLink finds the web client link in an invite mail's text and returns
// it with the parameters of its fragment (signurl, email, room_name, …) and
// the signing URL among them.
func inviteLink(t *testing.T, text string) (link string, params url.Values, signURL *url.URL) {
	t.Helper()
	link = inviteLinkRE.FindString(text)
	lu, err := url.Parse(link)
	if err != nil || link == "" {
		t.Fatalf("no invite link in %q", text)
	}
	_, query, _ := strings.Cut(lu.EscapedFragment(), "?")
	params, _ = url.ParseQuery(query)
	if signURL, err = url.Parse(params.Get("signurl")); err != nil {
		t.Fatalf("invite link %s: signurl: %v", link, err)
	}
	return link, params, signURL
}

// The whole chain as a homeserver and two users see it: Bob invites an
// unbound address, the invitee gets the mail, validates the address, binds
// it, and the invitee's homeserver receives the invite signed with mxid's
// published key.
func TestInviteChain(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		hs := newOnbindHS(t)
		h := newIDHarness(t, idHarnessOpts{store: be.open, config: func(c *Config) {
			c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		}})
		bob := h.account("@bob:hs.test")
		r := h.call("POST", v2Path+"/store-invite", bob, map[string]any{
			"medium": "email", "address": "Alice@Example.org", "room_id": "!room:hs.test", "sender": "@bob:hs.test",
			"room_name": "Bob's room", "sender_display_name": "Bob", "room_type": "m.space",
		}, nil)
		wantReply(t, "store-invite", r, 200, "")
		token := r.str("token")
		if len(token) < 32 || strings.Trim(token, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.=_-") != "" {
			t.Errorf("token %q", token)
		}
		if r.str("display_name") != "Ali...@Exa..." {
			t.Errorf("display_name %q", r.str("display_name"))
		}
		keys, _ := r.body["public_keys"].([]any)
		if len(keys) != 2 {
			t.Fatalf("public_keys %v", r.body["public_keys"])
		}
		long, eph := keys[0].(map[string]any), keys[1].(map[string]any)
		if long["public_key"] != h.key.PublicBase64() || long["key_validity_url"] != h.cfg.PublicBaseURL+"/_matrix/identity/v2/pubkey/isvalid" ||
			eph["key_validity_url"] != h.cfg.PublicBaseURL+"/_matrix/identity/v2/pubkey/ephemeral/isvalid" {
			t.Errorf("public_keys %v", keys)
		}
		// The ephemeral key validates at its key_validity_url.
		v := h.call("GET", "/_matrix/identity/v2/pubkey/ephemeral/isvalid?public_key="+url.QueryEscape(eph["public_key"].(string)), "", nil, nil)
		if v.body["valid"] != true {
			t.Errorf("ephemeral key not valid: %s", v.raw)
		}

		// The invite mail: to the address as given, naming sender and room,
		// with a link that carries the signing URL and the ephemeral key.
		m := h.smtp.Wait(t, 1)
		if len(m.To) != 1 || m.To[0] != "Alice@Example.org" {
			t.Errorf("mail to %v", m.To)
		}
		p, err := m.Parse()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.Subject, "Bob") || !strings.Contains(p.Subject, "Bob's room") {
			t.Errorf("subject %q", p.Subject)
		}
		if !strings.Contains(p.Text, "@bob:hs.test") || !strings.Contains(p.Text, "space") || !strings.Contains(p.HTML, "Bob&#39;s room") {
			t.Errorf("mail body lacks sender, room type or room name:\n%s\n%s", p.Text, p.HTML)
		}
		link, q, signURL := inviteLink(t, p.Text)
		if !strings.HasPrefix(q.Get("signurl"), h.cfg.PublicBaseURL+"/_matrix/identity/v2/sign-ed25519?") || q.Get("email") != "Alice@Example.org" {
			t.Fatalf("invite link %s", link)
		}
		// The invitee's client signs with the key from the link.
		alice := h.account("@alice:hs.test")
		sr := h.call("POST", v2Path+"/sign-ed25519", alice, map[string]any{"mxid": "@alice:hs.test",
			"token": signURL.Query().Get("token"), "private_key": signURL.Query().Get("private_key")}, nil)
		wantReply(t, "sign-ed25519 with the mailed key", sr, 200, "")
		ephPub, _ := signing.DecodeBase64(eph["public_key"].(string))
		if err := signing.Verify(sr.body, h.cfg.ServerName, "ed25519:0", ephPub); err != nil {
			t.Errorf("sign-ed25519 answer does not verify with the ephemeral key: %v", err)
		}

		// The invitee validates the address and binds it.
		sid := h.validatedEmail(alice, "alice@example.org", "secret1")
		b := h.call("POST", v2Path+"/3pid/bind", alice, map[string]any{"sid": sid, "client_secret": "secret1", "mxid": "@alice:hs.test"}, nil)
		wantReply(t, "bind", b, 200, "")
		h.srv.deliverDue(context.Background())
		calls := hs.got()
		if len(calls) != 1 {
			t.Fatalf("homeserver saw %d onbind calls, want 1", len(calls))
		}
		// The homeserver checks the signatures against the key mxid publishes.
		pk := h.call("GET", v2Path+"/pubkey/ed25519:0", "", nil, nil)
		published, err := signing.DecodeBase64(pk.str("public_key"))
		if err != nil {
			t.Fatal(err)
		}
		checkOnbindBody(t, h.srv.cfg.ServerName, published, calls[0].body, "@alice:hs.test", token)
		if inv := calls[0].body["invites"].([]any)[0].(map[string]any); inv["address"] != "alice@example.org" {
			t.Errorf("invite address %v, want the canonical form", inv["address"])
		}
		// Delivered: marked so, so no other bind carries it, but the mailed link
		// keeps working until the invite expires.
		if inv, err := h.store.GetInvite(token); err != nil || inv.DeliveredTS == 0 {
			t.Errorf("invite after delivery: %+v %v", inv, err)
		}
		sr = h.call("POST", signURL.Path+"?"+signURL.RawQuery+"&mxid=%40alice%3Ahs.test", "", nil, nil)
		wantReply(t, "the mailed signing URL after delivery", sr, 200, "")
		// A second invite for a bound address is refused.
		r = h.call("POST", v2Path+"/store-invite", bob, map[string]any{"medium": "email", "address": "alice@example.org", "room_id": "!room:hs.test", "sender": "@bob:hs.test"}, nil)
		wantReply(t, "invite a bound address", r, 400, "M_THREEPID_IN_USE")
	})
}

// Request fields an inviter controls cannot change the mail's structure or
// headers, are escaped in HTML, truncated, and cannot redirect the link.
func TestInviteMailInjection(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{})
	bob := h.account("@bob:hs.test")
	evilRoom := "R\r\n--XYZ\r\nContent-Type: text/html\r\n\r\n<h1>pwn</h1>"
	r := h.call("POST", v2Path+"/store-invite", bob, map[string]any{
		"medium": "email", "address": "carol@example.org", "room_id": "!room:hs.test", "sender": "@bob:hs.test",
		"room_name": evilRoom, "sender_display_name": "Bob\r\nSubject: hijack" + strings.Repeat("x", 10000),
		"org.matrix.web_client_location": "https://evil.example",
	}, nil)
	wantReply(t, "store-invite", r, 200, "")
	m := h.smtp.Wait(t, 1)
	p, err := m.Parse()
	if err != nil {
		t.Fatalf("the mail does not parse: %v\n%s", err, m.Data)
	}
	if p.Parts != 2 || p.Text == "" || p.HTML == "" {
		t.Errorf("mail has %d parts, want exactly one text/plain and one text/html", p.Parts)
	}
	for _, line := range strings.Split(string(m.Data), "\r\n") {
		if strings.HasPrefix(line, "Subject: hijack") || strings.HasPrefix(line, "--XYZ") {
			t.Errorf("an inviter's value became a line of its own: %q", line)
		}
	}
	if raw := p.Header.Get("Subject"); !strings.HasPrefix(raw, "=?") {
		t.Errorf("Subject is not RFC 2047-encoded: %q", raw)
	}
	if strings.Contains(p.HTML, "<h1>pwn") || !strings.Contains(p.HTML, "&lt;h1&gt;") && strings.Contains(p.HTML, "pwn") {
		t.Errorf("HTML not escaped:\n%s", p.HTML)
	}
	if strings.Contains(p.Text, strings.Repeat("x", 30)) {
		t.Errorf("the display name was not truncated")
	}
	if !strings.Contains(p.Text, "@bob:hs.test") {
		t.Errorf("the verified sender is not named")
	}
	if strings.Contains(string(m.Data), "evil.example") || !strings.Contains(p.Text, "https://app.element.io/#/room/") {
		t.Errorf("the client-chosen web client location changed the link")
	}
}

// The invite policy: a sender's burst of invites is limited, and a failing
// mail server leaves nothing stored.
func TestInviteRateLimitAndSendFailure(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{config: func(c *Config) {
		c.Invites.RateLimit = Rate{Burst: 2, Every: 1 << 40}
	}})
	bob := h.account("@bob:hs.test")
	inv := func(addr string) apiReply {
		return h.call("POST", v2Path+"/store-invite", bob, map[string]any{"medium": "email", "address": addr, "room_id": "!room:hs.test", "sender": "@bob:hs.test"}, nil)
	}
	wantReply(t, "first", inv("a1@example.org"), 200, "")
	wantReply(t, "second", inv("a2@example.org"), 200, "")
	r := inv("a3@example.org")
	wantReply(t, "third", r, 429, "M_LIMIT_EXCEEDED")
	if _, ok := r.body["retry_after_ms"].(float64); !ok {
		t.Errorf("no retry_after_ms: %s", r.raw)
	}
	if n := len(h.smtp.Messages()); n != 2 {
		t.Errorf("%d mails sent, want 2", n)
	}

	// Many senders, one address: the address's own limit holds.
	h3 := newIDHarness(t, idHarnessOpts{config: func(c *Config) { c.Invites.AddressRateLimit = Rate{Burst: 2, Every: 1 << 40} }})
	for i, want := range []int{200, 200, 429} {
		sender := fmt.Sprintf("@s%d:hs.test", i)
		r := h3.call("POST", v2Path+"/store-invite", h3.account(sender), map[string]any{"medium": "email", "address": "victim@example.org", "room_id": "!room:hs.test", "sender": sender}, nil)
		if r.status != want {
			t.Errorf("invite %d of one address by another sender: %d, want %d", i+1, r.status, want)
		}
	}
	// On v1, where sender is not checked, the limit is per client IP.
	h4 := newIDHarness(t, idHarnessOpts{config: func(c *Config) { c.V1 = true; c.Invites.RateLimit = Rate{Burst: 2, Every: 1 << 40} }})
	for i, want := range []int{200, 200, 429} {
		r := h4.call("POST", "/_matrix/identity/api/v1/store-invite", "", map[string]any{"medium": "email", "address": fmt.Sprintf("v%d@example.org", i), "room_id": "!room:hs.test", "sender": fmt.Sprintf("@made-up%d:hs.test", i)}, nil)
		if r.status != want {
			t.Errorf("v1 invite %d from one IP with a new sender: %d, want %d", i+1, r.status, want)
		}
	}

	h2 := newIDHarness(t, idHarnessOpts{})
	h2.smtp.FailNextRcpt(1)
	carol := h2.account("@carol:hs.test")
	r = h2.call("POST", v2Path+"/store-invite", carol, map[string]any{"medium": "email", "address": "x@example.org", "room_id": "!room:hs.test", "sender": "@carol:hs.test"}, nil)
	wantReply(t, "mail refused", r, 500, "M_EMAIL_SEND_ERROR")
	// Sweeping "at the end of time" removes every stored invite: none may be left.
	if n, _ := h2.store.SweepInvites(1 << 62); n != 0 {
		t.Errorf("%d invites left behind after a failed send", n)
	}
}

// Unbind needs no access token (homeservers call it with X-Matrix only),
// but one that is sent must be valid and its user must have accepted the
// terms.
func TestUnbindOptionalToken(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{config: func(c *Config) {
		c.Terms.Policies = []Policy{{Name: "tos", Version: "1", Languages: map[string]PolicyText{"en": {Name: "ToS", URL: "https://id.test/tos"}}}}
	}})
	alice := h.account("@alice:hs.test")
	wantReply(t, "accept terms", h.call("POST", v2Path+"/terms", alice, map[string]any{"user_accepts": []string{"https://id.test/tos"}}, nil), 200, "")
	sid := h.validatedEmail(alice, "alice@example.org", "s1")
	wantReply(t, "bind", h.call("POST", v2Path+"/3pid/bind", alice, map[string]any{"sid": sid, "client_secret": "s1", "mxid": "@alice:hs.test"}, nil), 200, "")
	unbind := map[string]any{"sid": sid, "client_secret": "s1", "mxid": "@alice:hs.test", "threepid": map[string]any{"medium": "email", "address": "alice@example.org"}}
	wantReply(t, "unknown token", h.call("POST", v2Path+"/3pid/unbind", "nope", unbind, nil), 401, "M_UNAUTHORIZED")
	bob := h.account("@bob:hs.test") // has not accepted the terms
	wantReply(t, "terms not signed", h.call("POST", v2Path+"/3pid/unbind", bob, unbind, nil), 403, "M_TERMS_NOT_SIGNED")
	if _, err := h.store.GetBinding("email", "alice@example.org"); err != nil {
		t.Fatalf("a refused unbind removed the binding: %v", err)
	}
	wantReply(t, "no token", h.call("POST", v2Path+"/3pid/unbind", "", unbind, nil), 200, "")
	wantReply(t, "valid token", h.call("POST", v2Path+"/3pid/unbind", alice, unbind, nil), 200, "")
}
