package server

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"mxid/server/signing"
)

func TestStatusAndVersions(t *testing.T) {
	e := newTestEnv(t, nil)
	r := e.request("GET", "/_matrix/identity/versions", nil, "")
	r.expect(t, "versions", 200, "")
	versions, _ := r.body["versions"].([]any)
	found := false
	for _, v := range versions {
		found = found || v == "v1.19"
	}
	if !found {
		t.Errorf("versions %v lacks v1.19", r.body["versions"])
	}
	r = e.request("GET", "/_matrix/identity/v2", nil, "")
	r.expect(t, "status", 200, "")
	if string(r.raw) != "{}" {
		t.Errorf("status body %s, want {}", r.raw)
	}
}

func TestUnknownPathsAndMethods(t *testing.T) {
	e := newTestEnv(t, nil)
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/nope", 404},
		{"GET", "/_matrix/identity/v2/nope", 404},
		{"GET", "/_matrix/identity/api/v1/lookup", 404}, // v1 is off by default
		{"POST", "/_matrix/identity/v2", 405},
		{"DELETE", "/_matrix/identity/v2/account", 405},
		{"GET", "/_matrix/identity/v2/account/register", 405},
		{"PUT", "/_matrix/identity/v2/terms", 405},
	} {
		r := e.request(c.method, c.path, nil, "")
		r.expect(t, c.method+" "+c.path, c.status, "M_UNRECOGNIZED")
		if c.status == 405 && r.header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", c.method, c.path)
		}
	}
}

func TestCORSOnEveryResponse(t *testing.T) {
	e := newTestEnv(t, nil)
	check := func(what string, r *response) {
		t.Helper()
		want := map[string]string{
			"Access-Control-Allow-Origin":  "*",
			"Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
			"Access-Control-Allow-Headers": "Origin, X-Requested-With, Content-Type, Accept, Authorization",
		}
		for k, v := range want {
			if got := r.header.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", what, k, got, v)
			}
		}
	}
	check("200", e.request("GET", "/_matrix/identity/v2", nil, ""))
	check("404", e.request("GET", "/nope", nil, ""))
	check("401", e.request("GET", "/_matrix/identity/v2/account", nil, ""))
	pre := e.request("OPTIONS", "/_matrix/identity/v2/account/register", nil, "")
	pre.expect(t, "pre-flight", 200, "")
	check("pre-flight", pre)
}

func TestPubkeys(t *testing.T) {
	e := newTestEnv(t, nil)
	r := e.request("GET", "/_matrix/identity/v2/pubkey/ed25519:0", nil, "")
	r.expect(t, "pubkey", 200, "")
	if r.body["public_key"] != e.key.PublicBase64() {
		t.Errorf("public_key %v, want %s", r.body["public_key"], e.key.PublicBase64())
	}
	e.request("GET", "/_matrix/identity/v2/pubkey/ed25519:1", nil, "").expect(t, "unknown key id", 404, "M_NOT_FOUND")

	other, _ := signing.NewKey("ed25519:0")
	for _, c := range []struct {
		param string
		valid bool
	}{
		{e.key.PublicBase64(), true},
		{signing.EncodeBase64URL(e.key.Public()), true},
		{other.PublicBase64(), false},
		{"", false},
		{"!!!", false},
		{strings.Repeat("A", 10000), false},
	} {
		for _, path := range []string{"/_matrix/identity/v2/pubkey/isvalid", "/_matrix/identity/v2/pubkey/ephemeral/isvalid"} {
			r := e.request("GET", path+"?public_key="+url.QueryEscape(c.param), nil, "")
			r.expect(t, path, 200, "")
			want := c.valid && !strings.Contains(path, "ephemeral") // no invites stored yet
			if r.body["valid"] != want {
				t.Errorf("%s?public_key=%.20s: valid=%v, want %v", path, c.param, r.body["valid"], want)
			}
		}
	}
	for _, path := range []string{"/_matrix/identity/v2/pubkey/isvalid", "/_matrix/identity/v2/pubkey/ephemeral/isvalid"} {
		e.request("GET", path, nil, "").expect(t, path+" without public_key", 400, "M_MISSING_PARAMS")
		e.request("GET", path+"?publickey=x", nil, "").expect(t, path+" with a misspelt parameter", 400, "M_MISSING_PARAMS")
	}
}

func TestAuthentication(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := e.register("@alice:hs.test")
	account := "/_matrix/identity/v2/account"

	e.request("GET", account, nil, "").expect(t, "no token", 401, "M_UNAUTHORIZED")
	e.request("GET", account, nil, "wrong").expect(t, "unknown token", 401, "M_UNAUTHORIZED")
	e.request("GET", account, nil, strings.Repeat("x", 1000)).expect(t, "overlong token", 401, "M_UNAUTHORIZED")
	e.request("GET", account, nil, strings.Repeat("x", 100<<10)).expect(t, "100 KB token", 401, "M_UNAUTHORIZED")

	r := e.request("GET", account, nil, tok)
	r.expect(t, "bearer", 200, "")
	if r.body["user_id"] != "@alice:hs.test" {
		t.Errorf("user_id %v", r.body["user_id"])
	}
	r = e.request("GET", account+"?access_token="+tok, nil, "")
	r.expect(t, "query token", 200, "")
	if r.body["user_id"] != "@alice:hs.test" {
		t.Errorf("user_id %v", r.body["user_id"])
	}
	// The header wins over the query parameter.
	e.request("GET", account+"?access_token="+tok, nil, "wrong").expect(t, "bad header, good query", 401, "M_UNAUTHORIZED")
	req, _ := http.NewRequest("GET", e.http.URL+account, nil)
	req.Header.Set("Authorization", "Basic "+tok)
	e.send(req).expect(t, "non-bearer scheme", 401, "M_UNAUTHORIZED")

	// Logout ends this token only.
	tok2 := e.register("@alice:hs.test")
	e.request("POST", "/_matrix/identity/v2/account/logout", nil, tok).expect(t, "logout", 200, "")
	e.request("GET", account, nil, tok).expect(t, "after logout", 401, "M_UNAUTHORIZED")
	e.request("GET", account, nil, tok2).expect(t, "other token after logout", 200, "")
	e.request("POST", "/_matrix/identity/v2/account/logout", nil, tok).expect(t, "logout twice", 401, "M_UNAUTHORIZED")
}

func TestRequestBodies(t *testing.T) {
	e := newTestEnv(t, nil)
	tok := e.register("@alice:hs.test")
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	big := `{"user_accepts":["` + strings.Repeat("a", 2<<20) + `"]}`
	for _, c := range []struct {
		name, body, errcode string
		status              int
	}{
		{"truncated", `{"user_accepts":`, "M_NOT_JSON", 400},
		{"null", `null`, "M_NOT_JSON", 400},
		{"array", `[]`, "M_NOT_JSON", 400},
		{"string", `"x"`, "M_NOT_JSON", 400},
		{"number", `1`, "M_NOT_JSON", 400},
		{"empty", ``, "M_NOT_JSON", 400},
		{"trailing garbage", `{"user_accepts":[]} xyz`, "M_NOT_JSON", 400},
		{"two objects", `{"user_accepts":[]}{}`, "M_NOT_JSON", 400},
		{"invalid UTF-8", "{\"user_accepts\":[\"\xff\"]}", "M_NOT_JSON", 400},
		{"lone surrogate", `{"user_accepts":["\ud800"]}`, "M_NOT_JSON", 400},
		{"reversed surrogates", `{"user_accepts":["\udc00\ud800"]}`, "M_NOT_JSON", 400},
		{"NaN", `{"user_accepts":NaN}`, "M_NOT_JSON", 400},
		{"Infinity", `{"x":Infinity,"user_accepts":[]}`, "M_NOT_JSON", 400},
		{"deep nesting", `{"x":` + deep + `,"user_accepts":[]}`, "M_NOT_JSON", 400},
		{"duplicate keys", `{"user_accepts":[],"user_accepts":[]}`, "M_BAD_JSON", 400},
		{"escaped duplicate keys", `{"user_accepts":[],"user\u005faccepts":[]}`, "M_BAD_JSON", 400},
		{"case-variant key", `{"USER_ACCEPTS":[]}`, "M_MISSING_PARAMS", 400},
		{"missing field", `{}`, "M_MISSING_PARAMS", 400},
		{"wrong type", `{"user_accepts":"x"}`, "M_INVALID_PARAM", 400},
		{"wrong element type", `{"user_accepts":[1]}`, "M_INVALID_PARAM", 400},
		{"too large", big, "M_TOO_LARGE", 413},
		{"valid", `{"user_accepts":[]}`, "", 200},
		{"valid with surrogate pair", `{"x":"\ud83d\ude00","user_accepts":[]}`, "", 200},
	} {
		r := e.request("POST", "/_matrix/identity/v2/terms", c.body, tok)
		r.expect(t, c.name, c.status, c.errcode)
		if c.errcode == "M_INVALID_PARAM" || c.errcode == "M_MISSING_PARAMS" {
			if msg, _ := r.body["error"].(string); !strings.Contains(msg, "user_accepts") {
				t.Errorf("%s: error %q does not name the field", c.name, msg)
			}
		}
	}
	// A chunked body (no Content-Length) over the cap is refused as well.
	pr, pw := ioPipe()
	go func() {
		pw.Write([]byte(`{"user_accepts":["`))
		chunk := []byte(strings.Repeat("a", 64<<10))
		for i := 0; i < 32; i++ {
			if _, err := pw.Write(chunk); err != nil {
				break
			}
		}
		pw.Write([]byte(`"]}`))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", e.http.URL+"/_matrix/identity/v2/terms", pr)
	req.Header.Set("Authorization", "Bearer "+tok)
	e.send(req).expect(t, "chunked too large", 413, "M_TOO_LARGE")
}

func TestPanicsBecomeOpaque500(t *testing.T) {
	e := newTestEnv(t, nil)
	e.srv.handle("GET /test/panic", public, func(w http.ResponseWriter, r *http.Request) error {
		panic("secret internal detail in /src/mxid/server/x.go")
	})
	e.srv.handle("GET /test/error", public, func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("database exploded at /var/lib/mxid")
	})
	for _, path := range []string{"/test/panic", "/test/error"} {
		r := e.request("GET", path, nil, "")
		r.expect(t, path, 500, "M_UNKNOWN")
		if strings.Contains(string(r.raw), "secret") || strings.Contains(string(r.raw), "/var/lib") || strings.Contains(string(r.raw), ".go") {
			t.Errorf("%s leaks internals: %s", path, r.raw)
		}
	}
	// The server is still serving.
	e.request("GET", "/_matrix/identity/v2", nil, "").expect(t, "after panic", 200, "")
}

func TestRequestLogHasIDAndNoSecrets(t *testing.T) {
	e := newTestEnv(t, nil)
	var buf syncBuffer
	e.srv.log = slogTo(&buf)
	r := e.request("GET", "/_matrix/identity/v2/account?access_token=SuperSecretToken123", nil, "")
	id := r.header.Get("X-Request-Id")
	if len(id) != 16 {
		t.Errorf("X-Request-Id %q", id)
	}
	logged := buf.String()
	if !strings.Contains(logged, id) {
		t.Errorf("request id %s not in the log: %s", id, logged)
	}
	if strings.Contains(logged, "SuperSecretToken123") {
		t.Errorf("the access token was logged: %s", logged)
	}
}
