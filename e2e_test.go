package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"mxid/db/pgtest"
	"mxid/mail/smtptest"
)

// TestEndToEnd drives a real `mxid serve` as a client and a homeserver
// would: register with an OpenID token from a pinned homeserver, accept the
// terms, validate an email address through a real SMTP listener, bind it,
// find it with hashed and plaintext lookups, get an invite delivered on
// bind, unbind, and no longer find it.
func TestEndToEnd(t *testing.T) {
	onEachBackend(t, endToEnd)
}

// onEachBackend runs a test of the whole binary once per storage backend:
// database is the [database] section to add to its configuration ("" for
// bbolt, a fresh PostgreSQL database's URL otherwise).
func onEachBackend(t *testing.T, fn func(t *testing.T, database string)) {
	t.Run("bbolt", func(t *testing.T) { fn(t, "") })
	t.Run("postgres", func(t *testing.T) { fn(t, fmt.Sprintf("[database]\nurl = %q\n", pgtest.New(t))) })
}

func endToEnd(t *testing.T, database string) {
	smtp := smtptest.Start(t, smtptest.Options{Mode: "plain"})
	onbinds := make(chan map[string]any, 10)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/_matrix/federation/v1/openid/userinfo":
			fmt.Fprintf(w, `{"sub":"@%s:hs.test"}`, r.URL.Query().Get("access_token"))
		case "/_matrix/federation/v1/3pid/onbind":
			var body map[string]any
			json.NewDecoder(r.Body).Decode(&body)
			onbinds <- body
			w.Write([]byte(`{}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer hs.Close()
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	s := startServe(t, fmt.Sprintf(`server_name = "id.test"
public_base_url = %q
data_dir = %q
[http]
listen = "127.0.0.1:%d"
[outbound.pins]
"hs.test" = %q
[[terms.policy]]
name = "privacy_policy"
version = "1"
[terms.policy.languages.en]
name = "Privacy"
url = "https://id.test/privacy-1.html"
[email]
mode = "plain"
host = "127.0.0.1"
port = %d
from = "mxid <noreply@id.test>"
[lookup]
algorithms = ["sha256", "none"]
`, base, t.TempDir(), port, hs.URL, smtp.Port)+database)
	s.ready(t)

	call := func(method, path, token string, body any) (int, map[string]any) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			raw, _ := json.Marshal(body)
			rd = bytes.NewReader(raw)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	must := func(what string) func(int, map[string]any) map[string]any {
		return func(status int, body map[string]any) map[string]any {
			t.Helper()
			if status != 200 {
				t.Fatalf("%s: %d %v", what, status, body)
			}
			return body
		}
	}
	v2 := "/_matrix/identity/v2"

	// Accounts and terms.
	reg := func(user string) string {
		st, b := call("POST", v2+"/account/register", "", map[string]any{"access_token": user, "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600})
		return must("register "+user)(st, b)["token"].(string)
	}
	alice, bob := reg("alice"), reg("bob")
	if st, b := call("GET", v2+"/hash_details", alice, nil); st != 403 || b["errcode"] != "M_TERMS_NOT_SIGNED" {
		t.Fatalf("before accepting terms: %d %v", st, b)
	}
	for _, tok := range []string{alice, bob} {
		must("accept terms")(call("POST", v2+"/terms", tok, map[string]any{"user_accepts": []string{"https://id.test/privacy-1.html"}}))
	}

	// Bob invites Alice's address before she is on Matrix.
	must("store-invite")(call("POST", v2+"/store-invite", bob, map[string]any{"medium": "email", "address": "Alice@Example.org", "room_id": "!room:hs.test", "sender": "@bob:hs.test", "room_name": "Plans"}))
	smtp.Wait(t, 1)

	// Alice validates her address (reading the mail) and binds it.
	sid := must("requestToken")(call("POST", v2+"/validate/email/requestToken", alice, map[string]any{"email": "alice@example.org", "client_secret": "s3cret", "send_attempt": "1"}))["sid"].(string)
	mail := smtp.Wait(t, 2)
	parsed, err := mail.Parse()
	if err != nil {
		t.Fatal(err)
	}
	link := regexp.MustCompile(`http://\S+/submitToken\?\S+`).FindString(parsed.Text)
	if !strings.HasPrefix(link, base+v2+"/validate/email/submitToken?") {
		t.Fatalf("link %q is not under public_base_url", link)
	}
	resp, err := http.Get(link)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("following the link: %v %v", err, resp)
	}
	resp.Body.Close()
	must("bind")(call("POST", v2+"/3pid/bind", alice, map[string]any{"sid": sid, "client_secret": "s3cret", "mxid": "@alice:hs.test"}))

	// Bob finds her by hash and by plaintext.
	details := must("hash_details")(call("GET", v2+"/hash_details", bob, nil))
	pepper := details["lookup_pepper"].(string)
	sum := sha256.Sum256([]byte("alice@example.org email " + pepper))
	hash := base64.RawURLEncoding.EncodeToString(sum[:])
	lookup := func(alg string, addr string) any {
		b := must("lookup " + alg)(call("POST", v2+"/lookup", bob, map[string]any{"algorithm": alg, "pepper": pepper, "addresses": []string{addr}}))
		return b["mappings"].(map[string]any)[addr]
	}
	if got := lookup("sha256", hash); got != "@alice:hs.test" {
		t.Errorf("sha256 lookup after bind = %v", got)
	}
	if got := lookup("none", "alice@example.org email"); got != "@alice:hs.test" {
		t.Errorf("none lookup after bind = %v", got)
	}

	// Her homeserver got the invite, signed (delivered in the background).
	select {
	case got := <-onbinds:
		if invites, _ := got["invites"].([]any); len(invites) != 1 {
			t.Errorf("onbind call %v", got)
		}
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Fatal("no onbind call within a minute of the bind")
	}

	// Unbind with the session; she is no longer found.
	must("unbind")(call("POST", v2+"/3pid/unbind", "", map[string]any{"sid": sid, "client_secret": "s3cret", "mxid": "@alice:hs.test", "threepid": map[string]any{"medium": "email", "address": "alice@example.org"}}))
	if got := lookup("sha256", hash); got != nil {
		t.Errorf("sha256 lookup after unbind = %v", got)
	}
	if got := lookup("none", "alice@example.org email"); got != nil {
		t.Errorf("none lookup after unbind = %v", got)
	}
	select {
	case extra := <-onbinds:
		t.Errorf("a second onbind call: %v", extra)
	default:
	}
}
