package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mxid/server/federation"
	"mxid/server/signing"
)

// fakeHomeserver is an httptest TLS homeserver answering what check
// federation and check homeserver ask; the knobs break it in the ways
// operators meet.
type fakeHomeserver struct {
	name         string // server_name it claims in its keys
	signWith     *signing.Key
	publishKey   *signing.Key
	validUntil   time.Time
	openidStatus int
	openidBody   string
	noOnbind     bool   // the federation listener does not serve onbind
	software     string // what /_matrix/federation/v1/version names ("": 404)
	version      string
}

func (h *fakeHomeserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_matrix/key/v2/server":
		doc := map[string]any{
			"server_name":     h.name,
			"valid_until_ts":  h.validUntil.UnixMilli(),
			"verify_keys":     map[string]any{h.publishKey.ID: map[string]any{"key": h.publishKey.PublicBase64()}},
			"old_verify_keys": map[string]any{},
		}
		signed, err := h.signWith.Sign(doc, h.name)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		json.NewEncoder(w).Encode(signed)
	case "/_matrix/federation/v1/openid/userinfo":
		if r.URL.Query().Get("access_token") == "" {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(h.openidStatus)
		fmt.Fprint(w, h.openidBody)
	case federation.OnbindPath:
		// As Synapse: an association's invites are processed, an
		// association without any is nothing to do.
		var assoc struct {
			Medium, Address, MXID string
			Invites               []any
		}
		if h.noOnbind {
			http.NotFound(w, r)
		} else if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&assoc) != nil || assoc.Medium == "" || assoc.MXID == "" || assoc.Invites == nil || len(assoc.Invites) > 0 {
			w.WriteHeader(400)
			fmt.Fprint(w, `{"errcode":"M_BAD_JSON","error":"not the test association"}`)
		} else {
			fmt.Fprint(w, `{}`)
		}
	case "/_matrix/federation/v1/version":
		if h.software == "" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"server": map[string]string{"name": h.software, "version": h.version}})
	default:
		http.NotFound(w, r)
	}
}

func TestCheckFederation(t *testing.T) {
	key, _ := signing.NewKey("ed25519:a1")
	other, _ := signing.NewKey("ed25519:a1")
	good := func() *fakeHomeserver {
		return &fakeHomeserver{name: "hs.test", signWith: key, publishKey: key, validUntil: time.Now().Add(time.Hour),
			openidStatus: 401, openidBody: `{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token"}`}
	}
	tests := []struct {
		name     string
		server   string // the SERVER_NAME argument
		edit     func(h *fakeHomeserver)
		untrust  bool // leave the test CA out of outbound.ca_file
		down     bool // pin to a closed port
		wantOK   bool
		wantText []string
	}{
		{name: "reachable homeserver", server: "hs.test", wantOK: true, wantText: []string{
			"ok    server name", "ok    discovery: requests go to https://127.0.0.1:", "pinned in [outbound.pins]",
			"ok    signing keys: 1 key(s) (ed25519:a1), self-signature verifies",
			"ok    OpenID userinfo: reachable: a made-up token got 401 M_UNKNOWN_TOKEN",
			"Verdict: OK: users of hs.test can register"}},
		{name: "invalid server name", server: "hs test", wantText: []string{
			`FAIL  server name: "hs test" is not a valid server name`, "skip  signing keys", "Verdict: FAILED"}},
		{name: "keys signed by another key", server: "hs.test", edit: func(h *fakeHomeserver) { h.signWith = other }, wantText: []string{
			"FAIL  signing keys: the self-signature with ed25519:a1 does not verify", "skip  OpenID userinfo", `Verdict: FAILED at "signing keys"`}},
		{name: "keys of another server", server: "hs.test", edit: func(h *fakeHomeserver) { h.name = "elsewhere.test" }, wantText: []string{
			`FAIL  signing keys: the keys are for "elsewhere.test", not "hs.test"`, "hint: "}},
		{name: "expired key answer", server: "hs.test", edit: func(h *fakeHomeserver) { h.validUntil = time.Now().Add(-time.Hour) }, wantOK: true, wantText: []string{
			"warn  signing keys:", "which has passed", "Verdict: OK with 1 warning(s)"}},
		{name: "no OpenID endpoint", server: "hs.test", edit: func(h *fakeHomeserver) { h.openidStatus, h.openidBody = 404, `{"errcode":"M_UNRECOGNIZED"}` }, wantText: []string{
			"FAIL  OpenID userinfo: the homeserver does not serve /_matrix/federation/v1/openid/userinfo", `"openid"`}},
		{name: "accepts any token", server: "hs.test", edit: func(h *fakeHomeserver) { h.openidStatus, h.openidBody = 200, `{"sub":"@a:hs.test"}` }, wantText: []string{
			"FAIL  OpenID userinfo: the homeserver accepted a made-up OpenID token"}},
		{name: "untrusted certificate", server: "hs.test", untrust: true, wantText: []string{
			"FAIL  signing keys: the certificate of https://127.0.0.1:", "not from a trusted CA", "ca_file"}},
		{name: "homeserver down", server: "hs.test", down: true, wantText: []string{
			"FAIL  signing keys: could not connect to https://127.0.0.1:", "connection refused", "hint: is the homeserver running"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := good()
			if tc.edit != nil {
				tc.edit(h)
			}
			dir := t.TempDir()
			hs, caFile := serveTLS(t, h, dir)
			pin := hs.URL
			if tc.down {
				pin = fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
			}
			config := fmt.Sprintf("data_dir = %q\n[outbound]\ntimeout = \"5s\"\n", filepath.Join(dir, "data"))
			if !tc.untrust {
				config += fmt.Sprintf("ca_file = %q\n", caFile)
			}
			config += fmt.Sprintf("[outbound.pins]\n\"hs.test\" = %q\n", pin)
			cfgPath := filepath.Join(dir, "mxid.toml")
			os.WriteFile(cfgPath, []byte(config), 0o600)

			var out, errOut bytes.Buffer
			// The server name may come before or after the flags.
			err := run(context.Background(), []string{"check", "federation", tc.server, "-config", cfgPath}, &out, &errOut)
			wantCheck(t, err, &out, &errOut, tc.wantOK, tc.wantText)
		})
	}
}

// serveTLS serves h over HTTPS until the test ends; caFile (written in
// dir) holds its certificate.
func serveTLS(t *testing.T, h http.Handler, dir string) (srv *httptest.Server, caFile string) {
	t.Helper()
	srv = httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some cases
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile = filepath.Join(dir, "hs-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, caFile
}

// wantCheck asserts a check's outcome (err) and that its output holds
// each of wantText.
func wantCheck(t *testing.T, err error, out, errOut *bytes.Buffer, wantOK bool, wantText []string) {
	t.Helper()
	text := out.String()
	if (err == nil) != wantOK {
		t.Errorf("check returned %v, want ok=%v", err, wantOK)
	}
	for _, want := range wantText {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s%s", text, errOut.String())
	}
}

func TestCheckUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"check", "help"}, &out, &errOut); err != nil || !strings.Contains(out.String(), "mxid check federation SERVER_NAME") {
		t.Errorf("check help: %v\n%s", err, out.String())
	}
	if err := run(context.Background(), []string{"check", "nonsense"}, &out, &errOut); err == nil || !strings.Contains(errOut.String(), `unknown check "nonsense"`) {
		t.Errorf("unknown check: %v\n%s", err, errOut.String())
	}
	errOut.Reset()
	if err := run(context.Background(), []string{"check", "federation"}, &out, &errOut); err == nil || !strings.Contains(errOut.String(), "usage: mxid check federation") {
		t.Errorf("missing argument: %v\n%s", err, errOut.String())
	}
}
