package lookup_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mxid/lookup"
	"mxid/lookup/dnstest"
	"mxid/lookup/threepid"
)

// peerIS is another identity server: v2 hash_details and sha256 lookups
// with its own pepper (and a token when it wants one), v1 bulk_lookup. It
// also lies where told to, to check that answers are validated.
type peerIS struct {
	*httptest.Server
	token   string
	noV2    bool
	lie     bool // answer addresses not asked for and malformed IDs
	binds   map[lookup.ThreePID]string
	mu      sync.Mutex
	pepper  string
	v2calls atomic.Int64
	v1calls atomic.Int64
}

func newPeerIS(t *testing.T, token string, binds map[lookup.ThreePID]string) *peerIS {
	p := &peerIS{token: token, binds: binds, pepper: "peerpepper1"}
	mux := http.NewServeMux()
	authed := func(w http.ResponseWriter, r *http.Request) bool {
		if p.noV2 {
			http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, 404)
			return false
		}
		if p.token != "" && r.Header.Get("Authorization") != "Bearer "+p.token {
			w.WriteHeader(401)
			w.Write([]byte(`{"errcode":"M_UNAUTHORIZED"}`))
			return false
		}
		return true
	}
	mux.HandleFunc("GET /_matrix/identity/v2/hash_details", func(w http.ResponseWriter, r *http.Request) {
		if !authed(w, r) {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"lookup_pepper": p.pepper, "algorithms": []string{"none", "sha256"}})
	})
	mux.HandleFunc("POST /_matrix/identity/v2/lookup", func(w http.ResponseWriter, r *http.Request) {
		if !authed(w, r) {
			return
		}
		p.v2calls.Add(1)
		var req struct {
			Algorithm, Pepper string
			Addresses         []string
		}
		json.NewDecoder(r.Body).Decode(&req)
		p.mu.Lock()
		pepper := p.pepper
		p.mu.Unlock()
		if req.Pepper != pepper || req.Algorithm != "sha256" {
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(map[string]any{"errcode": "M_INVALID_PEPPER", "algorithm": "sha256", "lookup_pepper": pepper})
			return
		}
		byHash := map[string]string{}
		for tp, m := range p.binds {
			byHash[threepid.Hash(tp.Address, tp.Medium, pepper)] = m
		}
		out := map[string]string{}
		for _, h := range req.Addresses {
			if m, ok := byHash[h]; ok {
				out[h] = m
			}
		}
		if p.lie {
			out[threepid.Hash("unasked@example.org", "email", pepper)] = "@unasked:example.org"
			for h := range out {
				out[h] = "not an mxid"
			}
		}
		json.NewEncoder(w).Encode(map[string]any{"mappings": out})
	})
	mux.HandleFunc("POST /_matrix/identity/api/v1/bulk_lookup", func(w http.ResponseWriter, r *http.Request) {
		p.v1calls.Add(1)
		var req struct{ ThreePIDs [][2]string }
		json.NewDecoder(r.Body).Decode(&req)
		out := [][]string{}
		for _, q := range req.ThreePIDs {
			if m, ok := p.binds[lookup.ThreePID{Medium: q[0], Address: q[1]}]; ok {
				out = append(out, []string{q[0], q[1], m})
			}
		}
		if p.lie {
			out = append(out, []string{"email", "unasked@example.org", "@unasked:example.org"})
		}
		json.NewEncoder(w).Encode(map[string]any{"threepids": out})
	})
	p.Server = httptest.NewTLSServer(mux)
	t.Cleanup(p.Close)
	return p
}

func (p *peerIS) rotate(pepper string) { p.mu.Lock(); p.pepper = pepper; p.mu.Unlock() }

func (p *peerIS) port() uint16 {
	_, port, _ := net.SplitHostPort(p.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	return uint16(n)
}

// dnsServer is an authoritative DNS server on 127.0.0.1 (lookup/dnstest).
func dnsServer(t *testing.T, records ...string) (addr string, queries *atomic.Int64) {
	s := dnstest.Start(t, records...)
	return s.Addr, &s.Queries
}

// peerClient resolves names with the test DNS server and trusts the test
// servers' certificates (the real one comes from the outbound policy).
func peerClient(dnsAddr string) *http.Client {
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:     (&net.Dialer{Resolver: res, Timeout: 2 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
}

var (
	remoteAlice = lookup.ThreePID{Medium: "email", Address: "alice@remote.test"}
	remoteBob   = lookup.ThreePID{Medium: "email", Address: "bob@remote.test"}
	remotePhone = lookup.ThreePID{Medium: "msisdn", Address: "447700900555"}
	remoteNone  = lookup.ThreePID{Medium: "email", Address: "nobody@remote.test"}
)

func TestDNSSource(t *testing.T) {
	peer := newPeerIS(t, "", map[lookup.ThreePID]string{remoteAlice: "@alice:remote.test", remoteBob: "@bob:remote.test"})
	port := strconv.Itoa(int(peer.port()))
	addr, queries := dnsServer(t,
		"_matrix-identity._tcp.remote.test. 60 IN SRV 10 5 "+port+" is.remote.test.",
		"is.remote.test. 60 IN A 127.0.0.1",
		// Our own name in SRV: never asked.
		"_matrix-identity._tcp.loop.test. 60 IN SRV 10 5 "+port+" id.ourselves.test.",
		"id.ourselves.test. 60 IN A 127.0.0.1",
	)
	now := time.Unix(1_700_000_000, 0)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	cfg := lookup.DefaultDNSConfig()
	cfg.Enabled = true
	src := lookup.NewDNS(cfg, addr, peerClient(addr), []string{"id.ourselves.test", "ourselves.test"}, clock)
	ctx := context.Background()
	got, err := src.Lookup(ctx, []lookup.ThreePID{remoteAlice, remoteBob, remoteNone, remotePhone})
	if err != nil || got[remoteAlice] != "@alice:remote.test" || got[remoteBob] != "@bob:remote.test" || len(got) != 2 {
		t.Fatalf("got %v, %v", got, err)
	}
	if peer.v2calls.Load() != 1 || peer.v1calls.Load() != 0 {
		t.Errorf("v2 calls %d, v1 calls %d: want one v2 lookup", peer.v2calls.Load(), peer.v1calls.Load())
	}
	// Cached by TTL: no new DNS query within 60s, one after.
	q := queries.Load()
	src.Lookup(ctx, []lookup.ThreePID{remoteAlice})
	if queries.Load() != q {
		t.Error("discovery not cached")
	}
	clockMu.Lock()
	now = now.Add(61 * time.Second)
	clockMu.Unlock()
	src.Lookup(ctx, []lookup.ThreePID{remoteAlice})
	if queries.Load() == q {
		t.Error("discovery not refreshed after its TTL")
	}
	// The peer rotates its pepper: one M_INVALID_PEPPER, then a new hash_details.
	peer.rotate("peerpepper2")
	if got, err := src.Lookup(ctx, []lookup.ThreePID{remoteBob}); err != nil || got[remoteBob] != "@bob:remote.test" {
		t.Errorf("after the peer's rotation: %v, %v", got, err)
	}
	// Never ourselves: neither our own domain nor an SRV target that is us.
	before := peer.v2calls.Load()
	for _, tp := range []lookup.ThreePID{{Medium: "email", Address: "x@loop.test"}, {Medium: "email", Address: "x@ourselves.test"}} {
		if got, _ := src.Lookup(ctx, []lookup.ThreePID{tp}); len(got) != 0 {
			t.Errorf("%v: %v", tp, got)
		}
	}
	if peer.v2calls.Load() != before {
		t.Error("DNS discovery asked ourselves")
	}
	// Answers are validated: malformed IDs and addresses not asked for are dropped.
	peer.lie = true
	if got, _ := src.Lookup(ctx, []lookup.ThreePID{remoteAlice}); len(got) != 0 {
		t.Errorf("lying peer: %v", got)
	}
}

func TestForwarders(t *testing.T) {
	first := newPeerIS(t, "tok1", map[lookup.ThreePID]string{remoteAlice: "@alice:remote.test"})
	second := newPeerIS(t, "", map[lookup.ThreePID]string{remoteBob: "@bob:remote.test", remotePhone: "@phone:remote.test"})
	second.noV2 = true // v1 only, and configured to fall back
	client := peerClient("127.0.0.1:1")
	fw := lookup.NewForwarders([]lookup.ForwarderConfig{
		{URL: first.URL, AccessToken: "tok1"},
		{URL: second.URL + "/", AllowV1Fallback: true},
	}, client)
	got, err := fw.Lookup(context.Background(), []lookup.ThreePID{remoteAlice, remoteBob, remotePhone, remoteNone})
	if err != nil || got[remoteAlice] != "@alice:remote.test" || got[remoteBob] != "@bob:remote.test" || got[remotePhone] != "@phone:remote.test" || len(got) != 3 {
		t.Fatalf("got %v, %v", got, err)
	}
	// A wrong token: the forwarder fails, and without the fallback there is no v1.
	fw = lookup.NewForwarders([]lookup.ForwarderConfig{{URL: first.URL, AccessToken: "wrong"}}, client)
	if got, err := fw.Lookup(context.Background(), []lookup.ThreePID{remoteAlice}); err == nil || len(got) != 0 || first.v1calls.Load() != 0 {
		t.Errorf("wrong token: %v, %v, v1 calls %d", got, err, first.v1calls.Load())
	}
	// A lying v1 peer: only what was asked is kept.
	second.lie = true
	fw = lookup.NewForwarders([]lookup.ForwarderConfig{{URL: second.URL, AllowV1Fallback: true}}, client)
	if got, _ := fw.Lookup(context.Background(), []lookup.ThreePID{remoteBob}); len(got) != 1 || got[remoteBob] != "@bob:remote.test" {
		t.Errorf("lying v1 peer: %v", got)
	}
}

// A peer's answers go through the one Matrix ID grammar (server/matrixid):
// the IDs the old copy in lookup took and federation refused ("[:::]" is no
// IPv6 address), and the reverse ("-1.2.3.4" is no IPv4 literal), are
// dropped, over v2 and v1 alike.
func TestForwardersDropMalformedMXIDs(t *testing.T) {
	binds := map[lookup.ThreePID]string{remoteAlice: "@alice:[:::]", remoteBob: "@bob:-1.2.3.4", remotePhone: "@Phone:[::1]:8448"}
	v2 := newPeerIS(t, "", binds)
	v1 := newPeerIS(t, "", binds)
	v1.noV2 = true
	client := peerClient("127.0.0.1:1")
	for name, cfg := range map[string]lookup.ForwarderConfig{"v2": {URL: v2.URL}, "v1": {URL: v1.URL, AllowV1Fallback: true}} {
		fw := lookup.NewForwarders([]lookup.ForwarderConfig{cfg}, client)
		got, err := fw.Lookup(context.Background(), []lookup.ThreePID{remoteAlice, remoteBob, remotePhone})
		if err != nil || len(got) != 1 || got[remotePhone] != "@Phone:[::1]:8448" {
			t.Errorf("%s: got %v, %v; want only the well-formed @Phone:[::1]:8448", name, got, err)
		}
	}
}
