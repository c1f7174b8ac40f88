package outbound

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The one rule for every ca_file: the system's roots plus the file's
// certificates; errors name the file and say what is wrong with it.
func TestLoadRoots(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	cert := srv.Certificate()
	dir := t.TempDir()
	write := func(name string, blocks ...*pem.Block) string {
		var data []byte
		for _, b := range blocks {
			data = append(data, pem.EncodeToMemory(b)...)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write("ca.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not looked at")}, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})

	pool, err := LoadRoots(good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "example.com"}); err != nil {
		t.Errorf("the file's certificate is not trusted: %v", err)
	}
	if sys, err := x509.SystemCertPool(); err == nil {
		want := sys.Clone()
		want.AddCert(cert)
		if !pool.Equal(want) {
			t.Error("the pool is not the system's roots plus the file's certificate")
		}
	}
	if pool, err := LoadRoots(""); pool != nil || err != nil {
		t.Errorf("no file: %v, %v; want nil (the system's roots)", pool, err)
	}

	for _, c := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing.pem"), "missing.pem: no such file"},
		{"empty", write("empty.pem"), "empty.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)"},
		{"key only", write("key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: []byte("k")}), "key.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----), only PRIVATE KEY"},
		{"broken", write("broken.pem", &pem.Block{Type: "CERTIFICATE", Bytes: []byte("garbage")}), "broken.pem holds no PEM certificate that parses: x509:"},
		{"DER", func() string { p := filepath.Join(dir, "ca.der"); os.WriteFile(p, cert.Raw, 0o600); return p }(), "ca.der holds no PEM certificate"},
	} {
		pool, err := LoadRoots(c.path)
		if err == nil || pool != nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, %v; want an error containing %q", c.name, pool, err, c.want)
		}
	}
}

func TestDescribeTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, ServerName: "example.com"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := DescribeTLS(conn.ConnectionState(), false)
	want := `TLS 1.3, certificate for example.com, *.example.com, 127.0.0.1, ::1 issued by "O=Acme Co"` // httptest's certificate
	if !strings.HasPrefix(got, want) || !strings.Contains(got, ", valid until 2") || strings.Contains(got, "NOT verified") {
		t.Errorf("DescribeTLS = %q, want %q...", got, want)
	}
	if got := DescribeTLS(conn.ConnectionState(), true); !strings.HasSuffix(got, " (NOT verified: insecure_skip_verify)") {
		t.Errorf("DescribeTLS(skipVerify) = %q", got)
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LocalHost": true, "127.0.0.1": true, "127.9.9.9": true, "::1": true, "[::1]": true, "::ffff:127.0.0.1": true,
		"example.org": false, "localhost.example.org": false, "10.0.0.1": false, "[::2]": false, "": false, "[": false,
	} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}
