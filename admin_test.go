package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pgtest"
	"mxid/lookup/threepid"
	"mxid/mail/smtptest"
	"mxid/server"
)

// adminEnv is a running mxid (in this process) with users who registered,
// validated their addresses by mail and bound them, as an operator finds
// it when a data-protection request comes in.
type adminEnv struct {
	t        *testing.T
	base     string // the API
	config   string // path of the configuration mxid admin is given
	dataDir  string
	database string // PostgreSQL URL, "" for bbolt
	srv      *serving
	smtp     *smtptest.Server
	mails    int
	tokens   map[string]string // user -> identity server token
}

// startAdminEnv starts mxid with a homeserver stand-in (OpenID for
// registration, onbind deliveries: refused for @carol) and an SMTP server.
func startAdminEnv(t *testing.T, databaseURL string) *adminEnv {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/_matrix/federation/v1/openid/userinfo":
			fmt.Fprintf(w, `{"sub":"@%s:hs.test"}`, r.URL.Query().Get("access_token"))
		case "/_matrix/federation/v1/3pid/onbind":
			var body struct{ MXID string }
			json.NewDecoder(r.Body).Decode(&body)
			if body.MXID == "@carol:hs.test" {
				http.Error(w, `{"errcode":"M_UNKNOWN"}`, 500)
				return
			}
			w.Write([]byte(`{}`))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(hs.Close)
	e := &adminEnv{t: t, dataDir: filepath.Join(t.TempDir(), "data"), database: databaseURL, tokens: map[string]string{},
		smtp: smtptest.Start(t, smtptest.Options{Mode: "plain"})}
	port := freePort(t)
	e.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	config := fmt.Sprintf(`server_name = "id.test"
public_base_url = %q
data_dir = %q
[http]
listen = "127.0.0.1:%d"
[outbound.pins]
"hs.test" = %q
[email]
mode = "plain"
host = "127.0.0.1"
port = %d
from = "mxid <noreply@id.test>"
`, e.base, e.dataDir, port, hs.URL, e.smtp.Port)
	if databaseURL != "" {
		config += fmt.Sprintf("[database]\nurl = %q\n", databaseURL)
	}
	e.config = filepath.Join(t.TempDir(), "mxid.toml")
	if err := os.WriteFile(e.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	e.srv = startServe(t, config)
	if !e.srv.log.waitFor(`msg=serving`) {
		t.Fatalf("mxid did not start:\n%s", e.srv.log.String())
	}
	return e
}

// call makes one API request with the user's token ("" for none).
func (e *adminEnv) call(method, path, user string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, e.base+"/_matrix/identity/v2"+path, rd)
	if tok := e.tokens[user]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (e *adminEnv) must(what string) func(int, map[string]any) map[string]any {
	return func(status int, body map[string]any) map[string]any {
		e.t.Helper()
		if status != 200 {
			e.t.Fatalf("%s: %d %v", what, status, body)
		}
		return body
	}
}

// register gives user (a localpart on hs.test) an identity server account.
func (e *adminEnv) register(user string) {
	e.t.Helper()
	b := e.must("register " + user)(e.call("POST", "/account/register", "", map[string]any{"access_token": user, "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600}))
	e.tokens[user] = b["token"].(string)
}

// bindByMail validates address the way a user does (the mailed link) and
// binds it to @user:hs.test.
func (e *adminEnv) bindByMail(user, address string) {
	e.t.Helper()
	secret := "secret" + strings.NewReplacer("@", "-", ".", "-").Replace(address)
	sid := e.must("requestToken")(e.call("POST", "/validate/email/requestToken", user, map[string]any{"email": address, "client_secret": secret, "send_attempt": 1}))["sid"].(string)
	e.mails++
	parsed, err := e.smtp.Wait(e.t, e.mails).Parse()
	if err != nil {
		e.t.Fatal(err)
	}
	link := regexp.MustCompile(`http://\S+/submitToken\?\S+`).FindString(parsed.Text)
	resp, err := http.Get(link)
	if err != nil || resp.StatusCode != 200 {
		e.t.Fatalf("following the link: %v %v", err, resp)
	}
	resp.Body.Close()
	e.must("bind " + address)(e.call("POST", "/3pid/bind", user, map[string]any{"sid": sid, "client_secret": secret, "mxid": "@" + user + ":hs.test"}))
}

// invite stores an invite from @user:hs.test to address (its mail counts).
func (e *adminEnv) invite(user, address string) {
	e.t.Helper()
	e.must("store-invite")(e.call("POST", "/store-invite", user, map[string]any{"medium": "email", "address": address, "room_id": "!room:hs.test", "sender": "@" + user + ":hs.test"}))
	e.mails++
	e.smtp.Wait(e.t, e.mails)
}

// lookup is what a sha256 lookup through the API finds for address ("" for
// nothing).
func (e *adminEnv) lookup(address string) string {
	e.t.Helper()
	return lookupVia(e.t, e.base, e.tokens["bob"], address)
}

// lookupVia asks the API at base for address with a sha256 lookup.
func lookupVia(t *testing.T, base, token, address string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/_matrix/identity/v2/hash_details", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var details map[string]any
	json.NewDecoder(resp.Body).Decode(&details)
	resp.Body.Close()
	pepper, _ := details["lookup_pepper"].(string)
	h := threepid.Hash(address, "email", pepper)
	raw, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{h}})
	req, _ = http.NewRequest("POST", base+"/_matrix/identity/v2/lookup", bytes.NewReader(raw))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Mappings map[string]string }
	json.NewDecoder(resp.Body).Decode(&out)
	return out.Mappings[h]
}

// admin runs `mxid admin -config … args` in this process: its output
// (stdout then stderr) and error.
func (e *adminEnv) admin(args ...string) (string, error) {
	return adminRun(e.config, args...)
}

// adminRun runs `mxid admin -config config args…` in this process.
func adminRun(config string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	err := run(context.Background(), append([]string{"admin", "-config", config}, args...), &out, &errb)
	return out.String() + errb.String(), err
}

// mustAdmin is admin that must succeed and print every one of wants.
func (e *adminEnv) mustAdmin(wants []string, args ...string) string {
	e.t.Helper()
	out, err := e.admin(args...)
	if err != nil {
		e.t.Fatalf("mxid admin %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			e.t.Errorf("mxid admin %s does not say %q:\n%s", strings.Join(args, " "), w, out)
		}
	}
	return out
}

// rawStore is everything the store holds as bytes: the bbolt file (free
// pages and all), or every table of the PostgreSQL database as pg_dump
// writes it.
func (e *adminEnv) rawStore() string {
	e.t.Helper()
	if e.database != "" {
		return pgtest.Dump(e.t, e.database)
	}
	b, err := os.ReadFile(filepath.Join(e.dataDir, db.FileName))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

// nowhere fails when the raw store holds address, as text or (bytea
// columns, meta values) as hex.
func (e *adminEnv) nowhere(raw, where string, addresses ...string) {
	e.t.Helper()
	for _, a := range addresses {
		if strings.Contains(raw, a) || strings.Contains(raw, hex.EncodeToString([]byte(a))) {
			i := strings.Index(raw, a)
			e.t.Errorf("%s still holds %s: …%q…", where, a, raw[max(0, i-200):min(len(raw), i+200)])
		}
	}
}

// An operator answering a data-protection request, on each backend: find
// an address, erase a user (three bindings, two pending invites sent, an
// account), prove afterwards when and by whom it was removed, with the
// addresses nowhere in the store or the info-level log; every other admin
// command on the running server's socket, with -json and clear errors; and
// the same tools on the store itself once the server has stopped.
func TestAdminCommands(t *testing.T) {
	onEachBackend(t, func(t *testing.T, database string) {
		url := ""
		if database != "" {
			url = regexp.MustCompile(`url = "(.*)"`).FindStringSubmatch(database)[1]
		}
		e := startAdminEnv(t, url)
		for _, u := range []string{"erin", "bob", "carol", "dave"} {
			e.register(u)
		}
		erin := []string{"erin@example.org", "erin.work@example.org", "erin3@example.org"}
		e.invite("bob", erin[2]) // delivered when Erin binds it
		for _, a := range erin {
			e.bindByMail("erin", a)
		}
		e.invite("erin", "friend1@example.org")
		e.invite("erin", "friend2@example.org")
		e.invite("bob", "carol@example.org")
		e.bindByMail("carol", "carol@example.org") // its delivery fails: queued
		e.bindByMail("dave", "dave@example.org")
		if got := e.lookup(erin[0]); got != "@erin:hs.test" {
			t.Fatalf("lookup before: %q", got)
		}

		// Find the address.
		e.mustAdmin([]string{"email erin@example.org", "bound to @erin:hs.test since", "1 validation session", "validated"}, "show", "Erin@Example.ORG")
		out := e.mustAdmin(nil, "show", "-json", erin[2])
		var show server.ShowResult
		if err := json.Unmarshal([]byte(out), &show); err != nil || len(show.Bindings) != 1 || len(show.Invites) != 1 || show.Invites[0].Sender != "@bob:hs.test" {
			t.Errorf("show -json: %v\n%s", err, out)
		}
		e.mustAdmin([]string{"4 invites", "to email friend1@example.org, from @erin:hs.test, pending", "on its way (delivery"}, "invites")
		e.mustAdmin([]string{"1 invite\n", "from @bob:hs.test"}, "invites", "carol@example.org")
		// Until every delivery has been tried once: Carol's failed and waits.
		waitFor(t, "the deliveries to be tried", func() bool {
			var jobs []server.JobView
			out, _ := e.admin("queue", "-json")
			return json.Unmarshal([]byte(out), &jobs) == nil && len(jobs) == 1 && jobs[0].Attempts == 1
		})
		out = e.mustAdmin([]string{"1 onbind delivery waiting", "to hs.test for @carol:hs.test, 1 invite, 1 attempt,", "last error: Internal Server Error"}, "queue")
		id := regexp.MustCompile(`(?m)^  (\d+): to hs.test`).FindStringSubmatch(out)[1]
		e.mustAdmin([]string{"delivery " + id + " to hs.test: due now"}, "queue", "retry", id)
		e.mustAdmin([]string{"counts", "bindings"}, "-json", "stats")
		e.mustAdmin([]string{"bindings                 5", "lookup index entries", "pepper age"}, "stats")

		// Clear refusals.
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"show", "nobody@example.org"}, "mxid holds nothing about email nobody@example.org"},
			{[]string{"show", "07700 900123"}, "not an email address or a phone number in international form"},
			{[]string{"unbind", "nobody@example.org"}, "is not bound"},
			{[]string{"erase", "@erin"}, "not a valid Matrix user ID"},
			{[]string{"queue", "drop", "99999"}, "no queued delivery has id 99999"},
			{[]string{"queue", "drop", "x"}, "is not a delivery id"},
			{[]string{"audit", "-since", "yesterday"}, "is not a date"},
			{[]string{"frobnicate"}, `unknown command "frobnicate"`},
			{[]string{"show"}, "needs one ADDRESS"},
		} {
			out, err := e.admin(c.args...)
			if err == nil || !strings.Contains(out+err.Error(), c.want) {
				t.Errorf("mxid admin %s: %v\n%s", strings.Join(c.args, " "), err, out)
			}
		}
		out, err := e.admin("-json", "show", "nobody@example.org")
		if err == nil || !strings.Contains(out, `"errcode":"M_NOT_FOUND"`) {
			t.Errorf("-json refusal: %v %s", err, out)
		}

		// Carol's delivery is given up; Dave's binding is removed.
		e.mustAdmin([]string{"delivery " + id + " to hs.test: dropped"}, "queue", "drop", id)
		e.mustAdmin([]string{"unbound email dave@example.org (was bound to @dave:hs.test)"}, "unbind", "dave@example.org")
		if got := e.lookup("dave@example.org"); got != "" {
			t.Errorf("lookup after admin unbind: %q", got)
		}

		// Erase Erin.
		out = e.mustAdmin([]string{"erased @erin:hs.test: 3 bindings, 2 pending invites sent, 1 invite received", "1 access token", "3 validation sessions",
			"unbound email erin.work@example.org (was bound to @erin:hs.test)", "traces in the store: "}, "erase", "@erin:hs.test")
		t.Logf("erase:\n%s", out)
		for _, a := range erin {
			if got := e.lookup(a); got != "" {
				t.Errorf("lookup of %s after the erasure: %q", a, got)
			}
		}
		if st, _ := e.call("GET", "/account", "erin", nil); st != 401 {
			t.Errorf("Erin's token after the erasure: %d", st)
		}
		e.mustAdmin([]string{"erased @erin:hs.test: nothing"}, "erase", "@erin:hs.test")
		e.nowhere(e.rawStore(), "the store", erin...)
		e.nowhere(e.srv.log.String(), "the log", append(erin, "dave@example.org", "friend1@example.org")...)
		// Erin's invites to friends are withdrawn; Bob's to Carol stays.
		e.mustAdmin([]string{"1 invite\n", "to email carol@example.org, from @bob:hs.test"}, "invites")

		// Prove it: when, by whom; the log itself holds no address.
		e.mustAdmin([]string{"1 audit entry", "erase by admin, user @erin:hs.test, email ", ": binding removed"}, "audit", "-address", erin[1])
		e.mustAdmin([]string{"unbind by admin, user @dave:hs.test"}, "audit", "-since", "1h", "-address", "dave@example.org")
		out = e.mustAdmin(nil, "audit", "-json")
		var entries []db.AuditEntry
		if err := json.Unmarshal([]byte(out), &entries); err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, x := range entries {
			actions = append(actions, x.Action)
		}
		if want := "queue_retry queue_drop unbind erase erase erase erase erase"; strings.Join(actions, " ") != want {
			t.Errorf("audit actions %v, want %s", actions, want)
		}
		if strings.Contains(out, "@example.org") {
			t.Errorf("the audit log names an address:\n%s", out)
		}
		if out, _ := e.admin("audit", "-since", time.Now().Add(time.Hour).Format(time.RFC3339)); !strings.Contains(out, "0 audit entries") {
			t.Errorf("audit -since in the future:\n%s", out)
		}

		// The server stops: the tools act on the store itself.
		e.srv.stop(t)
		e.mustAdmin([]string{"bindings                 1", "no server running"}, "stats")
		e.mustAdmin([]string{"1 audit entry", "erase by admin"}, "audit", "-address", erin[0])
		e.mustAdmin([]string{"bound to @carol:hs.test"}, "show", "carol@example.org")
		e.mustAdmin([]string{"erased carol@example.org: 1 binding, 1 invite received, 1 validation session", "traces in the store: "}, "erase", "carol@example.org")
		e.nowhere(e.rawStore(), "the store after an erasure with no server", "carol@example.org")
	})
}

// A user other than the server's cannot use the admin socket: mxid admin,
// backup and check-db, run as nobody against a running server, are refused
// by the socket's mode (0600) and say so, without touching the store.
func TestAdminSocketRefusesOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("not root: cannot run mxid admin as another user")
	}
	// A tree nobody may traverse and read (but not the socket, 0600).
	dir, err := os.MkdirTemp("", "mxid-admin-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	dataDir := filepath.Join(dir, "data")
	port := freePort(t)
	config := fmt.Sprintf("server_name = \"id.test\"\npublic_base_url = \"http://127.0.0.1:%d\"\ndata_dir = %q\n[http]\nlisten = \"127.0.0.1:%d\"\n", port, dataDir, port)
	cfgPath := filepath.Join(dir, "mxid.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// A link, not a copy: a file just written may still be open for
	// writing in a process forked meanwhile, and then cannot be run.
	bin := filepath.Join(dir, "mxid")
	if err := os.Link(mxidBinary(t), bin); err != nil {
		t.Skipf("cannot link the test binary where another user may run it: %v", err)
	}
	srv := startServe(t, config)
	if !srv.log.waitFor("msg=serving") {
		t.Fatalf("mxid did not start:\n%s", srv.log.String())
	}
	for _, p := range []string{dir, dataDir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dataDir, server.AdminSocketName))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("admin socket: %v %v", fi.Mode(), err)
	}
	if out, err := adminRun(cfgPath, "stats"); err != nil {
		t.Fatalf("as the server's user: %v\n%s", err, out)
	}
	// Where nobody may write the backup's file (the socket refuses it
	// before it has any bytes to write).
	drop := filepath.Join(dir, "drop")
	must(t, os.Mkdir(drop, 0o777))
	must(t, os.Chmod(drop, 0o777))
	for _, args := range [][]string{
		{"admin", "-config", cfgPath, "stats"},
		{"backup", "-config", cfgPath, filepath.Join(drop, "copy.db")},
		{"check-db", "-config", cfgPath},
	} {
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "admin socket "+filepath.Join(dataDir, server.AdminSocketName)+": permission denied: run this command as the user mxid runs as (or root)") {
			t.Errorf("mxid %s as nobody: %v\n%s", args[0], err, out)
		}
	}
	if left, _ := os.ReadDir(drop); len(left) != 0 {
		t.Errorf("a refused backup left %v", left)
	}
}

// Two `mxid serve` replicas on one PostgreSQL database: mxid admin unbind
// and erase on one replica's socket reach the other replica's lookup index
// (through the change log), and after the erasure the addresses are nowhere
// in the database, the change log included.
func TestAdminOnReplicas(t *testing.T) {
	url := pgtest.New(t)
	c := startCluster(t, url, 2, clusterOpts{})
	r0, r1 := c.nodes[0], c.nodes[1]
	const looker = "lookertoken0123456789abcdefghijklmnopq"
	if err := c.store.CreateAccountToken(looker, "@looker:hs.test", time.Now()); err != nil {
		t.Fatal(err)
	}
	addrs := []string{"rep.one@example.org", "rep.two@example.org", "rep.three@example.org"}
	for _, a := range addrs {
		sid, secret := c.session("email", a)
		if st, body, err := bindOn(r0, sid, secret); err != nil || st != 200 {
			t.Fatalf("bind %s: %d %v %v", a, st, body, err)
		}
	}
	for _, nd := range c.nodes {
		for _, a := range addrs {
			waitFor(t, a+" on "+nd.name, func() bool { return lookupVia(t, nd.api, looker, a) == "@user:hs.test" })
		}
	}
	admin := func(nd *node, args ...string) string {
		t.Helper()
		out, err := adminRun(nd.config, args...)
		if err != nil {
			t.Fatalf("mxid admin %s on %s: %v\n%s", strings.Join(args, " "), nd.name, err, out)
		}
		return out
	}

	// Unbind on r0's socket: r1's index forgets it.
	admin(r0, "unbind", addrs[0])
	waitFor(t, "r1 to forget the unbound address", func() bool { return lookupVia(t, r1.api, looker, addrs[0]) == "" })
	if got := lookupVia(t, r1.api, looker, addrs[1]); got != "@user:hs.test" {
		t.Errorf("r1 lost another binding: %q", got)
	}

	// Erase on r1's socket: r0's index forgets the user's other addresses,
	// and r0, which accepted the user's token a moment ago (it answers such
	// tokens from memory for a while), refuses it.
	if st, body, err := call("GET", r0.api+"/_matrix/identity/v2/account", userToken, nil); err != nil || st != 200 {
		t.Fatalf("the user's token on r0: %d %v %v", st, body, err)
	}
	out := admin(r1, "erase", "@user:hs.test")
	if !strings.Contains(out, "erased @user:hs.test: 2 bindings") || !strings.Contains(out, "change log forgotten") {
		t.Errorf("erase:\n%s", out)
	}
	for _, nd := range c.nodes {
		for _, a := range addrs[1:] {
			waitFor(t, nd.name+" to forget "+a, func() bool { return lookupVia(t, nd.api, looker, a) == "" })
		}
	}
	waitFor(t, "r0 to refuse the erased user's token", func() bool {
		st, _, err := call("GET", r0.api+"/_matrix/identity/v2/account", userToken, nil)
		return err == nil && st == 401
	})
	dump := pgtest.Dump(t, url)
	for _, a := range addrs[1:] {
		if strings.Contains(dump, a) {
			t.Errorf("the database still holds %s after the erasure", a)
		}
	}
	// Both replicas read one audit log.
	for _, nd := range c.nodes {
		if out := admin(nd, "audit", "-address", addrs[1]); !strings.Contains(out, "1 audit entry") || !strings.Contains(out, "erase by admin") {
			t.Errorf("audit on %s:\n%s", nd.name, out)
		}
	}
	// Each replica kept serving through it (a replica too far behind the
	// forgotten changes would rebuild: none was).
	for _, nd := range c.nodes {
		if nd.exited() {
			t.Fatalf("%s exited: %s", nd.name, nd.proc.result())
		}
		if strings.Contains(nd.proc.stderr.String(), "rebuilding its lookup index") {
			t.Errorf("%s rebuilt its index after the erasure", nd.name)
		}
	}
}
