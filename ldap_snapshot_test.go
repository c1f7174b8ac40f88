package main

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"mxid/lookup/slapdtest"
)

// TestLDAPDirectoryAcrossRestart: mxid syncs a real slapd, the directory
// goes down, mxid restarts: hashed, plaintext and v1 lookups of directory
// users are still answered (from the stored snapshot), including a phone
// number the directory holds in national format, and the outage is logged
// once.
func TestLDAPDirectoryAcrossRestart(t *testing.T) {
	d := slapdtest.Start(t, slapdtest.Person("alice", "mail", "Alice@Example.org")+
		slapdtest.Person("frank", "mail", "frank@example.org", "telephoneNumber", "020 7946 0000"))
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"sub":"@%s:hs.test"}`, r.URL.Query().Get("access_token"))
	}))
	defer hs.Close()
	dir := t.TempDir()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	config := fmt.Sprintf(`server_name = "id.test"
public_base_url = %q
data_dir = %q
v1 = true
[http]
listen = "127.0.0.1:%d"
[outbound.pins]
"hs.test" = %q
[lookup]
algorithms = ["sha256", "none"]
[ldap]
urls = [%q]
bind_dn = %q
bind_password = %q
base_dns = [%q]
preset = "openldap"
uid_domain = "example.org"
default_region = "GB"
`, base, filepath.Join(dir, "data"), port, hs.URL, d.URL, slapdtest.Reader, slapdtest.ReaderPW, slapdtest.Base)

	mxid := startServe(t, config)
	if !mxid.log.waitFor("ldap sync done") || !mxid.log.waitFor("msg=serving") {
		t.Fatal("mxid stopped before the first sync")
	}
	_, reg := postJSON(t, base+"/_matrix/identity/v2/account/register", "", map[string]any{"access_token": "bob", "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600})
	token, _ := reg["token"].(string)
	if token == "" {
		t.Fatalf("register: %v", reg)
	}
	check := func(when string) {
		t.Helper()
		st, details := getJSON(t, base+"/_matrix/identity/v2/hash_details", token)
		pepper, _ := details["lookup_pepper"].(string)
		if st != 200 || pepper == "" {
			t.Fatalf("%s: hash_details %d %v", when, st, details)
		}
		hash := func(s string) string {
			h := sha256.Sum256([]byte(s + " " + pepper))
			return base64.RawURLEncoding.EncodeToString(h[:])
		}
		hashes := []string{hash("alice@example.org email"), hash("442079460000 msisdn")}
		_, got := postJSON(t, base+"/_matrix/identity/v2/lookup", token, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": hashes})
		if m, _ := got["mappings"].(map[string]any); m[hashes[0]] != "@alice:example.org" || m[hashes[1]] != "@frank:example.org" {
			t.Errorf("%s: sha256 lookup: %v", when, got)
		}
		plain := []string{"alice@example.org email", "442079460000 msisdn", "nobody@example.org email"}
		_, got = postJSON(t, base+"/_matrix/identity/v2/lookup", token, map[string]any{"algorithm": "none", "pepper": pepper, "addresses": plain})
		if m, _ := got["mappings"].(map[string]any); m[plain[0]] != "@alice:example.org" || m[plain[1]] != "@frank:example.org" || len(m) != 2 {
			t.Errorf("%s: plaintext lookup: %v", when, got)
		}
		_, v1 := getJSON(t, base+"/_matrix/identity/api/v1/lookup?medium=msisdn&address=442079460000", "")
		if v1["mxid"] != "@frank:example.org" {
			t.Errorf("%s: v1 lookup: %v", when, v1)
		}
		_, bulk := postJSON(t, base+"/_matrix/identity/api/v1/bulk_lookup", "", map[string]any{"threepids": [][]string{{"email", "alice@example.org"}}})
		if fmt.Sprint(bulk["threepids"]) != "[[email alice@example.org @alice:example.org]]" {
			t.Errorf("%s: v1 bulk lookup: %v", when, bulk)
		}
	}
	check("directory up")
	mxid.stop(t)

	d.Stop()
	mxid = startServe(t, config)
	if !mxid.log.waitFor("ldap sync failed") || !mxid.log.waitFor("msg=serving") {
		t.Fatal("mxid stopped before its first sync")
	}
	check("directory down, mxid restarted")
	check("directory still down")
	text := mxid.log.String()
	for want, n := range map[string]int{
		"hashed lookups use the stored directory snapshot until the first sync": 1,
		"answered from the stored snapshot":                                     1,
		"lookup source failed":                                                  0,
	} {
		if got := strings.Count(text, want); got != n {
			t.Errorf("the log holds %q %d times, want %d", want, got, n)
		}
	}
}
