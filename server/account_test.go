package server

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeHomeserver answers OpenID userinfo as told by its handler and counts
// the calls it gets.
type fakeHomeserver struct {
	*httptest.Server
	calls   atomic.Int64
	handler atomic.Value // func(w, r)
}

func newFakeHomeserver(t *testing.T) *fakeHomeserver {
	hs := &fakeHomeserver{}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs.calls.Add(1)
		if r.URL.Path != "/_matrix/federation/v1/openid/userinfo" {
			http.NotFound(w, r)
			return
		}
		hs.handler.Load().(func(http.ResponseWriter, *http.Request))(w, r)
	}))
	t.Cleanup(hs.Close)
	return hs
}

func (hs *fakeHomeserver) answer(status int, body string) {
	hs.handler.Store(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	})
}

// canary is a listener that only counts connections: nothing may reach it.
func canary(t *testing.T) (port string, conns *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port, conns
}

func TestRegisterWithOpenID(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		hs := newFakeHomeserver(t)
		e := newTestEnvOn(t, be, func(c *Config) {
			c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
			c.Outbound.Timeout = 3 * time.Second
		})
		var gotToken, gotHost atomic.Value
		hs.handler.Store(func(w http.ResponseWriter, r *http.Request) {
			gotToken.Store(r.URL.Query().Get("access_token"))
			gotHost.Store(r.Host)
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"sub":"@alice:hs.test"}`))
		})
		body := map[string]any{"access_token": "openid+tok/en", "token_type": "Bearer", "matrix_server_name": "hs.test", "expires_in": 3600}
		r := e.request("POST", "/_matrix/identity/v2/account/register", body, "")
		r.expect(t, "register", 200, "")
		tok, _ := r.body["token"].(string)
		if len(tok) < 32 || r.body["access_token"] != tok {
			t.Fatalf("register answer %s", r.raw)
		}
		if gotToken.Load() != "openid+tok/en" {
			t.Errorf("homeserver got OpenID token %v", gotToken.Load())
		}
		for _, use := range []func() *response{
			func() *response { return e.request("GET", "/_matrix/identity/v2/account", nil, tok) },
			func() *response { return e.request("GET", "/_matrix/identity/v2/account?access_token="+tok, nil, "") },
		} {
			a := use()
			a.expect(t, "account with the new token", 200, "")
			if a.body["user_id"] != "@alice:hs.test" {
				t.Errorf("user_id %v", a.body["user_id"])
			}
		}
		// Every register gives a new, distinct token.
		r2 := e.request("POST", "/_matrix/identity/v2/account/register", body, "")
		r2.expect(t, "register again", 200, "")
		if r2.body["token"] == tok {
			t.Error("two registrations returned the same token")
		}
	})
}

func TestRegisterRefusesBadHomeserverAnswers(t *testing.T) {
	hs := newFakeHomeserver(t)
	e := newTestEnv(t, func(c *Config) {
		c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		c.Outbound.Timeout = 2 * time.Second
	})
	body := map[string]any{"access_token": "tok", "matrix_server_name": "hs.test"}
	for _, c := range []struct {
		name    string
		status  int
		reply   string
		want    int
		errcode string
	}{
		{"sub of another server", 200, `{"sub":"@admin:other.test"}`, 502, "M_UNKNOWN"},
		{"sub of a server with our name as a prefix", 200, `{"sub":"@admin:hs.test.evil"}`, 502, "M_UNKNOWN"},
		{"sub not a string", 200, `{"sub":1}`, 502, "M_UNKNOWN"},
		{"no sub", 200, `{}`, 502, "M_UNKNOWN"},
		{"sub not a user id", 200, `{"sub":"@a"}`, 502, "M_UNKNOWN"},
		{"malformed JSON", 200, `{"sub":`, 502, "M_UNKNOWN"},
		{"token rejected", 401, `{"errcode":"M_UNKNOWN_TOKEN","error":"x"}`, 401, "M_UNAUTHORIZED"},
		{"server error with a sub", 500, `{"sub":"@alice:hs.test"}`, 502, "M_UNKNOWN"},
		{"oversized", 200, `{"sub":"@alice:hs.test","pad":"` + strings.Repeat("x", 64<<10) + `"}`, 502, "M_UNKNOWN"},
	} {
		hs.answer(c.status, c.reply)
		r := e.request("POST", "/_matrix/identity/v2/account/register", body, "")
		r.expect(t, c.name, c.want, c.errcode)
		if _, ok := r.body["token"]; ok {
			t.Errorf("%s: a token was issued", c.name)
		}
	}

	// A homeserver that streams forever is cut off at the size cap: with
	// a deadline of a minute, only the cap can end the request within it
	// (it takes milliseconds).
	streaming := newFakeHomeserver(t)
	streaming.handler.Store(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"sub":"`))
		chunk := []byte(strings.Repeat("a", 32<<10))
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	const patient = time.Minute
	e2 := newTestEnv(t, func(c *Config) {
		c.Outbound.Pins = map[string]string{"hs.test": streaming.URL}
		c.Outbound.Timeout = patient
	})
	start := time.Now()
	e2.request("POST", "/_matrix/identity/v2/account/register", body, "").expect(t, "endless answer", 502, "M_UNKNOWN")
	if d := time.Since(start); d >= patient {
		t.Errorf("an endless answer ended after %v, by the deadline, not at the size cap", d)
	}

	// One that never answers fails at the deadline (2 s): the bound only
	// catches a request that waits on regardless.
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	hs.handler.Store(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	start = time.Now()
	e.request("POST", "/_matrix/identity/v2/account/register", body, "").expect(t, "silent homeserver", 502, "M_UNKNOWN")
	if d := time.Since(start); d < 2*time.Second || d > 10*2*time.Second+5*time.Second {
		t.Errorf("silent homeserver answered after %v with a 2s deadline", d)
	}
}

func TestRegisterInputAndSSRF(t *testing.T) {
	port, conns := canary(t)
	e := newTestEnv(t, func(c *Config) {
		c.Outbound.Timeout = 2 * time.Second
		c.RateLimit.Register = Rate{Burst: 1000, Every: time.Millisecond} // this test is about input
	})
	reg := func(name string) *response {
		return e.request("POST", "/_matrix/identity/v2/account/register",
			map[string]any{"access_token": "tok", "matrix_server_name": name}, "")
	}
	for _, name := range []string{"", "exa mple.org", "x.org:0", "x.org:65536", "x.org:08448", "[::1", "a..b",
		"-a.org", strings.Repeat("a", 300), "évil.org", "x.org:", "@x.org", "x.org/path"} {
		reg(name).expect(t, "server name "+name, 400, "M_INVALID_PARAM")
	}
	// Destinations that resolve to this machine are refused by the outbound
	// policy before any connection is made.
	for _, name := range []string{"127.0.0.1:" + port, "localhost:" + port, "[::1]:" + port, "0.0.0.0:" + port,
		"[::ffff:127.0.0.1]:" + port, "127.0.0.2:" + port, "10.0.0.1:" + port, "169.254.169.254:" + port} {
		r := reg(name)
		if r.status < 400 || r.status == 500 {
			t.Errorf("register at %s: %d %s", name, r.status, r.raw)
		}
		if raw := string(r.raw); strings.Contains(raw, "dial") || strings.Contains(raw, "refused") || strings.Contains(raw, "not allowed") {
			t.Errorf("register at %s leaks dial details: %s", name, r.raw)
		}
	}
	if strings.Contains(e.logs(), "access_token=") {
		t.Errorf("the OpenID token reached the log")
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("the canary saw %d connections", n)
	}
	e.request("POST", "/_matrix/identity/v2/account/register", map[string]any{"matrix_server_name": "hs.test"}, "").
		expect(t, "no access_token", 400, "M_MISSING_PARAMS")
	e.request("POST", "/_matrix/identity/v2/account/register", map[string]any{"access_token": "x", "matrix_server_name": "hs.test", "token_type": "MAC"}, "").
		expect(t, "token_type", 400, "M_INVALID_PARAM")
	e.request("POST", "/_matrix/identity/v2/account/register", map[string]any{"access_token": "x", "matrix_server_name": "hs.test", "expires_in": "soon"}, "").
		expect(t, "expires_in", 400, "M_INVALID_PARAM")
}

func TestRegisterAllowlist(t *testing.T) {
	hs := newFakeHomeserver(t)
	hs.answer(200, `{"sub":"@alice:hs.test"}`)
	e := newTestEnv(t, func(c *Config) {
		c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		c.Accounts.HomeserverAllowlist = []string{"other.test"}
	})
	e.request("POST", "/_matrix/identity/v2/account/register", map[string]any{"access_token": "tok", "matrix_server_name": "hs.test"}, "").
		expect(t, "not allowed", 403, "M_FORBIDDEN")
	if hs.calls.Load() != 0 {
		t.Error("a homeserver outside the allowlist was contacted")
	}
}

func TestTermsAcrossVersions(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		policy := func(version string) []Policy {
			return []Policy{{Name: "privacy_policy", Version: version, Languages: map[string]PolicyText{
				"en": {Name: "Privacy Policy", URL: "https://id.test/privacy-" + version + ".en.html"},
				"fr": {Name: "Politique", URL: "https://id.test/privacy-" + version + ".fr.html"},
			}}}
		}
		e := newTestEnvOn(t, be, func(c *Config) { c.Terms.Policies = policy("1.0") })
		e.srv.handle("GET /test/authed", authed, func(w http.ResponseWriter, r *http.Request) error {
			writeJSON(w, 200, map[string]string{"user": account(r).UserID})
			return nil
		})
		tok := e.register("@alice:hs.test")

		r := e.request("GET", "/_matrix/identity/v2/terms", nil, "")
		r.expect(t, "GET terms", 200, "")
		var got struct {
			Policies map[string]map[string]json.RawMessage `json:"policies"`
		}
		json.Unmarshal(r.raw, &got)
		if string(got.Policies["privacy_policy"]["version"]) != `"1.0"` || !strings.Contains(string(got.Policies["privacy_policy"]["en"]), "privacy-1.0.en.html") {
			t.Errorf("GET terms = %s", r.raw)
		}

		e.request("GET", "/test/authed", nil, tok).expect(t, "before accepting", 403, "M_TERMS_NOT_SIGNED")
		// GET /account answers M_TERMS_NOT_SIGNED too: clients (Element) ask it
		// to learn whether to show the terms.
		e.request("GET", "/_matrix/identity/v2/account", nil, tok).expect(t, "GET account before accepting", 403, "M_TERMS_NOT_SIGNED")
		e.request("POST", "/_matrix/identity/v2/terms", map[string]any{"user_accepts": []string{"https://elsewhere.test/tos"}}, tok).expect(t, "unknown url", 200, "")
		e.request("GET", "/test/authed", nil, tok).expect(t, "after an unknown url", 403, "M_TERMS_NOT_SIGNED")
		e.request("POST", "/_matrix/identity/v2/terms", map[string]any{"user_accepts": []string{"https://id.test/privacy-1.0.fr.html"}}, tok).expect(t, "accept", 200, "")
		e.request("GET", "/test/authed", nil, tok).expect(t, "after accepting", 200, "")
		e.request("GET", "/_matrix/identity/v2/account", nil, tok).expect(t, "GET account after accepting", 200, "")

		// A new version requires a new acceptance: same store, new configuration.
		cfg := e.srv.cfg
		cfg.Terms.Policies = policy("2.0")
		srv2, err := New(cfg, Deps{Store: e.store, Key: e.key, Policy: e.srv.policy, Now: e.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		srv2.handle("GET /test/authed", authed, func(w http.ResponseWriter, r *http.Request) error { writeJSON(w, 200, struct{}{}); return nil })
		e.srv = srv2
		e.http.Config.Handler = srv2.Handler()
		e.request("GET", "/test/authed", nil, tok).expect(t, "after a new version", 403, "M_TERMS_NOT_SIGNED")
		e.request("POST", "/_matrix/identity/v2/terms", map[string]any{"user_accepts": []string{"https://id.test/privacy-1.0.en.html"}}, tok).expect(t, "old url", 200, "")
		e.request("GET", "/test/authed", nil, tok).expect(t, "after accepting the old version", 403, "M_TERMS_NOT_SIGNED")
		e.request("POST", "/_matrix/identity/v2/terms", map[string]any{"user_accepts": []string{"https://id.test/privacy-2.0.en.html"}}, tok).expect(t, "new url", 200, "")
		e.request("GET", "/test/authed", nil, tok).expect(t, "after accepting the new version", 200, "")
		e.request("POST", "/_matrix/identity/v2/account/logout", nil, tok).expect(t, "logout", 200, "")
	})
}

func TestNoTermsNothingToAccept(t *testing.T) {
	e := newTestEnv(t, nil)
	e.srv.handle("GET /test/authed", authed, func(w http.ResponseWriter, r *http.Request) error { writeJSON(w, 200, struct{}{}); return nil })
	r := e.request("GET", "/_matrix/identity/v2/terms", nil, "")
	r.expect(t, "terms", 200, "")
	if string(r.raw) != `{"policies":{}}` {
		t.Errorf("terms = %s", r.raw)
	}
	tok := e.register("@bob:hs.test")
	e.request("GET", "/test/authed", nil, tok).expect(t, "authed without terms", 200, "")
}

// account/register has its own per-IP budget ([ratelimit] register): each
// call makes mxid ask a homeserver. Refused calls never reach it.
func TestRegisterRateLimit(t *testing.T) {
	hs := newFakeHomeserver(t)
	hs.answer(200, `{"sub":"@alice:hs.test"}`)
	e := newTestEnv(t, func(c *Config) {
		c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		c.RateLimit.Register = Rate{Burst: 2, Every: time.Minute}
	})
	body := map[string]any{"access_token": "tok", "matrix_server_name": "hs.test"}
	for i := 0; i < 2; i++ {
		e.request("POST", "/_matrix/identity/v2/account/register", body, "").expect(t, "register within the budget", 200, "")
	}
	r := e.request("POST", "/_matrix/identity/v2/account/register", body, "")
	r.expect(t, "register over the budget", 429, "M_LIMIT_EXCEEDED")
	if r.header.Get("Retry-After") != "60" {
		t.Errorf("Retry-After %q, want 60", r.header.Get("Retry-After"))
	}
	if n := hs.calls.Load(); n != 2 {
		t.Errorf("the homeserver was asked %d times, want 2", n)
	}
	// The budget is register's own: other endpoints are not charged.
	tok := e.register("@bob:hs.test")
	e.request("GET", "/_matrix/identity/v2/3pid/getValidated3pid?sid=x&client_secret=y", nil, tok).expect(t, "getValidated3pid", 404, "M_NO_VALID_SESSION")
	e.clock.Advance(time.Minute)
	e.request("POST", "/_matrix/identity/v2/account/register", body, "").expect(t, "register after a refill", 200, "")
}
