package server

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/db"
	"mxid/server/signing"
)

// signingHS is a homeserver with its own ed25519 key, serving
// /_matrix/key/v2/server over TLS.
type signingHS struct {
	name    string
	key     *signing.Key
	ts      *httptest.Server
	mu      sync.Mutex
	fetches int
	doc     func() any // the key answer; nil: valid for clock+1h
	clock   *manualClock
}

func newSigningHS(t *testing.T, name string, clock *manualClock) *signingHS {
	t.Helper()
	key, err := signing.NewKey("ed25519:hs1")
	if err != nil {
		t.Fatal(err)
	}
	f := &signingHS{name: name, key: key, clock: clock}
	f.ts = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/key/v2/server" {
			http.NotFound(w, r)
			return
		}
		f.mu.Lock()
		f.fetches++
		doc := f.doc
		f.mu.Unlock()
		var v any
		if doc != nil {
			v = doc()
		} else {
			v = f.keyDoc(f.key, clock.Now().Add(time.Hour))
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(f.ts.Close)
	return f
}

// keyDoc is a key answer listing key and signed by signer.
func (f *signingHS) keyDoc(signer *signing.Key, validUntil time.Time) map[string]any {
	doc := map[string]any{
		"server_name":     f.name,
		"verify_keys":     map[string]any{f.key.ID: map[string]string{"key": f.key.PublicBase64()}},
		"old_verify_keys": map[string]any{},
		"valid_until_ts":  validUntil.UnixMilli(),
	}
	signed, err := signer.Sign(doc, f.name)
	if err != nil {
		panic(err)
	}
	return signed
}

func (f *signingHS) fetchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches
}

// authHeader signs a request as origin with signer; field is
// "destination_is" (what Synapse signs) or "destination" (the
// server-server spec).
func xMatrixHeader(signer *signing.Key, origin, field, dest, method, uri string, content any) string {
	obj := map[string]any{"method": method, "uri": uri, "origin": origin, field: dest, "content": content}
	signed, err := signer.Sign(obj, origin)
	if err != nil {
		panic(err)
	}
	sig := signed["signatures"].(map[string]any)[origin].(map[string]any)[signer.ID].(string)
	return fmt.Sprintf(`X-Matrix origin=%s,key="%s",sig="%s",destination="%s"`, origin, signer.ID, sig, dest)
}

func writeServerCertsPEM(t *testing.T, servers ...*httptest.Server) string {
	t.Helper()
	var b []byte
	for _, s := range servers {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})...)
	}
	p := filepath.Join(t.TempDir(), "hs.pem")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnbindSignedByHomeserver(t *testing.T) {
	clock := newManualClock()
	hs := newSigningHS(t, "hs.test", clock)
	other := newSigningHS(t, "other.test", clock)
	stale := newSigningHS(t, "stale.test", clock)
	stale.doc = func() any { return stale.keyDoc(stale.key, clock.Now().Add(-time.Minute)) }
	bad := newSigningHS(t, "bad.test", clock)
	h := newIDHarness(t, idHarnessOpts{config: func(c *Config) {
		c.Outbound.Pins = map[string]string{"hs.test": hs.ts.URL, "other.test": other.ts.URL, "stale.test": stale.ts.URL, "bad.test": bad.ts.URL, "down.test": "https://127.0.0.1:1"}
		c.Outbound.CAFile = writeServerCertsPEM(t, hs.ts, other.ts, stale.ts, bad.ts)
		c.Outbound.Timeout = 3 * time.Second
	}, clock: clock})

	const uri = "/_matrix/identity/v2/3pid/unbind"
	bindAs := func(mxid, address string) {
		t.Helper()
		now := clock.Now().UnixMilli()
		if _, err := h.store.PutBinding(db.Binding{Medium: "email", Address: address, MXID: mxid, TS: now, NotBefore: now, NotAfter: now + 1e12}); err != nil {
			t.Fatal(err)
		}
	}
	bound := func(address string) bool {
		_, err := h.store.GetBinding("email", address)
		return err == nil
	}
	content := func(mxid, address string) map[string]any {
		return map[string]any{"mxid": mxid, "threepid": map[string]any{"medium": "email", "address": address}}
	}
	send := func(body map[string]any, auth ...string) apiReply {
		return h.call("POST", uri, "", body, http.Header{"Authorization": auth})
	}

	// Synapse's form: destination_is in the signed object.
	bindAs("@alice:hs.test", "alice@example.org")
	c := content("@alice:hs.test", "alice@example.org")
	wantReply(t, "signed (destination_is)", send(c, xMatrixHeader(hs.key, "hs.test", "destination_is", "id.example.test", "POST", uri, c)), 200, "")
	if bound("alice@example.org") {
		t.Error("binding still there after a signed unbind")
	}
	// The server-server spec's form: destination, here the public base URL's host.
	bindAs("@alice:hs.test", "alice@example.org")
	dest := strings.TrimPrefix(h.ts.URL, "http://")
	wantReply(t, "signed (destination)", send(c, xMatrixHeader(hs.key, "hs.test", "destination", dest, "POST", uri, c)), 200, "")
	if bound("alice@example.org") {
		t.Error("binding still there after a signed unbind (destination)")
	}
	if n := hs.fetchCount(); n != 1 {
		t.Errorf("keys fetched %d times, want 1 (cached until valid_until_ts)", n)
	}

	bindAs("@alice:hs.test", "alice@example.org")
	forger, _ := signing.NewKey("ed25519:hs1")
	for _, tc := range []struct {
		name   string
		body   map[string]any
		auth   []string
		status int
		code   string
	}{
		{"forged key", c, []string{xMatrixHeader(forger, "hs.test", "destination_is", "id.example.test", "POST", uri, c)}, 403, "M_FORBIDDEN"},
		{"tampered content", content("@alice:hs.test", "alice@example.org"), []string{xMatrixHeader(hs.key, "hs.test", "destination_is", "id.example.test", "POST", uri, content("@alice:hs.test", "bob@example.org"))}, 403, "M_FORBIDDEN"},
		{"other uri", c, []string{xMatrixHeader(hs.key, "hs.test", "destination_is", "id.example.test", "POST", "/_matrix/identity/v2/3pid/bind", c)}, 403, "M_FORBIDDEN"},
		{"other destination", c, []string{xMatrixHeader(hs.key, "hs.test", "destination_is", "evil-is.example", "POST", uri, c)}, 403, "M_FORBIDDEN"},
		{"wrong origin", c, []string{xMatrixHeader(other.key, "other.test", "destination_is", "id.example.test", "POST", uri, c)}, 403, "M_FORBIDDEN"},
		{"stale keys", content("@alice:stale.test", "alice@example.org"), []string{xMatrixHeader(stale.key, "stale.test", "destination_is", "id.example.test", "POST", uri, content("@alice:stale.test", "alice@example.org"))}, 403, "M_FORBIDDEN"},
		{"unknown key id", c, []string{strings.Replace(xMatrixHeader(hs.key, "hs.test", "destination_is", "id.example.test", "POST", uri, c), "ed25519:hs1", "ed25519:nope", 1)}, 403, "M_FORBIDDEN"},
		{"no sig", c, []string{`X-Matrix origin=hs.test,key="ed25519:hs1"`}, 401, "M_UNAUTHORIZED"},
		{"bad origin", c, []string{`X-Matrix origin="hs.test/x",key="ed25519:hs1",sig="abc"`}, 401, "M_UNAUTHORIZED"},
		{"bearer only", c, []string{"Bearer abc"}, 401, "M_UNAUTHORIZED"},
		{"none", c, nil, 401, "M_UNAUTHORIZED"},
		{"unreachable", content("@alice:down.test", "alice@example.org"), []string{xMatrixHeader(hs.key, "down.test", "destination_is", "id.example.test", "POST", uri, content("@alice:down.test", "alice@example.org"))}, 502, "M_UNKNOWN"},
	} {
		wantReply(t, tc.name, send(tc.body, tc.auth...), tc.status, tc.code)
		if !bound("alice@example.org") {
			t.Fatalf("%s: the binding was removed", tc.name)
		}
	}

	// Key answers that are not valid never count as keys.
	bc := content("@alice:bad.test", "alice@example.org")
	for name, doc := range map[string]func() any{
		"valid_until_ts string": func() any { d := bad.keyDoc(bad.key, clock.Now().Add(time.Hour)); d["valid_until_ts"] = "x"; return d },
		"verify_keys list":      func() any { d := bad.keyDoc(bad.key, clock.Now().Add(time.Hour)); d["verify_keys"] = []any{}; return d },
		"key not a string": func() any {
			d := bad.keyDoc(bad.key, clock.Now().Add(time.Hour))
			d["verify_keys"] = map[string]any{"ed25519:hs1": map[string]any{"key": 1}}
			return d
		},
		"unsigned":        func() any { d := bad.keyDoc(bad.key, clock.Now().Add(time.Hour)); delete(d, "signatures"); return d },
		"signed by other": func() any { return bad.keyDoc(forger, clock.Now().Add(time.Hour)) },
		"other server":    func() any { return hs.keyDoc(hs.key, clock.Now().Add(time.Hour)) },
		"not JSON":        func() any { return "nope" },
		"huge": func() any {
			d := bad.keyDoc(bad.key, clock.Now().Add(time.Hour))
			d["pad"] = strings.Repeat("x", 100<<10)
			return d
		},
	} {
		bad.mu.Lock()
		bad.doc = doc
		bad.mu.Unlock()
		r := send(bc, xMatrixHeader(bad.key, "bad.test", "destination_is", "id.example.test", "POST", uri, bc))
		if r.status != 403 && r.status != 502 {
			t.Errorf("key answer %s: %d %s", name, r.status, r.raw)
		}
		if !bound("alice@example.org") {
			t.Fatalf("key answer %s: the binding was removed", name)
		}
	}

	// After valid_until_ts the keys are fetched again.
	clock.Advance(2 * time.Hour)
	wantReply(t, "after expiry", send(c, xMatrixHeader(hs.key, "hs.test", "destination_is", "id.example.test", "POST", uri, c)), 200, "")
	if n := hs.fetchCount(); n != 2 {
		t.Errorf("keys fetched %d times, want 2", n)
	}
	if bound("alice@example.org") {
		t.Error("binding still there")
	}
}
