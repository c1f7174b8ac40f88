package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mxid/lookup/slapdtest"
)

// TestServeDirectorySearch runs `mxid serve` configured as the README
// says, in front of a homeserver stand-in: searching "ali acc" finds
// Alice from accounting next to the homeserver's own results; a request
// without a token gets the homeserver's 401; no answer carries an email
// address.
func TestServeDirectorySearch(t *testing.T) {
	d := slapdtest.Start(t, slapdtest.Person("alice.martin", "displayName", "Alice Martin (Accounting)", "mail", "alice.martin@mail.example.com")+
		slapdtest.Person("bob", "displayName", "bob@mail.example.com", "mail", "bob@mail.example.com"))
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Header.Get("Authorization") != "Bearer syt_alicia":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errcode":"M_MISSING_TOKEN","error":"Missing access token"}`)
		case r.URL.Path == "/_matrix/client/v3/account/whoami":
			io.WriteString(w, `{"user_id":"@alicia:example.org"}`)
		default:
			io.WriteString(w, `{"results":[{"user_id":"@alicia:example.org","display_name":"Alicia Accardo","avatar_url":"mxc://example.org/a"}],"limited":false}`)
		}
	}))
	defer hs.Close()
	dir := t.TempDir()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	config := fmt.Sprintf(`server_name = "id.test"
public_base_url = %q
data_dir = %q
[http]
listen = "127.0.0.1:%d"
[outbound]
allow_cidrs = ["127.0.0.1/32"]
[ldap]
urls = [%q]
bind_dn = %q
bind_password = %q
base_dns = [%q]
preset = "openldap"
uid_domain = "example.org"
[directory]
enabled = true
homeserver_url = %q
`, base, filepath.Join(dir, "data"), port, d.URL, slapdtest.Reader, slapdtest.ReaderPW, slapdtest.Base, hs.URL)
	mxid := startServe(t, config)
	if !mxid.log.waitFor("ldap sync done") || !mxid.log.waitFor("msg=serving") {
		t.Fatal("mxid stopped before the first sync")
	}
	if !strings.Contains(mxid.log.String(), `msg="directory search" enabled=true`) {
		t.Error("the start-up log does not say the directory search is on")
	}
	search := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, base+"/_matrix/client/v3/user_directory/search", strings.NewReader(`{"search_term":"ali acc"}`))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	status, body := search("syt_alicia")
	want := `{"results":[{"user_id":"@alicia:example.org","display_name":"Alicia Accardo","avatar_url":"mxc://example.org/a"},{"user_id":"@alice.martin:example.org","display_name":"Alice Martin (Accounting)"}],"limited":false}`
	if status != 200 || body != want {
		t.Errorf("search: %d %s\nwant %s", status, body, want)
	}
	if status, body := search(""); status != 401 || body != `{"errcode":"M_MISSING_TOKEN","error":"Missing access token"}` {
		t.Errorf("without a token: %d %s", status, body)
	}
	for _, term := range []string{"bob", "mail", "b"} {
		_, got := postJSON(t, base+"/_matrix/client/v3/user_directory/search", "syt_alicia", map[string]any{"search_term": term})
		if s := fmt.Sprint(got); strings.Contains(s, "mail.example.com") {
			t.Errorf("search %q: %s", term, s)
		}
	}
}

// check-config reports a homeserver_url the outbound policy would refuse,
// and a [directory] without a synced [ldap].
func TestCheckConfigDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mxid.toml")
	os.WriteFile(path, []byte(`[directory]
enabled = true
homeserver_url = "http://127.0.0.1:8008"
filter = "(memberOf=cn=x"
display_name_attributes = ["display name"]
`), 0o600)
	_, err := loadConfig(path)
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("loadConfig: %v", err)
	}
	for _, want := range []string{
		`:3: directory.homeserver_url: 127.0.0.1 is a loopback, private or special address, which the outbound policy refuses; add it to outbound.allow_cidrs (e.g. "127.0.0.1/32")`,
		"directory.enabled needs an [ldap] directory with sync_interval > 0",
		`:4: directory.filter: "(memberOf=cn=x"`,
		`:5: directory.display_name_attributes: "display name" is not an attribute name`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("check-config does not say %s:\n%v", want, err)
		}
	}
}
