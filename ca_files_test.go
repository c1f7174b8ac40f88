package main

import (
	"strings"
	"testing"
)

// Every CA file follows one rule (server/outbound.LoadRoots), so
// check-config refuses a file that holds no certificate wherever it is
// named, each problem naming its file; [ldap] ca_file used to be checked
// only for existence and failed later, at start-up.
func TestCheckConfigCAFiles(t *testing.T) {
	dir := t.TempDir()
	key := writeFile(t, dir, "key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	empty := writeFile(t, dir, "empty.pem", "")
	path := writeFile(t, dir, "mxid.toml", `
server_name = "id.example.org"
public_base_url = "https://id.example.org"
data_dir = "`+dir+`"
[outbound]
ca_file = "`+key+`"
[email]
mode = "starttls"
host = "smtp.example.org"
from = "noreply@example.org"
ca_file = "`+empty+`"
[ldap]
urls = ["ldaps://ldap.example.org"]
base_dns = ["dc=example,dc=org"]
preset = "openldap"
uid_domain = "example.org"
ca_file = "`+key+`"
[tls]
mode = "acme"
ca_roots_file = "`+dir+`/missing.pem"
`)
	report := checkConfig(t, path)
	for _, want := range []string{
		"outbound.ca_file: " + key + " holds no PEM certificate (-----BEGIN CERTIFICATE-----), only PRIVATE KEY",
		"email.ca_file: " + empty + " holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
		"ldap.ca_file: " + key + " holds no PEM certificate (-----BEGIN CERTIFICATE-----), only PRIVATE KEY",
		"tls.ca_roots_file: open " + dir + "/missing.pem: no such file or directory",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("check-config report lacks %q:\n%s", want, report)
		}
	}
}
