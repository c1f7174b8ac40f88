package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/lookup/dnstest"
	"mxid/server/outbound"
)

// testPKI makes a CA and a server certificate for names, and writes the CA
// to a PEM file for outbound.ca_file.
func testPKI(t *testing.T, names ...string) (caFile string, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mxid test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: names, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}
}

// testDNS serves records on 127.0.0.1 and returns its address.
func testDNS(t *testing.T, records ...string) string {
	return dnstest.Start(t, records...).Addr
}

// A homeserver over TLS that answers well-known by Host and userinfo with
// a sub on the server named by the token, and records the Host headers of
// userinfo calls.
type fakeHS struct {
	*httptest.Server
	port      string
	mu        sync.Mutex
	hosts     []string
	wellKnown map[string]string // host -> m.server
}

func newFakeHS(t *testing.T, cert tls.Certificate) *fakeHS {
	hs := &fakeHS{wellKnown: map[string]string{}}
	hs.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		switch r.URL.Path {
		case "/.well-known/matrix/server":
			if s, ok := hs.wellKnown[host]; ok {
				json.NewEncoder(w).Encode(map[string]string{"m.server": s})
				return
			}
			http.NotFound(w, r)
		case "/_matrix/federation/v1/openid/userinfo":
			hs.mu.Lock()
			hs.hosts = append(hs.hosts, r.Host)
			hs.mu.Unlock()
			json.NewEncoder(w).Encode(map[string]string{"sub": "@u:" + r.URL.Query().Get("access_token")})
		default:
			http.NotFound(w, r)
		}
	}))
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted-certificate case logs handshake errors
	hs.StartTLS()
	t.Cleanup(hs.Close)
	_, hs.port, _ = net.SplitHostPort(strings.TrimPrefix(hs.URL, "https://"))
	return hs
}

func (hs *fakeHS) lastHost() string {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if len(hs.hosts) == 0 {
		return ""
	}
	return hs.hosts[len(hs.hosts)-1]
}

func TestDiscovery(t *testing.T) {
	caFile, cert := testPKI(t, "hs.test", "wk.test", "delegated.test", "srv.test", "legacy.test", "plain.test", "wksrv.test")
	hs := newFakeHS(t, cert)
	p := hs.port
	hs.wellKnown["wk.test"] = "delegated.test:" + p
	hs.wellKnown["wksrv.test"] = "srv.test"
	dnsAddr := testDNS(t,
		"hs.test. 60 IN A 127.0.0.1", "wk.test. 60 IN A 127.0.0.1", "delegated.test. 60 IN A 127.0.0.1",
		"srv.test. 60 IN A 127.0.0.1", "legacy.test. 60 IN A 127.0.0.1", "plain.test. 60 IN A 127.0.0.1",
		"wksrv.test. 60 IN A 127.0.0.1", "target.test. 60 IN A 127.0.0.1", "evil.test. 60 IN A 127.0.0.1",
		"internal.evil.test. 60 IN A 169.254.169.254",
		"_matrix-fed._tcp.srv.test. 60 IN SRV 10 0 "+p+" target.test.",
		"_matrix._tcp.legacy.test. 60 IN SRV 10 0 "+p+" target.test.",
		"_matrix-fed._tcp.evil.test. 60 IN SRV 10 0 "+p+" internal.evil.test.",
	)
	cfg := outbound.DefaultConfig()
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	cfg.CAFile = caFile
	cfg.DNSServer = dnsAddr
	cfg.Timeout = 3 * time.Second
	policy, err := outbound.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver(policy, nil)
	r.wellKnownPort, r.fedPort = p, p

	for _, c := range []struct {
		name, base, host string
	}{
		{"127.0.0.1:" + p, "https://127.0.0.1:" + p, "127.0.0.1:" + p},    // IP literal with port
		{"hs.test:" + p, "https://hs.test:" + p, "hs.test:" + p},          // explicit port
		{"wk.test", "https://delegated.test:" + p, "delegated.test:" + p}, // well-known with port
		{"wksrv.test", "https://target.test:" + p, "srv.test"},            // well-known, then SRV
		{"srv.test", "https://target.test:" + p, "srv.test"},              // _matrix-fed._tcp
		{"legacy.test", "https://target.test:" + p, "legacy.test"},        // _matrix._tcp
		{"plain.test", "https://plain.test:" + p, "plain.test"},           // default port
	} {
		tgt, err := r.Resolve(context.Background(), c.name)
		if err != nil {
			t.Errorf("Resolve(%s): %v", c.name, err)
			continue
		}
		if tgt.BaseURL != c.base || tgt.Host != c.host {
			t.Errorf("Resolve(%s) = %+v, want base %s host %s", c.name, tgt, c.base, c.host)
		}
		sub, err := r.UserInfo(context.Background(), c.name, c.name)
		if err != nil || sub != "@u:"+c.name {
			t.Errorf("UserInfo via %s = %q, %v", c.name, sub, err)
		}
		if got := hs.lastHost(); got != c.host {
			t.Errorf("UserInfo via %s sent Host %q, want %q", c.name, got, c.host)
		}
	}

	// An SRV record pointing into a blocked range is refused at dial time.
	if _, err := r.UserInfo(context.Background(), "evil.test", "evil.test"); !errors.Is(err, ErrUnreachable) || !errors.Is(err, outbound.ErrBlocked) {
		t.Errorf("UserInfo via evil.test: %v, want a blocked destination", err)
	}
	// Without the test CA the certificate does not verify.
	cfg.CAFile = ""
	untrusting, _ := outbound.New(cfg)
	r2 := NewResolver(untrusting, nil)
	r2.wellKnownPort, r2.fedPort = p, p
	if _, err := r2.UserInfo(context.Background(), "hs.test:"+p, "hs.test:"+p); err == nil {
		t.Error("an untrusted certificate was accepted")
	}
}

func TestWellKnownCachedAfterFailure(t *testing.T) {
	var calls int
	var mu sync.Mutex
	caFile, cert := testPKI(t, "slow.test")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		w.Write([]byte(strings.Repeat("x", 100<<10))) // over the 50 KiB cap
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "https://"))
	cfg := outbound.DefaultConfig()
	cfg.AllowCIDRs = []string{"127.0.0.0/8"}
	cfg.CAFile = caFile
	cfg.DNSServer = testDNS(t, "slow.test. 60 IN A 127.0.0.1")
	policy, _ := outbound.New(cfg)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := NewResolver(policy, func() time.Time { return now })
	r.wellKnownPort, r.fedPort = port, "1"
	for i := 0; i < 3; i++ {
		tgt, err := r.Resolve(context.Background(), "slow.test")
		if err != nil || tgt.BaseURL != "https://slow.test:1" {
			t.Fatalf("Resolve: %+v %v", tgt, err)
		}
	}
	if calls != 1 {
		t.Errorf("well-known fetched %d times, want 1 (failures are cached)", calls)
	}
	now = now.Add(2 * time.Hour)
	r.Resolve(context.Background(), "slow.test")
	if calls != 2 {
		t.Errorf("well-known fetched %d times after the failure cache expired, want 2", calls)
	}
}

// Server names come from unauthenticated requests: naming endless servers
// must not grow the resolver's caches.
func TestResolverCachesAreBounded(t *testing.T) {
	cfg := outbound.DefaultConfig()
	cfg.DNSServer = testDNS(t) // every name is NXDOMAIN
	cfg.Timeout = time.Second
	policy, err := outbound.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver(policy, nil)
	ctx := context.Background()
	for i := 0; i < 3*maxClients; i++ {
		r.Do(ctx, fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), http.MethodGet, "/", nil, nil, 1024)
	}
	for i := 0; i < maxCached+500; i++ {
		r.lookupWellKnown(ctx, fmt.Sprintf("h%d.invalid", i))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.clients) > maxClients || len(r.wellKnown) > maxCached {
		t.Errorf("caches hold %d clients and %d well-known answers, bounds %d and %d", len(r.clients), len(r.wellKnown), maxClients, maxCached)
	}
}
