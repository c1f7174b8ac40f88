package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"mxid/lookup/dnstest"
	"mxid/mail/smtptest"
)

// TestCheckDNS runs `mxid check dns` against a DNS server on 127.0.0.1 and
// an HTTPS identity server that answers as several hosts: is.remote.test
// (a v2 identity server), auth.remote.test (wants a token for v2, serves
// v1), web.remote.test (a web server, not an identity server).
func TestCheckDNS(t *testing.T) {
	ca := smtptest.NewCA(t)
	caFile := ca.WritePEM(t)
	is := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case host == "web.remote.test":
			http.NotFound(w, r)
		case r.URL.Path == "/_matrix/identity/v2" || r.URL.Path == "/_matrix/identity/api/v1":
			fmt.Fprint(w, `{}`)
		case r.URL.Path == "/_matrix/identity/v2/hash_details" && host == "auth.remote.test":
			w.WriteHeader(401)
			fmt.Fprint(w, `{"errcode":"M_UNAUTHORIZED","error":"Unrecognised access token"}`)
		case r.URL.Path == "/_matrix/identity/v2/hash_details":
			fmt.Fprint(w, `{"algorithms":["sha256"],"lookup_pepper":"matrixrocks"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	is.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "is.remote.test", "auth.remote.test", "web.remote.test")}}
	is.Config.ErrorLog = log.New(io.Discard, "", 0)
	is.StartTLS()
	defer is.Close()
	_, port, _ := net.SplitHostPort(is.Listener.Addr().String())
	dead := fmt.Sprint(freePort(t))
	dns := dnstest.Start(t,
		"_matrix-identity._tcp.remote.test. 60 IN SRV 10 5 "+port+" is.remote.test.",
		"is.remote.test. 60 IN A 127.0.0.1",
		"auth.remote.test. 60 IN A 127.0.0.1",
		"web.remote.test. 60 IN A 127.0.0.1",
		"dead.remote.test. 60 IN A 127.0.0.1",
		// Two servers: the first does not answer, lookups go on to the second.
		"_matrix-identity._tcp.two.test. 300 IN SRV 10 5 "+dead+" dead.remote.test.",
		"_matrix-identity._tcp.two.test. 300 IN SRV 20 5 "+port+" is.remote.test.",
		"_matrix-identity._tcp.auth.test. 60 IN SRV 10 5 "+port+" auth.remote.test.",
		"_matrix-identity._tcp.web.test. 60 IN SRV 10 5 "+port+" web.remote.test.",
		"_matrix-identity._tcp.none.test. 60 IN SRV 0 0 0 .",
		"_matrix-identity._tcp.nowhere.test. 60 IN SRV 10 5 "+port+" missing.remote.test.",
		"nosrv.test. 60 IN A 127.0.0.1",
	)
	dir := t.TempDir()
	base := fmt.Sprintf("server_name = \"id.example.org\"\ndata_dir = %q\n", filepath.Join(dir, "data"))
	outbound := fmt.Sprintf("[outbound]\ndns_server = %q\nca_file = %q\ntimeout = \"5s\"\n", dns.Addr, caFile)
	allow := "allow_cidrs = [\"127.0.0.0/8\"]\n"
	good := base + "[lookup]\nrecursion_cidrs = [\"10.0.0.0/8\"]\n[dns]\nenabled = true\n" + outbound + allow
	tests := []struct {
		name   string
		config string
		arg    string
		ok     bool
		want   []string
	}{
		{"good", good, "remote.test", true, []string{
			"ok    settings: SRV records asked at " + dns.Addr + " (outbound.dns_server); lookups from 10.0.0.0/8 may be passed on",
			"ok    SRV _matrix-identity._tcp.remote.test: 1 record(s), in the order mxid tries them: priority 10 weight 5 -> is.remote.test:" + port + " (TTL 60s)",
			"ok    resolve is.remote.test: is.remote.test resolves to 127.0.0.1",
			"ok    identity server https://is.remote.test:" + port + ": an identity server: /v2 answers, /v2/hash_details offers [sha256]",
			"Verdict: OK: lookups of remote.test addresses"}},
		{"an email address", good, "Alice@Remote.Test", true, []string{"ok    SRV _matrix-identity._tcp.remote.test:", "Verdict: OK"}},
		{"dns off, no recursion", base + outbound + allow, "remote.test", true, []string{
			"warn  settings:", "[dns] enabled = false", "recursion_cidrs is empty", "Verdict: OK with 1 warning(s)"}},
		{"a private address, refused", base + "[lookup]\nrecursion_cidrs = [\"10.0.0.0/8\"]\n[dns]\nenabled = true\n" + outbound, "remote.test", false, []string{
			"FAIL  resolve is.remote.test: refused by the outbound policy: is.remote.test resolves to 127.0.0.1, which mxid does not connect to",
			"hint: mxid refuses private, loopback and reserved addresses", "[outbound] allow_cidrs", `Verdict: FAILED at "resolve is.remote.test"`}},
		{"the first server is down", good, "two.test", true, []string{
			"priority 10 weight 5 -> dead.remote.test:" + dead + " (TTL 300s); priority 20 weight 5 -> is.remote.test:" + port,
			"warn  identity server https://dead.remote.test:" + dead + ":", "connection refused", "lookups try the next server",
			"ok    identity server https://is.remote.test:" + port + ": an identity server", "Verdict: OK with 1 warning(s)"}},
		{"no SRV record: the domain itself", good, "nosrv.test", false, []string{
			"ok    SRV _matrix-identity._tcp.nosrv.test: no record: mxid falls back to https://nosrv.test (port 443)",
			"ok    resolve nosrv.test: nosrv.test resolves to 127.0.0.1",
			"FAIL  identity server https://nosrv.test: no SRV record, and the domain itself does not work as its identity server",
			"hint: publish an SRV record _matrix-identity._tcp.nosrv.test pointing at the identity server's host and port"}},
		{"SRV target \".\"", good, "none.test", false, []string{
			"FAIL  SRV _matrix-identity._tcp.none.test: the domain says it has no identity server: 1 record(s), in the order mxid tries them: priority 0 weight 0 -> .:0", "nothing to fix in mxid"}},
		{"a target without an address", good, "nowhere.test", false, []string{
			"FAIL  resolve missing.remote.test: the name does not resolve: lookup missing.remote.test on " + dns.Addr + ": no such host", "hint: check the SRV record's target"}},
		{"not an identity server", good, "web.test", false, []string{
			"FAIL  identity server https://web.remote.test:" + port + ": not an identity server: GET https://web.remote.test:" + port + "/_matrix/identity/v2 answered HTTP 404",
			"hint: the SRV record _matrix-identity._tcp.web.test must name the host and port of an identity server"}},
		{"a token wanted", good, "auth.test", false, []string{
			"FAIL  identity server https://auth.remote.test:" + port + ": the identity server wants an access token: an identity server (/v2/hash_details answered HTTP 401 M_UNAUTHORIZED)",
			"hint: lookups there will fail: set [dns] allow_v1_fallback = true"}},
		{"a token wanted, v1 allowed", strings.Replace(good, "enabled = true\n", "enabled = true\nallow_v1_fallback = true\n", 1), "auth.test", true, []string{
			"warn  identity server https://auth.remote.test:" + port + ":", "lookups there use its v1 API", "Verdict: OK with 1 warning(s)"}},
		{"an untrusted certificate", strings.Replace(good, "ca_file", "# ca_file", 1), "remote.test", false, []string{
			"FAIL  identity server https://is.remote.test:" + port + ": the identity server's certificate is not from a trusted CA", "[outbound] ca_file"}},
		{"the DNS server does not answer", strings.Replace(good, dns.Addr, "127.0.0.1:"+fmt.Sprint(freePort(t)), 1), "remote.test", false, []string{
			"FAIL  SRV _matrix-identity._tcp.remote.test: the DNS query failed", "hint: the DNS server must answer from this machine: check [outbound] dns_server"}},
		{"our own domain", good, "id.example.org", false, []string{
			"FAIL  settings: this is one of this server's own names", "hint: give the domain of another organisation's addresses"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, dir, fmt.Sprintf("mxid%d.toml", i), tc.config)
			var out, errb bytes.Buffer
			err := run(t.Context(), []string{"check", "dns", "-config", path, tc.arg}, &out, &errb)
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
	for _, bad := range []string{"not a domain", "alice@", "127.0.0.1"} {
		var out, errb bytes.Buffer
		if err := run(t.Context(), []string{"check", "dns", "-config", writeFile(t, dir, "bad.toml", good), bad}, &out, &errb); err == nil || !strings.Contains(errb.String(), "usage: mxid check dns") {
			t.Errorf("check dns %q: %v\n%s", bad, err, errb.String())
		}
	}
}
