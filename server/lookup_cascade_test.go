package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"mxid/db"
	"mxid/lookup"
	"mxid/lookup/threepid"
	"mxid/server/outbound"
	"mxid/server/signing"
)

// forwarderPeer is another identity server answering v2 lookups with its
// own pepper for one binding.
func forwarderPeer(t *testing.T, medium, address, mxid string) *httptest.Server {
	const pepper = "peerpepper"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/identity/v2/hash_details", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"lookup_pepper": pepper, "algorithms": []string{"sha256"}})
	})
	mux.HandleFunc("POST /_matrix/identity/v2/lookup", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer peertoken" {
			w.WriteHeader(401)
			return
		}
		var req struct{ Addresses []string }
		json.NewDecoder(r.Body).Decode(&req)
		out := map[string]string{}
		for _, h := range req.Addresses {
			if h == threepid.Hash(address, medium, pepper) {
				out[h] = mxid
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"mappings": out})
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

// Plaintext lookups walk the cascade to a forwarder only for requesters in
// lookup.recursion_cidrs; X-Forwarded-For counts only from trusted proxies.
func TestLookupRecursion(t *testing.T) {
	peer := forwarderPeer(t, "email", "far@elsewhere.org", "@far:elsewhere.org")
	for _, c := range []struct {
		name    string
		cidrs   []string
		proxies []string
		xff     string
		want    bool
	}{
		{"requester inside the CIDRs", []string{"127.0.0.0/8"}, nil, "", true},
		{"no CIDRs", nil, nil, "", false},
		{"spoofed X-Forwarded-For from an untrusted peer is ignored", []string{"127.0.0.0/8"}, nil, "203.0.113.9", true},
		{"trusted proxy: the client behind it is outside", []string{"127.0.0.0/8"}, []string{"127.0.0.1"}, "203.0.113.9", false},
		{"trusted proxy: the client behind it is inside", []string{"10.0.0.0/8"}, []string{"127.0.0.1"}, "10.1.2.3", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			store, err := db.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			lcfg := lookup.DefaultConfig()
			lcfg.Algorithms = []string{"sha256", "none"}
			lcfg.RecursionCIDRs = c.cidrs
			svc, err := lookup.New(lcfg, lookup.DefaultLDAPConfig(), lookup.DefaultDNSConfig(),
				[]lookup.ForwarderConfig{{URL: peer.URL, AccessToken: "peertoken"}},
				lookup.Deps{Store: store, HTTPClient: peer.Client()})
			if err != nil {
				t.Fatal(err)
			}
			key, _ := signing.NewKey("ed25519:0")
			policy, _ := outbound.New(outbound.DefaultConfig())
			cfg := DefaultConfig()
			cfg.HTTP.TrustedProxies = c.proxies
			srv, err := New(cfg, Deps{Store: store, Key: key, Policy: policy, Lookup: svc, Bindings: svc.Index})
			if err != nil {
				t.Fatal(err)
			}
			ts := httptest.NewServer(srv.Handler())
			defer ts.Close()
			store.CreateAccountToken("tok", "@me:example.org", srv.now())
			store.PutBinding(db.Binding{Medium: "email", Address: "near@example.org", MXID: "@near:example.org"})
			svc.Index.Bound("email", "near@example.org", "@near:example.org")
			body, _ := json.Marshal(map[string]any{"algorithm": "none", "pepper": svc.Index.Pepper(),
				"addresses": []string{"far@elsewhere.org email", "near@example.org email"}})
			req, _ := http.NewRequest("POST", ts.URL+"/_matrix/identity/v2/lookup", strings.NewReader(string(body)))
			req.Header.Set("Authorization", "Bearer tok")
			if c.xff != "" {
				req.Header.Set("X-Forwarded-For", c.xff)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var out struct{ Mappings map[string]string }
			json.NewDecoder(resp.Body).Decode(&out)
			if out.Mappings["near@example.org email"] != "@near:example.org" {
				t.Errorf("local binding: %v", out.Mappings)
			}
			if got := out.Mappings["far@elsewhere.org email"] == "@far:elsewhere.org"; got != c.want {
				t.Errorf("forwarded answer present = %v, want %v (%v)", got, c.want, out.Mappings)
			}
		})
	}
}
