package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// get GETs url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body)
}

// postJSON POSTs body to url with a bearer token ("" for none) and decodes
// the answer.
func postJSON(t *testing.T, url, token string, body any) (int, map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(body)
	return requestJSON(t, "POST", url, token, bytes.NewReader(raw))
}

// getJSON GETs url with a bearer token ("" for none) and decodes the answer.
func getJSON(t *testing.T, url, token string) (int, map[string]any) {
	t.Helper()
	return requestJSON(t, "GET", url, token, nil)
}

func requestJSON(t *testing.T, method, url, token string, body io.Reader) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestServeMetrics runs `mxid serve` with the metrics listener on, sends
// some traffic (lookups through the cascade and the hash index among it)
// and scrapes it; the start-up log names each decision.
func TestServeMetrics(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_matrix/federation/v1/openid/userinfo" {
			fmt.Fprintf(w, `{"sub":"@%s:hs.test"}`, r.URL.Query().Get("access_token"))
			return
		}
		http.NotFound(w, r)
	}))
	defer hs.Close()
	apiPort, metricsPort := freePort(t), freePort(t)
	dir := t.TempDir()
	config := fmt.Sprintf(`data_dir = %q
v1 = true
[http]
listen = "127.0.0.1:%d"
[metrics]
enabled = true
listen = "127.0.0.1:%d"
[outbound.pins]
"hs.test" = %q
[dns]
enabled = true
`, filepath.Join(dir, "data"), apiPort, metricsPort, hs.URL)
	// One binding, imported before the server starts.
	cfgPath, bindings := filepath.Join(dir, "mxid.toml"), filepath.Join(dir, "bindings.jsonl")
	os.WriteFile(cfgPath, []byte(config), 0o600)
	os.WriteFile(bindings, []byte(`{"medium":"email","address":"alice@example.org","mxid":"@alice:hs.test"}`+"\n"), 0o600)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"import", "-config", cfgPath, bindings}, &out, &errb); err != nil {
		t.Fatalf("import: %v\n%s%s", err, out.String(), errb.String())
	}
	s := startServe(t, config)
	s.ready(t)
	api := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	for range 3 {
		if code, _ := get(t, api+"/_matrix/identity/versions"); code != 200 {
			t.Fatalf("versions: %d", code)
		}
	}
	get(t, api+"/nowhere")

	// Lookups through the cascade (v1: no account needed): one found
	// locally; one found nowhere, with DNS skipped (no recursion_cidrs).
	v1 := api + "/_matrix/identity/api/v1/lookup?medium=email&address="
	if _, body := get(t, v1+url.QueryEscape("alice@example.org")); !strings.Contains(body, `"mxid":"@alice:hs.test"`) {
		t.Errorf("v1 lookup of a bound address: %s", body)
	}
	if _, body := get(t, v1+url.QueryEscape("nobody@example.org")); body != "{}" {
		t.Errorf("v1 lookup of an unbound address: %s", body)
	}
	// A hashed lookup through the index, as a registered user.
	st, reg := postJSON(t, api+"/_matrix/identity/v2/account/register", "", map[string]any{"access_token": "bob", "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600})
	token, _ := reg["token"].(string)
	if st != 200 || token == "" {
		t.Fatalf("register: %d %v", st, reg)
	}
	req, _ := http.NewRequest("GET", api+"/_matrix/identity/v2/hash_details", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var details struct {
		Pepper string `json:"lookup_pepper"`
	}
	json.NewDecoder(resp.Body).Decode(&details)
	resp.Body.Close()
	sum := sha256.Sum256([]byte("alice@example.org email " + details.Pepper))
	hash := base64.RawURLEncoding.EncodeToString(sum[:])
	if st, body := postJSON(t, api+"/_matrix/identity/v2/lookup", token, map[string]any{"algorithm": "sha256", "pepper": details.Pepper, "addresses": []string{hash, "AAAA"}}); st != 200 || fmt.Sprint(body["mappings"]) != fmt.Sprintf("map[%s:@alice:hs.test]", hash) {
		t.Errorf("sha256 lookup: %d %v", st, body)
	}

	code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if code != 200 {
		t.Fatalf("scrape: %d", code)
	}
	for _, want := range []string{
		`mxid_http_requests_total{code="200",route="GET /_matrix/identity/versions"} 3`,
		`mxid_http_requests_total{code="404",route="unmatched"} 1`,
		`mxid_bindings 1`,
		`mxid_lookups_total{outcome="found",source="local"} 1`,
		`mxid_lookups_total{outcome="not_found",source="local"} 1`,
		`mxid_lookups_total{outcome="skipped",source="dns"} 1`,
		`mxid_lookups_total{outcome="found",source="index"} 1`,
		`mxid_lookup_duration_seconds_count{source="local"} 2`,
		`mxid_lookup_duration_seconds_count{source="index"} 1`,
		`mxid_lookup_index_entries 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(body, `mxid_lookup_duration_seconds_count{source="dns"}`) {
		t.Error("a skipped source is in the duration histogram")
	}
	// The API is not served on the metrics listener, nor metrics on the API.
	if code, _ := get(t, api+"/metrics"); code != 404 {
		t.Errorf("/metrics on the API listener: %d, want 404", code)
	}
	s.stop(t)
	log := s.log.String()
	for _, want := range []string{"tls mode off", "serving metrics", "msg=stopped",
		`msg="lookup algorithms" algorithms=[sha256] plaintext=false`,
		`msg="lookup source" source=local enabled=true`,
		`msg="lookup source" source=ldap enabled=false`,
		`msg="lookup source" source=dns enabled=true dns_server=/etc/resolv.conf v1_fallback=false deadline=5s`,
		`msg="lookup source" source=forwarders enabled=false`,
		`level=WARN msg="lookup recursion: [lookup] recursion_cidrs is empty, so the dns and forwarder sources are asked for nobody"`,
		`msg="lookup pepper" fixed=false age=0s next_rotation=`, "rotation=24h0m0s grace=10m0s",
		`msg="v1 API" enabled=true`, `msg="outbound policy"`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", body)
	}
}

// TestServeStartupDecisions: with a directory, forwarders, a fixed pepper
// and recursion allowed, the start-up log says so, one line per decision,
// and holds none of the secrets.
func TestServeStartupDecisions(t *testing.T) {
	dir := t.TempDir()
	ldapPort := freePort(t) // nothing listens: the background sync fails, serving does not
	s := startServe(t, fmt.Sprintf(`data_dir = %q
[http]
listen = "127.0.0.1:%d"
trusted_proxies = ["127.0.0.1"]
[lookup]
algorithms = ["sha256", "none"]
pepper = "AFixedPepperOfTwentyChars"
recursion_cidrs = ["10.0.0.0/8", "127.0.0.1"]
[ldap]
urls = ["ldap://127.0.0.1:%d", "ldaps://127.0.0.2:636"]
bind_dn = "cn=reader,dc=example,dc=org"
bind_password = "ldap-secret-pw"
base_dns = ["ou=people,dc=example,dc=org"]
preset = "openldap"
uid_domain = "example.org"
[ratelimit]
trusted_callers = ["203.0.113.5", "10.1.0.0/16"]
[outbound]
allow_cidrs = ["10.2.0.0/16"]
pins = { "hs.example" = "https://10.2.0.5:8448" }
[[forwarders]]
url = "https://matrix.example.net/"
access_token = "forwarder-secret-token"
`, dir, freePort(t), ldapPort))
	s.ready(t)
	s.stop(t)
	log := s.log.String()
	for _, want := range []string{
		`msg="lookup algorithms" algorithms="[sha256 none]" plaintext=true`,
		fmt.Sprintf(`msg="lookup source" source=ldap enabled=true urls="[ldap://127.0.0.1:%d ldaps://127.0.0.2:636]" starttls=false preset=openldap base_dns="[ou=people,dc=example,dc=org]" sync_interval=15m0s deadline=3s`, ldapPort),
		`msg="lookup source" source=dns enabled=false`,
		`msg="lookup source" source=forwarders enabled=true servers=[https://matrix.example.net] deadline=5s`,
		`msg="lookup recursion" cidrs="[10.0.0.0/8 127.0.0.1]" trusted_proxies=[127.0.0.1]`,
		`msg="lookup pepper" fixed=true age=0s`,
		`msg="v1 API" enabled=false trusted_callers="[203.0.113.5 10.1.0.0/16]"`,
		`msg="outbound policy" timeout=15s allow_cidrs=[10.2.0.0/16] pins=map[hs.example:https://10.2.0.5:8448] ca_file=false insecure_skip_verify=false`,
		"msg=\"metrics off\"",
		`msg=retention audit_log=8760h0m0s audit_addresses="keyed hashes only" access_tokens="8760h0m0s without use" sessions="48h0m0s after their last change" invites=720h0m0s`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	for _, secret := range []string{"ldap-secret-pw", "forwarder-secret-token", "AFixedPepperOfTwentyChars"} {
		if strings.Contains(log, secret) {
			t.Errorf("the log holds a secret: %q", secret)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", log)
	}
}
