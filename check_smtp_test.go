package main

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"mxid/mail/smtptest"
)

func TestCheckSMTP(t *testing.T) {
	ca := smtptest.NewCA(t)
	srv := smtptest.Start(t, smtptest.Options{Mode: "starttls", Cert: ca.Issue(t, "localhost"), Username: "mxid", Password: "pw"})
	caFile := ca.WritePEM(t)
	dir := t.TempDir()
	config := func(name, email string) string {
		return writeFile(t, dir, name, fmt.Sprintf("data_dir = %q\n[email]\n%s\n", filepath.Join(dir, "data"), email))
	}
	good := fmt.Sprintf("mode = \"starttls\"\nhost = \"localhost\"\nport = %d\nfrom = \"mxid <id@example.org>\"\nusername = \"mxid\"\npassword = \"pw\"\nca_file = %q\ntimeout = \"3s\"", srv.Port, caFile)
	for _, c := range []struct {
		name, email string
		ok          bool
		want        []string
	}{
		{"good", good, true, []string{"ok    connect", "ok    STARTTLS", "ok    authentication: logged in as mxid", "ok    send a test message", "Verdict: OK"}},
		{"untrusted", strings.Replace(good, "ca_file", "# ca_file", 1), false, []string{"FAIL  STARTTLS", "hint: for a private CA, set [email] ca_file", "Verdict: FAILED"}},
		{"wrong password", strings.Replace(good, `password = "pw"`, `password = "nope"`, 1), false, []string{"FAIL  authentication", "hint: check [email] username and password"}},
		{"nothing listening", strings.Replace(good, fmt.Sprint(srv.Port), "1", 1), false, []string{"FAIL  connect", "hint: check [email] host and port"}},
		{"log mode", "mode = \"log\"", false, []string{"FAIL  settings", `hint: set [email] mode to "starttls"`}},
	} {
		before := len(srv.Messages())
		var out, errb bytes.Buffer
		err := run(t.Context(), []string{"check", "smtp", "-config", config(c.name+".toml", c.email), "-to", "alice@example.org"}, &out, &errb)
		if (err == nil) != c.ok {
			t.Errorf("%s: err = %v\n%s%s", c.name, err, out.String(), errb.String())
		}
		for _, w := range c.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out.String())
			}
		}
		sent := len(srv.Messages()) - before
		if c.ok && sent != 1 || !c.ok && sent != 0 {
			t.Errorf("%s: %d messages arrived", c.name, sent)
		}
	}
	if m := srv.Messages(); len(m) == 0 || m[len(m)-1].To[0] != "alice@example.org" {
		t.Errorf("test message not delivered to the address asked")
	}
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"check", "smtp"}, &out, &errb); err == nil {
		t.Error("check smtp without -to succeeded")
	}
}
