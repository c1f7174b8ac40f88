package server

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"mxid/mail"
	"mxid/server/signing"
)

// The homeservers people run call mxid's legacy v1 API in their own ways:
// Dendrite (clientapi/threepid) sends every POST as a form with no access
// token, builds getValidated3pid's query by hand and checks signatures under
// the id_server name its user typed; Synapse's SMS delegation posts JSON to
// the v1 msisdn endpoints without a token. The requests below are exactly
// theirs; X-Forwarded-For (from a trusted proxy) gives each caller its own
// address.

// dendrite is a homeserver at ip sending Dendrite v0.13's identity server
// requests to the identity server idServer (host[:port], what its users
// type).
type dendrite struct {
	h        *idHarness
	ip       string
	idServer string
}

func (d dendrite) send(method, path string, form url.Values) apiReply {
	d.h.t.Helper()
	hdr := http.Header{"X-Forwarded-For": {d.ip}}
	var body any
	if form != nil {
		body = form.Encode()
		hdr.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return d.h.call(method, path, "", body, hdr)
}

// createSession is threepid.CreateSession.
func (d dendrite) createSession(secret, email string, attempt int) apiReply {
	return d.send("POST", v1Path+"/validate/email/requestToken", url.Values{
		"client_secret": {secret}, "email": {email}, "send_attempt": {fmt.Sprint(attempt)}})
}

// checkAssociation is threepid.CheckAssociation (the query is not escaped).
func (d dendrite) checkAssociation(sid, secret string) apiReply {
	return d.send("GET", fmt.Sprintf(v1Path+"/3pid/getValidated3pid?sid=%s&client_secret=%s", sid, secret), nil)
}

// publishAssociation is threepid.PublishAssociation.
func (d dendrite) publishAssociation(sid, secret, userID string) apiReply {
	return d.send("POST", v1Path+"/3pid/bind", url.Values{"sid": {sid}, "client_secret": {secret}, "mxid": {userID}})
}

// lookup is queryIDServerLookup.
func (d dendrite) lookup(medium, address string) apiReply {
	return d.send("GET", fmt.Sprintf(v1Path+"/lookup?medium=%s&address=%s", medium, url.QueryEscape(address)), nil)
}

// storeInvite is queryIDServerStoreInvite.
func (d dendrite) storeInvite(medium, address, roomID, sender, displayName string) apiReply {
	return d.send("POST", v1Path+"/store-invite", url.Values{"medium": {medium}, "address": {address},
		"room_id": {roomID}, "sender": {sender}, "sender_display_name": {displayName}})
}

// pubKey is queryIDServerPubKey.
func (d dendrite) pubKey(keyID string) ed25519.PublicKey {
	d.h.t.Helper()
	r := d.send("GET", v1Path+"/pubkey/"+keyID, nil)
	wantReply(d.h.t, "pubkey", r, 200, "")
	pub, err := signing.DecodeBase64(r.str("public_key"))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		d.h.t.Fatalf("pubkey %s: %s", keyID, r.raw)
	}
	return pub
}

// checkSignatures is checkIDServerSignatures: a signature under the name
// the user typed, verified with the key of that id.
func (d dendrite) checkSignatures(assoc map[string]any) error {
	sigs, _ := assoc["signatures"].(map[string]any)
	mine, ok := sigs[d.idServer].(map[string]any)
	if !ok {
		return fmt.Errorf("No signature for domain %s", d.idServer)
	}
	for keyID := range mine {
		if err := signing.Verify(assoc, d.idServer, keyID, d.pubKey(keyID)); err != nil {
			return err
		}
	}
	return nil
}

// homeserverHarness is mxid with v1 on, signing under the host:port its
// clients call it by, behind a trusted proxy (127.0.0.1), with the
// homeserver at 10.1.1.1 listed in trusted_callers and the invitees'
// homeserver (hs.test) played by onbind.
func homeserverHarness(t *testing.T, b backend, tmpl *mail.Templates, mutate func(*Config)) (*idHarness, dendrite, *onbindHS) {
	hs := newOnbindHS(t)
	h := newIDHarness(t, idHarnessOpts{store: b.open, tmpl: tmpl, config: func(c *Config) {
		c.V1 = true
		c.ServerName = strings.TrimPrefix(c.PublicBaseURL, "http://")
		c.HTTP.TrustedProxies = []string{"127.0.0.1"}
		c.RateLimit = DefaultRateLimitConfig()
		c.RateLimit.TrustedCallers = []string{"10.1.1.0/24"}
		c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		if mutate != nil {
			mutate(c)
		}
	}})
	return h, dendrite{h: h, ip: "10.1.1.1", idServer: h.cfg.ServerName}, hs
}

// The whole third-party invite chain as a Dendrite server drives it: Bob
// invites an address not on Matrix yet (form-encoded store-invite), the
// invitee gets the mail, validates the address and binds it through
// Dendrite, the invitee's homeserver receives the invite signed with the
// key Dendrite put in the room, and the invitee's client signs the join
// from the mailed link.
func TestDendriteThirdPartyInviteChain(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, mail.TemplateInviteText), []byte("{{.SenderID}} invited you. Invite token: {{.Token}}\nJoin: {{.Link}}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		tmpl, err := mail.LoadTemplates(dir)
		if err != nil {
			t.Fatal(err)
		}
		h, d, hs := homeserverHarness(t, be, tmpl, nil)

		// Dendrite looks the address up first, finds nothing, stores the invite.
		if r := d.lookup("email", "alice@example.org"); r.status != 200 || len(r.body) != 0 {
			t.Fatalf("lookup of an unbound address: %d %s", r.status, r.raw)
		}
		r := d.storeInvite("email", "alice@example.org", "!room:hs.test", "@bob:hs.test", "Bob")
		wantReply(t, "store-invite (form)", r, 200, "")
		token := r.str("token")
		if token == "" || r.str("display_name") != "ali...@exa..." {
			t.Fatalf("store-invite answer %s", r.raw)
		}
		published, _ := signing.DecodeBase64(r.str("public_key"))
		if !ed25519.PublicKey(published).Equal(d.pubKey("ed25519:0")) {
			t.Errorf("store-invite's public_key is not the published long-term key")
		}
		// Dendrite builds its key_validity_url itself, on the v1 path.
		v := d.send("GET", v1Path+"/pubkey/isvalid?public_key="+url.QueryEscape(r.str("public_key")), nil)
		if v.body["valid"] != true {
			t.Errorf("v1 isvalid of the long-term key: %s", v.raw)
		}

		// The invite mail, with the operator's template showing the token.
		m := h.smtp.Wait(t, 1)
		p, err := m.Parse()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.To) != 1 || m.To[0] != "alice@example.org" || !strings.Contains(p.Text, "Invite token: "+token) {
			t.Fatalf("invite mail to %v:\n%s", m.To, p.Text)
		}
		_, _, signURL := inviteLink(t, p.Text)

		// Alice adds the address to her account on Dendrite: requestToken,
		// the link in the mail, getValidated3pid, bind.
		r = d.createSession("aliceSecret1", "alice@example.org", 1)
		wantReply(t, "requestToken (form)", r, 200, "")
		sid := r.str("sid")
		vlink, _, _ := h.mailLink(2)
		vu, _ := url.Parse(vlink)
		wantReply(t, "the mailed link", h.call("GET", vu.Path+"?"+vu.RawQuery, "", nil, nil), 200, "")
		r = d.checkAssociation(sid, "aliceSecret1")
		wantReply(t, "getValidated3pid", r, 200, "")
		if r.str("address") != "alice@example.org" || r.str("medium") != "email" {
			t.Errorf("getValidated3pid %s", r.raw)
		}
		wantReply(t, "bind (form)", d.publishAssociation(sid, "aliceSecret1", "@alice:hs.test"), 200, "")

		// The invitee's homeserver gets the invite, signed by the key in the room.
		h.srv.deliverDue(context.Background())
		calls := hs.got()
		if len(calls) != 1 {
			t.Fatalf("the homeserver saw %d onbind calls, want 1", len(calls))
		}
		checkOnbindBody(t, d.idServer, published, calls[0].body, "@alice:hs.test", token)

		// Dendrite's lookup now verifies under the name its user typed.
		r = d.lookup("email", "Alice@Example.org")
		if r.str("mxid") != "@alice:hs.test" {
			t.Fatalf("lookup after bind: %s", r.raw)
		}
		if err := d.checkSignatures(r.body); err != nil {
			t.Errorf("Dendrite would refuse the lookup: %v", err)
		}

		// Alice's client joins: it follows the mailed signing URL (no body, no
		// token, mxid added to the query), and the signature verifies with the
		// invite's ephemeral key, the other key of the room's invite event.
		sq := signURL.Query()
		sq.Set("mxid", "@alice:hs.test")
		sr := h.call("POST", signURL.Path+"?"+sq.Encode(), "", nil, nil)
		wantReply(t, "sign-ed25519 from the link", sr, 200, "")
		eph, _ := signing.DecodeBase64(signingKeyOf(t, h, token))
		if err := signing.Verify(sr.body, d.idServer, "ed25519:0", eph); err != nil || sr.body["mxid"] != "@alice:hs.test" || sr.body["sender"] != "@bob:hs.test" {
			t.Errorf("the join signature: %v %s", err, sr.raw)
		}
	})
}

// signingKeyOf is the ephemeral public key of a stored invite.
func signingKeyOf(t *testing.T, h *idHarness, token string) string {
	t.Helper()
	inv, err := h.store.GetInvite(token)
	if err != nil {
		t.Fatal(err)
	}
	return inv.Ephemeral
}

// Every v1 POST takes a form body, as sydent reads them (and Dendrite sends
// them); v2 store-invite stays JSON only, and says so.
func TestV1FormBodies(t *testing.T) {
	h, _, _ := homeserverHarness(t, backends[0], nil, nil)
	bob := h.account("@bob:hs.test")
	form := url.Values{"medium": {"email"}, "address": {"carol@example.org"}, "room_id": {"!room:hs.test"}, "sender": {"@bob:hs.test"}}.Encode()
	formHdr := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	r := h.call("POST", v2Path+"/store-invite", bob, form, formHdr)
	wantReply(t, "v2 store-invite as a form", r, 400, "M_NOT_JSON")
	if !strings.Contains(r.str("error"), "JSON") {
		t.Errorf("the refusal does not say what to send: %s", r.raw)
	}
	wantReply(t, "v1 store-invite as a form", h.call("POST", v1Path+"/store-invite", "", form, formHdr), 200, "")
	wantReply(t, "v1 store-invite as JSON", h.call("POST", v1Path+"/store-invite", "",
		map[string]any{"medium": "email", "address": "dave@example.org", "room_id": "!room:hs.test", "sender": "@bob:hs.test"}, nil), 200, "")
	wantReply(t, "v1 store-invite in the query", h.call("POST", v1Path+"/store-invite?"+
		url.Values{"medium": {"email"}, "address": {"erin@example.org"}, "room_id": {"!room:hs.test"}, "sender": {"@bob:hs.test"}}.Encode(), "", nil, nil), 200, "")
	wantReply(t, "v1 store-invite form without room_id", h.call("POST", v1Path+"/store-invite", "",
		url.Values{"medium": {"email"}, "address": {"x@example.org"}, "sender": {"@bob:hs.test"}}.Encode(), formHdr), 400, "M_MISSING_PARAMS")

	// sign-ed25519 on v1: form, as sydent reads it.
	r = h.call("POST", v1Path+"/store-invite", "", url.Values{"medium": {"email"}, "address": {"frank@example.org"}, "room_id": {"!room:hs.test"}, "sender": {"@bob:hs.test"}}.Encode(), formHdr)
	wantReply(t, "store-invite for signing", r, 200, "")
	m := h.smtp.Wait(t, 4)
	p, _ := m.Parse()
	_, _, su := inviteLink(t, p.Text)
	signForm := url.Values{"mxid": {"@frank:hs.test"}, "token": {su.Query().Get("token")}, "private_key": {su.Query().Get("private_key")}}
	wantReply(t, "v1 sign-ed25519 as a form", h.call("POST", v1Path+"/sign-ed25519", "", signForm.Encode(), formHdr), 200, "")
	wantReply(t, "v2 sign-ed25519 as a form, with a token", h.call("POST", v2Path+"/sign-ed25519", bob, signForm.Encode(), formHdr), 400, "M_NOT_JSON")

	// bulk_lookup reads a form too, but threepids cannot be written in one.
	wantReply(t, "v1 bulk_lookup as a form", h.call("POST", v1Path+"/bulk_lookup", "", "threepids=x", formHdr), 400, "M_INVALID_PARAM")
	// unbind's nested threepid is JSON only, as in sydent.
	wantReply(t, "v1 unbind as a form", h.call("POST", v1Path+"/3pid/unbind", "", "mxid=%40a%3Ahs.test", formHdr), 400, "M_NOT_JSON")
}

// Synapse, with account_threepid_delegates.msisdn pointing at mxid, proxies
// its users' phone validation to the v1 API: JSON, no access token, from the
// homeserver's address. It also asks hash_details with the token in the
// query string.
func TestSynapseSMSDelegate(t *testing.T) {
	h, d, _ := homeserverHarness(t, backends[0], nil, nil)
	synapse := http.Header{"X-Forwarded-For": {d.ip}, "User-Agent": {"Synapse/1.120.0"}}
	r := h.call("POST", v1Path+"/validate/msisdn/requestToken", "", map[string]any{
		"country": "GB", "phone_number": "07700900123", "client_secret": "smsSecret", "send_attempt": 1,
		"next_link": "https://matrix.example.org/_synapse/client/next"}, synapse)
	wantReply(t, "Synapse msisdn requestToken", r, 200, "")
	sid := r.str("sid")
	code := smsCode(t, h)
	wantReply(t, "Synapse msisdn submitToken", h.call("POST", v1Path+"/validate/msisdn/submitToken", "",
		map[string]any{"client_secret": "smsSecret", "sid": sid, "token": code}, synapse), 200, "")
	wantReply(t, "getValidated3pid", h.call("GET", v1Path+"/3pid/getValidated3pid?sid="+sid+"&client_secret=smsSecret", "", nil, synapse), 200, "")

	tok := h.account("@alice:hs.test")
	r = h.call("GET", v2Path+"/hash_details?access_token="+tok, "", nil, synapse)
	wantReply(t, "hash_details with the token in the query", r, 200, "")
	if r.str("lookup_pepper") == "" {
		t.Errorf("hash_details %s", r.raw)
	}
}

var smsCodeRE = regexp.MustCompile(`SMS not sent .*code is (\d{6})`)

// smsCode is the code of the last SMS written to the log (the log
// provider: what the user would read on the phone).
func smsCode(t *testing.T, h *idHarness) string {
	t.Helper()
	all := smsCodeRE.FindAllStringSubmatch(h.log.String(), -1)
	if len(all) == 0 {
		t.Fatalf("no SMS code in the log:\n%s", h.log.String())
	}
	return all[len(all)-1][1]
}

// Ten users of one Dendrite each validate an address and send an invite
// with the default limits: the homeserver is budgeted per address and
// sender, not as one IP. Another address gets the per-IP limits as
// before, and so does the homeserver's own v2 traffic.
func TestTrustedCallerBudgets(t *testing.T) {
	h, d, _ := homeserverHarness(t, backends[0], nil, nil)
	for i := 0; i < 10; i++ {
		user := fmt.Sprintf("user%d", i)
		wantReply(t, user+" requestToken", d.createSession("s"+user, user+"@example.org", 1), 200, "")
		wantReply(t, user+" store-invite", d.storeInvite("email", "invitee"+user+"@example.org", "!room:hs.test", "@"+user+":hs.test", ""), 200, "")
	}
	if n := len(h.smtp.Messages()); n != 20 {
		t.Errorf("%d mails, want 20 (a validation mail and an invite for each user)", n)
	}
	// The per-address limits still hold for a homeserver: user0's address
	// had one mail, four more fit its budget.
	for i := 1; i <= 4; i++ {
		wantReply(t, "mails to one address", d.createSession("again", "user0@example.org", i+1), 200, "")
	}
	wantReply(t, "the sixth mail to one address", d.createSession("again", "user0@example.org", 6), 429, "M_LIMIT_EXCEEDED")
	// user1 sent one invite above: four more fit its sender budget.
	for i := 0; i < 4; i++ {
		wantReply(t, "invites of one sender", d.storeInvite("email", fmt.Sprintf("more%d@example.org", i), "!room:hs.test", "@user1:hs.test", ""), 200, "")
	}
	r := d.storeInvite("email", "more5@example.org", "!room:hs.test", "@user1:hs.test", "")
	wantReply(t, "the sixth invite of one sender", r, 429, "M_LIMIT_EXCEEDED")
	if msg := r.str("error"); !strings.Contains(msg, "invites from this sender") || !strings.Contains(msg, "invites.rate_limit") {
		t.Errorf("the refusal does not say which limit: %q", msg)
	}

	// An untrusted address is limited per IP, as before.
	other := dendrite{h: h, ip: "192.0.2.7", idServer: d.idServer}
	for i := 0; i < 5; i++ {
		wantReply(t, "untrusted requestToken", other.createSession("o", fmt.Sprintf("o%d@example.org", i), 1), 200, "")
	}
	r = other.createSession("o", "o5@example.org", 1)
	wantReply(t, "untrusted sixth requestToken", r, 429, "M_LIMIT_EXCEEDED")
	for i := 0; i < 5; i++ {
		other.storeInvite("email", fmt.Sprintf("oi%d@example.org", i), "!room:hs.test", fmt.Sprintf("@o%d:hs.test", i), "")
	}
	wantReply(t, "untrusted sixth store-invite", other.storeInvite("email", "oi5@example.org", "!room:hs.test", "@o5:hs.test", ""), 429, "M_LIMIT_EXCEEDED")

	// Refusals are logged with their errcode and message: at info level for
	// the trusted homeserver (whose own log only says "500"), at debug
	// level for others.
	d.send("POST", v1Path+"/store-invite", nil)
	logged := h.log.String()
	if !strings.Contains(logged, `level=INFO msg="request refused"`) || !strings.Contains(logged, "trusted_caller=true") {
		t.Errorf("a trusted caller's refusal is not logged at info level:\n%s", logged)
	}
	if !strings.Contains(logged, `level=DEBUG msg="request refused" request_id=`) || !strings.Contains(logged, "errcode=M_LIMIT_EXCEEDED") {
		t.Errorf("an untrusted caller's refusal is not logged at debug level")
	}
}
