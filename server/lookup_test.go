package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/db"
	"mxid/lookup"
	"mxid/lookup/threepid"
	"mxid/server/outbound"
	"mxid/server/signing"
)

type lookupClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *lookupClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *lookupClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lookupEnv is a server with a lookup service over a real store.
type lookupEnv struct {
	t     testing.TB
	store *db.Store
	svc   *lookup.Service
	srv   *Server
	ts    *httptest.Server
	token string
	clock *lookupClock
}

func newLookupEnv(t testing.TB, mod func(*Config, *lookup.Config)) *lookupEnv {
	t.Helper()
	store, err := db.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	key, err := signing.NewKey("ed25519:0")
	if err != nil {
		t.Fatal(err)
	}
	policy, err := outbound.New(outbound.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg, lcfg := DefaultConfig(), lookup.DefaultConfig()
	cfg.ServerName = "id.example.org"
	if mod != nil {
		mod(&cfg, &lcfg)
	}
	clk := &lookupClock{t: time.Now()}
	svc, err := lookup.New(lcfg, lookup.DefaultLDAPConfig(), lookup.DefaultDNSConfig(), nil, lookup.Deps{Store: store, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, Deps{Store: store, Key: key, Policy: policy, Lookup: svc, Bindings: svc.Index, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	e := &lookupEnv{t: t, store: store, svc: svc, srv: srv, ts: ts, clock: clk, token: "tok_" + randomString(20, alphanumeric)}
	if err := store.CreateAccountToken(e.token, "@me:example.org", clk.now()); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *lookupEnv) bind(medium, address, mxid string) {
	e.t.Helper()
	if _, err := e.store.PutBinding(db.Binding{Medium: medium, Address: address, MXID: mxid, TS: 1, NotBefore: 1, NotAfter: 1 << 50}); err != nil {
		e.t.Fatal(err)
	}
	e.srv.binds.Bound(medium, address, mxid)
}

func (e *lookupEnv) unbind(medium, address, mxid string) {
	e.t.Helper()
	if _, err := e.store.DeleteBinding(medium, address, mxid); err != nil {
		e.t.Fatal(err)
	}
	e.srv.binds.Unbound(medium, address)
}

// do sends a request and decodes the JSON answer.
func (e *lookupEnv) do(method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, e.ts.URL+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		e.t.Fatalf("%s %s: not JSON: %q", method, path, raw)
	}
	return resp.StatusCode, out
}

func (e *lookupEnv) pepper() string {
	e.t.Helper()
	code, body := e.do("GET", "/_matrix/identity/v2/hash_details", e.token, nil)
	if code != 200 {
		e.t.Fatalf("hash_details: %d %v", code, body)
	}
	return body["lookup_pepper"].(string)
}

func (e *lookupEnv) lookup(alg, pepper string, addresses ...string) (int, map[string]any) {
	return e.do("POST", "/_matrix/identity/v2/lookup", e.token, map[string]any{"algorithm": alg, "pepper": pepper, "addresses": addresses})
}

func lookupMappings(t *testing.T, body map[string]any) map[string]string {
	t.Helper()
	m, ok := body["mappings"].(map[string]any)
	if !ok {
		t.Fatalf("no mappings in %v", body)
	}
	out := map[string]string{}
	for k, v := range m {
		out[k] = v.(string)
	}
	return out
}

func TestHashDetails(t *testing.T) {
	e := newLookupEnv(t, nil)
	code, body := e.do("GET", "/_matrix/identity/v2/hash_details", e.token, nil)
	if code != 200 || fmt.Sprint(body["algorithms"]) != "[sha256]" {
		t.Fatalf("%d %v", code, body)
	}
	if p, _ := body["lookup_pepper"].(string); len(p) < 20 || strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") != "" {
		t.Errorf("pepper %q", p)
	}
	if code, body := e.do("GET", "/_matrix/identity/v2/hash_details", "", nil); code != 401 || body["errcode"] != "M_UNAUTHORIZED" {
		t.Errorf("without token: %d %v", code, body)
	}
	e2 := newLookupEnv(t, func(_ *Config, l *lookup.Config) { l.Algorithms = []string{"sha256", "none"} })
	if _, body := e2.do("GET", "/_matrix/identity/v2/hash_details", e2.token, nil); fmt.Sprint(body["algorithms"]) != "[sha256 none]" {
		t.Errorf("with none: %v", body)
	}
}

// The spec's hashing example: pepper matrixrocks.
func TestLookupSpecExample(t *testing.T) {
	e := newLookupEnv(t, func(_ *Config, l *lookup.Config) { l.Pepper = "matrixrocksmatrixrocks" })
	e.bind("email", "alice@example.com", "@alice:example.org")
	h := threepid.Hash("alice@example.com", "email", "matrixrocksmatrixrocks")
	code, body := e.lookup("sha256", "matrixrocksmatrixrocks", h, "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I")
	if code != 200 || fmt.Sprint(lookupMappings(t, body)) != fmt.Sprintf("map[%s:@alice:example.org]", h) {
		t.Errorf("%d %v", code, body)
	}
}

// Bind -> lookup -> unbind -> lookup through every algorithm.
func TestLookupBindUnbindEveryAlgorithm(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		e := newLookupEnv(t, func(_ *Config, l *lookup.Config) { l.Algorithms = []string{"sha256", "none"} })
		p := e.pepper()
		e.bind("email", "strauss@example.com", "@strauss:example.org")
		e.bind("msisdn", "447700900001", "@phone:example.org")
		hE, hM := threepid.Hash("strauss@example.com", "email", p), threepid.Hash("447700900001", "msisdn", p)
		_, body := e.lookup("sha256", p, hE, hM, hE)
		if got := lookupMappings(t, body); got[hE] != "@strauss:example.org" || got[hM] != "@phone:example.org" || len(got) != 2 {
			t.Errorf("sha256: %v", got)
		}
		// Plaintext: the address is canonicalised (case folding), the key echoes the client's string.
		_, body = e.lookup("none", p, "Strauß@Example.COM email", "447700900001 msisdn", "nobody@example.com email", "garbage", "a@b.c msisdn")
		if got := lookupMappings(t, body); got["Strauß@Example.COM email"] != "@strauss:example.org" || got["447700900001 msisdn"] != "@phone:example.org" || len(got) != 2 {
			t.Errorf("none: %v", got)
		}
		e.unbind("email", "strauss@example.com", "@strauss:example.org")
		_, body = e.lookup("sha256", p, hE, hM)
		if got := lookupMappings(t, body); len(got) != 1 || got[hM] == "" {
			t.Errorf("sha256 after unbind: %v", got)
		}
		_, body = e.lookup("none", p, "strauss@example.com email")
		if got := lookupMappings(t, body); len(got) != 0 {
			t.Errorf("none after unbind: %v", got)
		}
	})
}

// security.md section 8, rows 25-30.
func TestLookupBadInput(t *testing.T) {
	e := newLookupEnv(t, func(_ *Config, l *lookup.Config) {
		l.MaxAddresses = 100
		l.RatePerAccount = lookup.Rate{Burst: 250, Every: time.Hour}
		l.RatePerIP = lookup.Rate{Burst: 1000, Every: time.Hour}
	})
	p := e.pepper()
	long := strings.Repeat("A", 1024)
	many := make([]string, 101)
	for i := range many {
		many[i] = "x"
	}
	for _, c := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"not json", `{"algorithm":`, 400, "M_NOT_JSON"},
		{"array body", `[]`, 400, "M_NOT_JSON"},
		{"algorithm missing", `{"pepper":"` + p + `","addresses":[]}`, 400, "M_MISSING_PARAMS"},
		{"algorithm md5", `{"algorithm":"md5","pepper":"` + p + `","addresses":[]}`, 400, "M_INVALID_PARAM"},
		{"algorithm not a string", `{"algorithm":1,"pepper":"` + p + `","addresses":[]}`, 400, "M_INVALID_PARAM"},
		{"none disabled", `{"algorithm":"none","pepper":"` + p + `","addresses":[]}`, 400, "M_INVALID_PARAM"},
		{"pepper missing", `{"algorithm":"sha256","addresses":[]}`, 400, "M_MISSING_PARAMS"},
		{"pepper wrong", `{"algorithm":"sha256","pepper":"nope","addresses":[]}`, 400, "M_INVALID_PEPPER"},
		{"addresses missing", `{"algorithm":"sha256","pepper":"` + p + `"}`, 400, "M_MISSING_PARAMS"},
		{"addresses not a list", `{"algorithm":"sha256","pepper":"` + p + `","addresses":"x"}`, 400, "M_INVALID_PARAM"},
		{"addresses with numbers", `{"algorithm":"sha256","pepper":"` + p + `","addresses":["x",1]}`, 400, "M_INVALID_PARAM"},
		{"addresses with objects", `{"algorithm":"sha256","pepper":"` + p + `","addresses":[{}]}`, 400, "M_INVALID_PARAM"},
		{"too many", lookupJSON(map[string]any{"algorithm": "sha256", "pepper": p, "addresses": many}), 400, "M_TOO_LARGE"},
		{"malformed hashes", lookupJSON(map[string]any{"algorithm": "sha256", "pepper": p, "addresses": []string{"!!!", long, ""}}), 200, ""},
	} {
		code, body := e.do("POST", "/_matrix/identity/v2/lookup", e.token, c.body)
		if code != c.status || (c.code != "" && body["errcode"] != c.code) {
			t.Errorf("%s: %d %v; want %d %s", c.name, code, body, c.status, c.code)
		}
		if c.code == "M_INVALID_PEPPER" && (body["lookup_pepper"] != p || body["algorithm"] != "sha256") {
			t.Errorf("%s: the error must carry algorithm and the current pepper: %v", c.name, body)
		}
		if c.status == 200 && len(lookupMappings(t, body)) != 0 {
			t.Errorf("%s: %v", c.name, body)
		}
	}
	// The budget: 250 addresses per account; 3 requests so far cost 3.
	hundred := many[:100]
	for i := 0; i < 2; i++ {
		if code, body := e.lookup("sha256", p, hundred...); code != 200 {
			t.Fatalf("request %d within the budget: %d %v", i, code, body)
		}
	}
	code, body := e.lookup("sha256", p, hundred...)
	if code != 429 || body["errcode"] != "M_LIMIT_EXCEEDED" {
		t.Fatalf("over the budget: %d %v", code, body)
	}
	if ms, _ := body["retry_after_ms"].(float64); ms <= 0 {
		t.Errorf("retry_after_ms = %v", body["retry_after_ms"])
	}
	// Accounts of one homeserver share its budget.
	e2 := newLookupEnv(t, func(_ *Config, l *lookup.Config) {
		l.MaxAddresses = 100
		l.RatePerHomeserver = lookup.Rate{Burst: 150, Every: time.Hour}
	})
	e2.store.CreateAccountToken("other", "@other:example.org", e2.clock.now())
	p2 := e2.pepper()
	if code, body := e2.lookup("sha256", p2, hundred...); code != 200 {
		t.Fatalf("first account: %d %v", code, body)
	}
	body2, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": p2, "addresses": hundred})
	if code, body := e2.do("POST", "/_matrix/identity/v2/lookup", "other", string(body2)); code != 429 {
		t.Errorf("second account of the same homeserver: %d %v", code, body)
	}
	// An over-cap request is refused before it costs anything: still 429 only by budget.
	if code, body := e.lookup("sha256", p, many...); code != 400 || body["errcode"] != "M_TOO_LARGE" {
		t.Errorf("over the cap: %d %v", code, body)
	}
}

func lookupJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Rotation with the grace period: the old pepper is answered until the grace
// ends, then M_INVALID_PEPPER carries the new one.
func TestLookupPepperRotation(t *testing.T) {
	e := newLookupEnv(t, func(_ *Config, l *lookup.Config) { l.PepperRotation, l.PepperGrace = time.Hour, 5*time.Minute })
	e.bind("email", "alice@example.org", "@alice:example.org")
	old := e.pepper()
	if err := e.svc.Index.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	cur := e.pepper()
	if cur == old {
		t.Fatal("pepper did not change")
	}
	e.bind("email", "bob@example.org", "@bob:example.org") // after the rotation: found with both
	for _, p := range []string{old, cur} {
		code, body := e.lookup("sha256", p, threepid.Hash("alice@example.org", "email", p), threepid.Hash("bob@example.org", "email", p))
		if code != 200 || len(lookupMappings(t, body)) != 2 {
			t.Errorf("pepper %s: %d %v", p[:4], code, body)
		}
	}
	e.clock.add(5*time.Minute + time.Second)
	code, body := e.lookup("sha256", old, threepid.Hash("alice@example.org", "email", old))
	if code != 400 || body["errcode"] != "M_INVALID_PEPPER" || body["lookup_pepper"] != cur || body["algorithm"] != "sha256" {
		t.Errorf("old pepper after grace: %d %v", code, body)
	}
}

func TestLookupV1(t *testing.T) {
	e := newLookupEnv(t, func(c *Config, _ *lookup.Config) { c.V1 = true })
	e.bind("email", "alice@example.org", "@alice:example.org")
	code, body := e.do("GET", "/_matrix/identity/api/v1/lookup?medium=email&address=Alice@Example.org", "", nil)
	if code != 200 || body["mxid"] != "@alice:example.org" || body["address"] != "alice@example.org" {
		t.Fatalf("%d %v", code, body)
	}
	if err := signing.Verify(body, "id.example.org", "ed25519:0", e.srv.key.Public()); err != nil {
		t.Errorf("signature: %v", err)
	}
	if code, body := e.do("GET", "/_matrix/identity/api/v1/lookup?medium=email&address=nobody@example.org", "", nil); code != 200 || len(body) != 0 {
		t.Errorf("unknown: %d %v", code, body)
	}
	if code, body := e.do("GET", "/_matrix/identity/api/v1/lookup?medium=email", "", nil); code != 400 || body["errcode"] != "M_MISSING_PARAMS" {
		t.Errorf("no address: %d %v", code, body)
	}
	code, body = e.do("POST", "/_matrix/identity/api/v1/bulk_lookup", "", `{"threepids":[["email","ALICE@example.org"],["email","x@example.org"],["msisdn","bad"]]}`)
	if code != 200 || fmt.Sprint(body["threepids"]) != "[[email ALICE@example.org @alice:example.org]]" {
		t.Errorf("bulk: %d %v", code, body)
	}
	for _, bad := range []string{`{}`, `{"threepids":"x"}`, `{"threepids":[["email"]]}`, `{"threepids":[[1,2]]}`} {
		if code, body := e.do("POST", "/_matrix/identity/api/v1/bulk_lookup", "", bad); code != 400 {
			t.Errorf("bulk %s: %d %v", bad, code, body)
		}
	}
	// v1 off: 404.
	e2 := newLookupEnv(t, nil)
	if code, _ := e2.do("GET", "/_matrix/identity/api/v1/lookup?medium=email&address=a@b.org", "", nil); code != 404 {
		t.Errorf("v1 off: %d", code)
	}
}

func TestPlainStrList(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{`[]`, []string{}, true},
		{` [ "a" , "bc" ] `[1:], nil, false}, // leading space already trimmed by the validator; trailing space is not ours
		{`["a","bc"]`, []string{"a", "bc"}, true},
		{"[ \"a\",\n\t\"b\" ]", []string{"a", "b"}, true},
		{`["a\"b"]`, nil, false}, // escapes: encoding/json decodes
		{`["\u0041"]`, nil, false},
		{`["a",1]`, nil, false},
		{`["a",]`, nil, false},
		{`"a"`, nil, false},
		{`["a"]x`, nil, false},
	} {
		got, ok := plainStrList(json.RawMessage(c.in))
		if ok != c.ok || (ok && fmt.Sprint(got) != fmt.Sprint(c.want)) {
			t.Errorf("plainStrList(%q) = %q, %v", c.in, got, ok)
		}
	}
	// Through the accessor, escapes still work.
	o, err := parseObject([]byte(`{"a":["x\"y","\u00e9"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if l, err := o.strList("a", true); err != nil || l[0] != `x"y` || l[1] != "é" {
		t.Errorf("strList with escapes: %q, %v", l, err)
	}
}
