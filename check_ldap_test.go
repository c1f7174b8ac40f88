package main

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"mxid/lookup/slapdtest"
)

func TestCheckLDAP(t *testing.T) {
	seed := slapdtest.Person("alice", "mail", "Alice@Example.org", "mobile", "+44 7700 900123") +
		slapdtest.Person("bob", "mail", "bob@example.org") +
		slapdtest.Person("dave", "mail", "dave@example.org", "description", "@dave:other.example") +
		slapdtest.Person("eve", "mail", "eve@example.org", "description", "not an mxid") +
		slapdtest.Person("nomail") +
		slapdtest.Person("frank", "telephoneNumber", "020 7946 0000") // national format, default_region GB
	d := slapdtest.StartTLS(t, seed)
	dir := t.TempDir()
	good := fmt.Sprintf(`urls = [%q]
bind_dn = %q
bind_password = %q
base_dns = [%q]
preset = "openldap"
uid_domain = "example.org"
default_region = "GB"`, d.URL, slapdtest.Reader, slapdtest.ReaderPW, slapdtest.Base)
	tests := []struct {
		name string
		ldap string // the [ldap] section; "" for none
		args []string
		ok   bool
		want []string
	}{
		{"good, by email", good, []string{"alice@example.org"}, true, []string{
			"ok    settings: preset openldap; base DNs ou=people,dc=example,dc=org; filter (objectClass=inetOrgPerson); Matrix ID @<uid, lower-cased>:example.org",
			"ok    connect " + d.URL + ": connected to 127.0.0.1:",
			"ok    bind: bound as " + slapdtest.Reader,
			"ok    base DNs: ou=people,dc=example,dc=org: found",
			"ok    lookup email alice@example.org: filter (&(objectClass=inetOrgPerson)(|(mail=alice@example.org))) under ou=people,dc=example,dc=org: 1 entry: uid=alice,ou=people,dc=example,dc=org -> @alice:example.org (uid: \"alice\"); the LDAP source answers @alice:example.org",
			"ok    sync query: 5 entries in 1 page(s) of at most 500, 6 usable 3PID(s) for 5 Matrix ID(s); sample: uid=",
			"Verdict: OK: mxid can read the directory"}},
		{"good, by phone", good, []string{"+44 7700 900123"}, true, []string{
			"ok    lookup msisdn 447700900123: filter (&(objectClass=inetOrgPerson)(|(mobile=+447700900123)(mobile=447700900123)(mobile=+44 7700 900123)(mobile=07700 900123)(mobile=07700900123)(telephoneNumber=+447700900123)(telephoneNumber=447700900123)(telephoneNumber=+44 7700 900123)(telephoneNumber=07700 900123)(telephoneNumber=07700900123)))",
			"-> @alice:example.org", "the LDAP source answers @alice:example.org", "Verdict: OK"}},
		{"a phone number held in national format", good, []string{"+44 20 7946 0000"}, true, []string{
			"ok    lookup msisdn 442079460000: filter ", "1 entry: uid=frank,ou=people,dc=example,dc=org -> @frank:example.org", "the LDAP source answers @frank:example.org", "Verdict: OK"}},
		{"asked in national format", good, []string{"020 7946 0000"}, true, []string{
			"ok    lookup msisdn 442079460000: filter ", "the LDAP source answers @frank:example.org", "Verdict: OK"}},
		{"no address: connection, bind and sync only", good, nil, true, []string{"ok    sync query:", "Verdict: OK"}},
		{"StartTLS with the CA", good + fmt.Sprintf("\nstarttls = true\nca_file = %q", d.CAFile), nil, true, []string{
			"StartTLS: TLS 1.3, certificate for 127.0.0.1 issued by \"mxid test CA\"", "Verdict: OK"}},
		{"LDAPS without the CA", strings.Replace(good, d.URL, d.TLSURL, 1), nil, false, []string{
			"FAIL  connect " + d.TLSURL + ": the directory's certificate is not from a CA this machine trusts",
			"hint: set [ldap] ca_file", `Verdict: FAILED at "connect ` + d.TLSURL + `"`}},
		{"StartTLS without the CA", good + "\nstarttls = true", nil, false, []string{
			"FAIL  connect " + d.URL + ": the directory's certificate is not from a CA this machine trusts", "hint: set [ldap] ca_file"}},
		{"wrong password", strings.Replace(good, slapdtest.ReaderPW, "not-the-password", 1), []string{"alice@example.org"}, false, []string{
			"ok    connect", "FAIL  bind: the directory refused the bind DN and password: LDAP result 49 (Invalid Credentials)\n",
			"hint: check [ldap] bind_dn (\"cn=isreader,dc=example,dc=org\") and bind_password", `Verdict: FAILED at "bind"`}},
		{"wrong port", strings.Replace(good, d.URL, fmt.Sprintf("ldap://127.0.0.1:%d", freePort(t)), 1), nil, false, []string{
			"FAIL  connect ldap://127.0.0.1:", "could not connect to the directory", "connection refused", "hint: check the host and port in [ldap] urls"}},
		{"wrong base DN", strings.Replace(good, slapdtest.Base, "ou=staff,dc=example,dc=org", 1), nil, false, []string{
			"FAIL  base DNs: ou=staff,dc=example,dc=org: a base DN does not exist", "hint: check [ldap] base_dns"}},
		{"a filter that finds nothing", good + "\nfilter = \"(objectClass=posixAccount)\"", []string{"alice@example.org"}, false, []string{
			"FAIL  lookup email alice@example.org: no entry holds this address: filter (&(objectClass=posixAccount)(|(mail=alice@example.org))) under ou=people,dc=example,dc=org: 0 entries",
			"hint: the address is not in the directory as mxid searches it: check [ldap] email_attributes",
			"FAIL  sync query: the sync query found no entries", "hint: no entry matches: check [ldap] filter"}},
		{"an address not in the directory", good, []string{"nobody@example.org"}, false, []string{
			"FAIL  lookup email nobody@example.org: no entry holds this address", "ok    sync query"}},
		{"a mapping that yields nothing for the address", strings.Replace(good, `preset = "openldap"`, `preset = "openldap"`+"\nmxid_attribute = \"description\"", 1) + "\nsync_interval = \"0s\"", []string{"eve@example.org"}, false, []string{
			"Matrix ID from attribute description",
			`FAIL  lookup email eve@example.org: the entries yield no Matrix ID: filter (&(objectClass=inetOrgPerson)(|(mail=eve@example.org))) under ou=people,dc=example,dc=org: 1 entry: uid=eve,ou=people,dc=example,dc=org yields no Matrix ID (description "not an mxid" is not a Matrix ID like @user:example.org)`,
			"hint: set [ldap] uid_attribute (with uid_domain",
			"warn  sync query: 5 entries in 1 page(s) of at most 500, 1 usable 3PID(s) for 1 Matrix ID(s); sample: uid=dave,ou=people,dc=example,dc=org -> @dave:other.example (description: \"@dave:other.example\") for email dave@example.org; 4 entries left out",
			"sync_interval = 0: the sync is off"}},
		{"no [ldap]", "", nil, false, []string{
			"FAIL  settings: no directory is configured ([ldap] urls is empty)", "hint: to use a directory, set [ldap] urls", `Verdict: FAILED at "settings"`}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			config := fmt.Sprintf("data_dir = %q\n", filepath.Join(dir, "data"))
			if tc.ldap != "" {
				config += "[ldap]\n" + tc.ldap + "\n"
			}
			path := writeFile(t, dir, fmt.Sprintf("mxid%d.toml", i), config)
			var out, errb bytes.Buffer
			err := run(t.Context(), append([]string{"check", "ldap", "-config", path}, tc.args...), &out, &errb)
			if (err == nil) != tc.ok {
				t.Errorf("err = %v, want ok=%v", err, tc.ok)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s%s", out.String(), errb.String())
			}
		})
	}

	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"check", "ldap", "not an address"}, &out, &errb); err == nil || !strings.Contains(errb.String(), "usage: mxid check ldap") {
		t.Errorf("a bad ADDRESS: %v\n%s", err, errb.String())
	}
}
