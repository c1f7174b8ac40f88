package server

import (
	"net/http"
	"net/url"
	"testing"
)

const v1Path = "/_matrix/identity/api/v1"

func TestV1Off(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{})
	for _, ep := range []struct{ method, path string }{
		{"GET", v1Path}, {"GET", v1Path + "/pubkey/ed25519:0"}, {"GET", v1Path + "/pubkey/isvalid?public_key=x"},
		{"POST", v1Path + "/validate/email/requestToken"}, {"GET", v1Path + "/validate/email/submitToken"},
		{"POST", v1Path + "/validate/msisdn/requestToken"}, {"GET", v1Path + "/3pid/getValidated3pid"},
		{"POST", v1Path + "/3pid/bind"}, {"POST", v1Path + "/3pid/unbind"},
	} {
		wantReply(t, "v1 off "+ep.path, h.call(ep.method, ep.path, "", map[string]any{}, nil), 404, "M_UNRECOGNIZED")
	}
}

// With v1 = true the legacy routes are served by the same handlers without
// account auth, as sydent does, bodies as JSON, form or query.
func TestV1On(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		h := newIDHarness(t, idHarnessOpts{store: be.open, config: func(c *Config) { c.V1 = true }})
		wantReply(t, "status", h.call("GET", v1Path, "", nil, nil), 200, "")
		r := h.call("GET", v1Path+"/pubkey/ed25519:0", "", nil, nil)
		wantReply(t, "pubkey", r, 200, "")
		wantReply(t, "isvalid", h.call("GET", v1Path+"/pubkey/isvalid?public_key="+url.QueryEscape(r.str("public_key")), "", nil, nil), 200, "")
		wantReply(t, "ephemeral isvalid", h.call("GET", v1Path+"/pubkey/ephemeral/isvalid?public_key=x", "", nil, nil), 200, "")

		// JSON, form and query-string requestTokens, no token.
		rj := h.call("POST", v1Path+"/validate/email/requestToken", "", map[string]any{"email": "a@example.org", "client_secret": "s", "send_attempt": 1}, nil)
		wantReply(t, "requestToken JSON", rj, 200, "")
		form := url.Values{"email": {"b@example.org"}, "client_secret": {"s"}, "send_attempt": {"1"}}.Encode()
		wantReply(t, "requestToken form", h.call("POST", v1Path+"/validate/email/requestToken", "", form, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}), 200, "")
		// JSON sent with the form content type (curl -d) is read as JSON.
		wantReply(t, "requestToken JSON labelled as a form", h.call("POST", v1Path+"/validate/email/requestToken", "",
			`{"email": "d@example.org", "client_secret": "s", "send_attempt": 1}`, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}), 200, "")
		wantReply(t, "requestToken query", h.call("POST", v1Path+"/validate/email/requestToken?"+url.Values{"email": {"c@example.org"}, "client_secret": {"s"}, "send_attempt": {"1"}}.Encode(), "", nil, nil), 200, "")
		_, token, _ := h.mailLink(1)
		sid := rj.str("sid")
		wantReply(t, "submitToken", h.call("POST", v1Path+"/validate/email/submitToken", "", map[string]any{"sid": sid, "client_secret": "s", "token": token}, nil), 200, "")
		r = h.call("GET", v1Path+"/3pid/getValidated3pid?sid="+sid+"&client_secret=s", "", nil, nil)
		wantReply(t, "getValidated3pid", r, 200, "")
		// v1 bind takes mxid from the body (there is no account), but it must
		// be a user ID.
		wantReply(t, "bind bad mxid", h.call("POST", v1Path+"/3pid/bind", "", map[string]any{"sid": sid, "client_secret": "s", "mxid": "nobody"}, nil), 400, "M_INVALID_PARAM")
		rb := h.call("POST", v1Path+"/3pid/bind", "", map[string]any{"sid": sid, "client_secret": "s", "mxid": "@anyone:hs.test"}, nil)
		wantReply(t, "bind", rb, 200, "")
		checkAssociation(t, h, rb, "email", "a@example.org", "@anyone:hs.test")
		wantReply(t, "unbind", h.call("POST", v1Path+"/3pid/unbind", "", map[string]any{"sid": sid, "client_secret": "s", "mxid": "@anyone:hs.test", "threepid": map[string]string{"medium": "email", "address": "a@example.org"}}, nil), 200, "")
		if n, _ := h.store.CountBindings(); n != 0 {
			t.Errorf("%d bindings after unbind", n)
		}
		// The link in the mail is the v2 one, and the v1 GET works as well.
		link, _, _ := h.mailLink(2)
		u, _ := url.Parse(link)
		wantReply(t, "v1 GET submitToken", h.call("GET", v1Path+"/validate/email/submitToken?"+u.RawQuery, "", nil, nil), 200, "")
		// msisdn on v1, log provider.
		wantReply(t, "msisdn", h.call("POST", v1Path+"/validate/msisdn/requestToken", "", map[string]any{"country": "GB", "phone_number": "07700900001", "client_secret": "s", "send_attempt": 1}, nil), 200, "")
		// v2 still needs a token.
		wantReply(t, "v2 still authed", h.call("POST", v2Path+"/validate/email/requestToken", "", map[string]any{"email": "a@example.org", "client_secret": "s", "send_attempt": 1}, nil), 401, "M_UNAUTHORIZED")
	})
}
