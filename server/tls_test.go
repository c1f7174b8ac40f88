package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA issues certificates for the files-mode tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mxid test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert, key, pool}
}

// issue writes a certificate for name with the given serial and its key to
// certFile and keyFile.
func (ca *testCA) issue(t *testing.T, name string, serial int64, certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	writeAtomic(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	writeAtomic(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// writeAtomic replaces a file the way certbot and friends do: write, rename.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// servedSerial connects to addr and returns the serial of the certificate
// served, after verifying it for name against the CA.
func servedSerial(t *testing.T, addr, name string, roots *x509.CertPool) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestTLSFilesReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ca := newTestCA(t)
	ca.issue(t, "id.example.test", 100, certFile, keyFile)

	cfg := DefaultConfig()
	cfg.PublicBaseURL = "https://id.example.test"
	cfg.TLS = TLSConfig{Mode: TLSFiles, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		CertFile: certFile, KeyFile: keyFile, PollInterval: time.Second}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	tm, err := NewTLS(cfg, dir, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tm.Stop()
	l, err := tm.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l.API, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	go http.Serve(l.HTTP, l.HTTPHandler)
	if err := tm.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	addr := l.API.Addr().String()

	if got := servedSerial(t, addr, "id.example.test", ca.pool); got != 100 {
		t.Fatalf("serial %d served, want 100", got)
	}

	// Replaced on disk: picked up by the poller (every second) without a
	// signal. Polled in turn: the deadline only catches a poller that
	// never sees the change.
	ca.issue(t, "id.example.test", 101, certFile, keyFile)
	deadline := time.Now().Add(time.Minute)
	for servedSerial(t, addr, "id.example.test", ca.pool) != 101 {
		if time.Now().After(deadline) {
			t.Fatal("the replaced certificate was not picked up within a minute")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A broken replacement (a key that is not PEM) is refused: the previous
	// certificate stays.
	writeAtomic(t, keyFile, []byte("not a key"))
	if err := tm.Reload(); err == nil {
		t.Error("Reload accepted a broken key")
	}
	if got := servedSerial(t, addr, "id.example.test", ca.pool); got != 101 {
		t.Errorf("after a broken replacement serial %d served, want 101 kept", got)
	}

	// Reload (what SIGHUP calls) takes a good pair at once.
	ca.issue(t, "id.example.test", 102, certFile, keyFile)
	if err := tm.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, addr, "id.example.test", ca.pool); got != 102 {
		t.Errorf("after Reload serial %d served, want 102", got)
	}

	// Plain HTTP redirects to public_base_url.
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get("http://" + l.HTTP.Addr().String() + "/_matrix/identity/v2?a=b")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != "https://id.example.test/_matrix/identity/v2?a=b" {
		t.Errorf("redirect: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
}

func TestTLSConfigValidate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	newTestCA(t).issue(t, "id.example.test", 1, certFile, keyFile)
	notPEM := filepath.Join(dir, "junk")
	os.WriteFile(notPEM, []byte("junk"), 0o600)

	tests := []struct {
		name    string
		public  string
		edit    func(c *TLSConfig)
		wantErr string // "" = valid
	}{
		{"off is the default", "http://127.0.0.1:8090", func(c *TLSConfig) {}, ""},
		{"unknown mode", "https://id.example.org", func(c *TLSConfig) { c.Mode = "letsencrypt" }, `must be off, acme or files`},
		{"acme", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.Email = "ops@example.org" }, ""},
		{"acme needs https", "http://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME }, `must start with https://`},
		{"acme not for an IP", "https://192.0.2.7", func(c *TLSConfig) { c.Mode = TLSACME }, `must be a DNS name`},
		{"acme localhost at a public CA", "https://localhost", func(c *TLSConfig) { c.Mode = TLSACME }, `cannot get a certificate from a public CA`},
		{"acme private name at a private CA", "https://id.home.arpa", func(c *TLSConfig) {
			c.Mode = TLSACME
			c.CA = "https://ca.home.arpa/acme/directory"
		}, ""},
		{"acme plain-http CA", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.CA = "http://ca.example/dir" }, `tls.ca`},
		{"acme bad email", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.Email = "ops" }, `tls.email`},
		{"acme roots not PEM", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.CARootsFile = notPEM }, `holds no PEM certificate`},
		{"acme unknown challenge", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.Challenges = []string{"dns-01"} }, `"dns-01" is not`},
		{"acme http-01 without http_listen", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.HTTPListen = "" }, `tls.http_listen is required`},
		{"acme tls-alpn-01 only", "https://id.example.org", func(c *TLSConfig) {
			c.Mode = TLSACME
			c.HTTPListen = ""
			c.Challenges = []string{ChallengeTLSALPN01}
		}, ""},
		{"acme bad listen", "https://id.example.org", func(c *TLSConfig) { c.Mode = TLSACME; c.Listen = "443" }, `tls.listen`},
		{"files", "https://id.example.test", func(c *TLSConfig) { c.Mode = TLSFiles; c.CertFile, c.KeyFile = certFile, keyFile }, ""},
		{"files missing paths", "https://id.example.test", func(c *TLSConfig) { c.Mode = TLSFiles }, `are required`},
		{"files key mismatch", "https://id.example.test", func(c *TLSConfig) { c.Mode = TLSFiles; c.CertFile, c.KeyFile = certFile, notPEM }, `cannot load`},
		{"files poll too fast", "https://id.example.test", func(c *TLSConfig) {
			c.Mode = TLSFiles
			c.CertFile, c.KeyFile = certFile, keyFile
			c.PollInterval = time.Millisecond
		}, `poll_interval`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultTLSConfig()
			tc.edit(&c)
			errs := c.Validate(tc.public)
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			joined := strings.Join(all, "\n")
			if tc.wantErr == "" && len(errs) > 0 {
				t.Fatalf("unexpected problems:\n%s", joined)
			}
			if tc.wantErr != "" && !strings.Contains(joined, tc.wantErr) {
				t.Fatalf("want a problem containing %q, got:\n%s", tc.wantErr, joined)
			}
		})
	}
}
