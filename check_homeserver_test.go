package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mxid/server/signing"
)

// TestCheckHomeserver runs `mxid check homeserver` against a homeserver
// stand-in over real HTTPS (keys, userinfo, onbind, version) and an
// identity server stand-in at public_base_url, broken in the ways that
// stop real callers.
func TestCheckHomeserver(t *testing.T) {
	key, _ := signing.NewKey("ed25519:a1")
	tests := []struct {
		name       string
		edit       func(h *fakeHomeserver)
		config     string // extra top-level keys
		serverName string // "": the host:port of public_base_url
		plainHTTP  bool   // public_base_url is http://
		untrusted  bool   // homeservers do not trust public_base_url's CA
		down       bool   // the homeserver is not running
		args       []string
		wantOK     bool
		wantText   []string
	}{
		{name: "works with Synapse", wantOK: true, wantText: []string{
			"ok    server name", "ok    discovery: requests go to https://127.0.0.1:",
			"ok    signing keys: 1 key(s) (ed25519:a1), self-signature verifies",
			"ok    OpenID userinfo: reachable",
			"ok    onbind: reachable: POST /_matrix/federation/v1/3pid/onbind answered HTTP 200 to an association without invites",
			"ok    public_base_url: https://127.0.0.1:", "answers over HTTPS with a certificate that homeservers trust",
			`ok    server_name: mxid signs as "127.0.0.1:`,
			"ok    v1 API: hs.test runs Synapse 1.120.0; v1 is off, and it does not need it",
			"Verdict: OK: hs.test and this identity server can work together"}},
		{name: "wrong server_name", serverName: "localhost", wantText: []string{
			`FAIL  server_name: server_name "localhost" does not match public_base_url: homeservers verify signatures under the name users type as their identity server, "127.0.0.1:`,
			`but mxid signs as "localhost"`, `set server_name = "127.0.0.1:`,
			"breaks: invites to addresses bound on mxid", `Verdict: FAILED at "server_name"`}},
		{name: "untrusted certificate", untrusted: true, wantText: []string{
			"FAIL  public_base_url: the certificate of https://127.0.0.1:", "is not from a trusted CA",
			"breaks: every call the homeserver makes to mxid",
			"hint: homeservers will refuse to call mxid: Synapse and Dendrite trust only the system's CAs, so a self-signed or private-CA certificate fails",
			`Verdict: FAILED at "public_base_url"`}},
		{name: "public_base_url over plain HTTP", plainHTTP: true, wantText: []string{
			"FAIL  public_base_url: http://127.0.0.1:", "is not https://: Synapse and Dendrite call identity servers over https:// only",
			`[tls] mode = "acme"`}},
		{name: "Dendrite with v1 off", edit: func(h *fakeHomeserver) { h.software, h.version = "Dendrite", "0.13.8" }, wantText: []string{
			"FAIL  v1 API: hs.test runs Dendrite 0.13.8; v1 is off, but Dendrite speaks only the v1 identity API",
			"breaks: every call Dendrite makes to mxid", "hint: set v1 = true", `Verdict: FAILED at "v1 API"`}},
		{name: "Dendrite with v1 on", edit: func(h *fakeHomeserver) { h.software, h.version = "Dendrite", "0.13.8" }, config: "v1 = true\n", wantOK: true, wantText: []string{
			"ok    v1 API: hs.test runs Dendrite 0.13.8; v1 is on, as needed: Dendrite speaks only the v1 identity API", "Verdict: OK:"}},
		{name: "SMS delegation with v1 off", args: []string{"-sms-delegate"}, wantText: []string{
			"FAIL  v1 API: hs.test runs Synapse 1.120.0; v1 is off, but Synapse's SMS delegate (account_threepid_delegates.msisdn) calls v1 paths",
			"breaks: phone number validation that Synapse delegates to mxid", "hint: set v1 = true"}},
		{name: "onbind not served", edit: func(h *fakeHomeserver) { h.noOnbind = true }, wantText: []string{
			"FAIL  onbind: the homeserver does not serve onbind: POST, then PUT, to /_matrix/federation/v1/3pid/onbind answered HTTP 404",
			"breaks: third-party invites", "hint: onbind is part of the federation API", `Verdict: FAILED at "onbind"`}},
		{name: "software not named", edit: func(h *fakeHomeserver) { h.software = "" }, wantOK: true, wantText: []string{
			"warn  v1 API: which software hs.test runs is unknown", "v1 is off, which a Dendrite would need (v1 = true)", "Verdict: OK with 1 warning(s)"}},
		{name: "homeserver down", down: true, wantText: []string{
			"FAIL  signing keys: could not connect to https://127.0.0.1:", "breaks: unbind requests signed by Synapse",
			"skip  OpenID userinfo", "skip  onbind", "ok    public_base_url", "ok    server_name",
			"warn  v1 API: which software the homeserver runs is unknown (it was not reached)", `Verdict: FAILED at "signing keys"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHomeserver{name: "hs.test", signWith: key, publishKey: key, validUntil: time.Now().Add(time.Hour),
				openidStatus: 401, openidBody: `{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token"}`,
				software: "Synapse", version: "1.120.0"}
			if tc.edit != nil {
				tc.edit(h)
			}
			dir := t.TempDir()
			hs, caFile := serveTLS(t, h, dir)
			// mxid as homeservers see it at public_base_url.
			id := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/_matrix/identity/versions" {
					http.NotFound(w, r)
					return
				}
				fmt.Fprint(w, `{"versions":["v1.1","v1.19"]}`)
			}))
			id.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some cases
			if tc.plainHTTP {
				id.Start()
			} else {
				id.StartTLS()
			}
			defer id.Close()

			roots := x509.NewCertPool() // what homeservers trust
			if !tc.untrusted {
				roots.AddCert(hs.Certificate()) // httptest's certificate: id's too
			}
			pin := hs.URL
			if tc.down {
				pin = fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
			}
			u, _ := url.Parse(id.URL)
			serverName := tc.serverName
			if serverName == "" {
				serverName = u.Host
			}
			config := fmt.Sprintf("server_name = %q\npublic_base_url = %q\ndata_dir = %q\n%s", serverName, id.URL, filepath.Join(dir, "data"), tc.config)
			config += fmt.Sprintf("[outbound]\ntimeout = \"5s\"\nca_file = %q\nallow_cidrs = [\"127.0.0.1/32\"]\n", caFile)
			config += fmt.Sprintf("[outbound.pins]\n\"hs.test\" = %q\n", pin)
			cfgPath := filepath.Join(dir, "mxid.toml")
			os.WriteFile(cfgPath, []byte(config), 0o600)

			var out, errOut bytes.Buffer
			c := &check{out: &out, stderr: &errOut, roots: roots}
			err := runCheck(context.Background(), c, append([]string{"homeserver", "hs.test", "-config", cfgPath}, tc.args...))
			wantCheck(t, err, &out, &errOut, tc.wantOK, tc.wantText)
		})
	}
}
