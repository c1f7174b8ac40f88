package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/lookup/slapdtest"
)

// needBinary skips (locally) or fails (CI=true) when a test component is
// missing.
func needBinary(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed (apt-get install pebble)", name)
			}
			t.Skipf("%s is not installed (apt-get install pebble)", name)
		}
	}
}

// freePort returns a 127.0.0.1 port that was free a moment ago, outside
// the range the kernel hands to outgoing connections (slapdtest.FreePort).
func freePort(t *testing.T) int { t.Helper(); return slapdtest.FreePort(t) }

// syncBuffer collects a server's log from several goroutines.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed at the next write (or close): wakes waitFor
	closed  bool          // nothing more will be written
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wake()
	return s.b.Write(p)
}

func (s *syncBuffer) wake() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// close says that nothing more will be written (the server returned).
func (s *syncBuffer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.wake()
}

// waitFor blocks until the log holds text, woken by each write (no
// polling), or until it is closed; it reports whether text came.
func (s *syncBuffer) waitFor(text string) bool {
	return s.waitUntil(func(log string) bool { return strings.Contains(log, text) })
}

// waitUntil is waitFor for any condition on the log.
func (s *syncBuffer) waitUntil(cond func(log string) bool) bool {
	for {
		s.mu.Lock()
		found, closed := cond(s.b.String()), s.closed
		if found || closed {
			s.mu.Unlock()
			return found
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		<-ch
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pebble is a running pebble ACME CA in real validation mode: pebble-
// challtestsrv answers every A query with 127.0.0.1, and pebble's
// validation authority dials the client under test on httpPort (HTTP-01)
// and tlsPort (TLS-ALPN-01).
type pebble struct {
	DirURL      string // ACME directory
	ListenerCA  string // PEM file: trust it for the ACME API connection
	IssuingRoot *x509.CertPool
	procs       []*exec.Cmd
	exited      []chan struct{} // closed once procs[i] has exited
	log         *syncBuffer
}

// startPebble starts pebble and challtestsrv on free 127.0.0.1 ports in a
// temp dir; they are stopped when the test ends (or by stop).
func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	needBinary(t, "pebble", "pebble-challtestsrv")
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := mintListenerCert(t)
	for name, data := range map[string][]byte{"listener-ca.pem": caPEM, "listener.pem": certPEM, "listener.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	// Its four ports can be taken between freePort and pebble's bind: try
	// again with others.
	for attempt := 1; ; attempt++ {
		p := &pebble{ListenerCA: filepath.Join(dir, "listener-ca.pem"), log: &syncBuffer{}}
		t.Cleanup(p.stop)
		err := p.start(t, dir, pool, httpPort, tlsPort)
		if err == nil {
			return p
		}
		p.stop()
		if attempt == 5 || !strings.Contains(p.log.String(), "address already in use") {
			t.Fatalf("%v\n%s", err, p.log.String())
		}
	}
}

// start runs challtestsrv and pebble on new free ports and returns once
// pebble answers, with its issuing root; or an error once one has exited.
func (p *pebble) start(t *testing.T, dir string, pool *x509.CertPool, httpPort, tlsPort int) error {
	acme, mgmt, dns, cmgmt := freePort(t), freePort(t), freePort(t), freePort(t)
	conf := fmt.Sprintf(`{"pebble": {
  "listenAddress": "127.0.0.1:%d", "managementListenAddress": "127.0.0.1:%d",
  "certificate": %q, "privateKey": %q,
  "httpPort": %d, "tlsPort": %d, "ocspResponderURL": "", "externalAccountBindingRequired": false}}`,
		acme, mgmt, filepath.Join(dir, "listener.pem"), filepath.Join(dir, "listener.key"), httpPort, tlsPort)
	if err := os.WriteFile(filepath.Join(dir, "pebble.json"), []byte(conf), 0o600); err != nil {
		return err
	}
	exited := make(chan string, 2) // the name of each process that exits
	start := func(env []string, name string, args ...string) error {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = p.log, p.log
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %v", name, err)
		}
		done := make(chan struct{})
		p.procs, p.exited = append(p.procs, cmd), append(p.exited, done)
		go func() { cmd.Wait(); close(done); exited <- name }()
		return nil
	}
	if err := start(nil, "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-dns01", fmt.Sprintf("127.0.0.1:%d", dns), "-http01", "", "-https01", "", "-tlsalpn01", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", cmgmt)); err != nil {
		return err
	}
	if err := start([]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}, "pebble",
		"-config", filepath.Join(dir, "pebble.json"), "-strict=false", "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dns)); err != nil {
		return err
	}

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	p.DirURL = fmt.Sprintf("https://127.0.0.1:%d/dir", acme)
	// Nothing tells when pebble listens: poll, ending at once if a process
	// exits, with a deadline that only catches a hang (it starts in well
	// under a second).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get(p.DirURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pebble did not answer in 2 minutes: %v", err)
		}
		select {
		case name := <-exited:
			return fmt.Errorf("%s exited while starting", name)
		case <-time.After(100 * time.Millisecond):
		}
	}
	// challtestsrv logs a failed bind of its DNS port and runs on.
	if strings.Contains(p.log.String(), "address already in use") {
		return errors.New("a port was taken")
	}
	// The issuing root is new at every pebble start.
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmt))
	if err != nil {
		return err
	}
	root, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	p.IssuingRoot = x509.NewCertPool()
	if !p.IssuingRoot.AppendCertsFromPEM(root) {
		return fmt.Errorf("pebble's /roots/0 is not PEM: %q", root)
	}
	return nil
}

func (p *pebble) stop() {
	for i, cmd := range p.procs {
		cmd.Process.Kill()
		<-p.exited[i]
	}
	p.procs, p.exited = nil, nil
}

// mintListenerCert makes a throw-away CA and a 127.0.0.1/localhost
// certificate for pebble's own HTTPS listeners (the Debian package ships
// none).
func mintListenerCert(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebble test listener CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(leafKey)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// serving is an `mxid serve` running in the test.
type serving struct {
	cancel context.CancelFunc
	done   chan error
	log    *syncBuffer
}

// startServe runs `mxid serve -config PATH` until the test ends (or stop).
func startServe(t *testing.T, config string) *serving {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mxid.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{cancel: cancel, done: make(chan error, 1), log: &syncBuffer{}}
	go func() { s.done <- run(ctx, []string{"serve", "-config", path}, io.Discard, s.log); s.log.close() }()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("mxid log:\n%s", s.log.String())
		}
	})
	return s
}

// ready waits until serve logs that it serves (its listeners are bound):
// woken by the log's writes, failing if serve returns first.
func (s *serving) ready(t *testing.T) {
	t.Helper()
	if !s.log.waitFor("msg=serving") {
		t.Fatalf("mxid serve ended before serving:\n%s", s.log.String())
	}
}

func (s *serving) stop(t *testing.T) {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("mxid serve returned: %v", err)
		}
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Error("mxid serve did not stop within a minute")
	}
}

// httpsGet fetches path from addr, served by s, over TLS as host, verifying
// the chain against roots. Once s serves (s nil: a process whose caller
// waited for it), it retries while the handshake fails: the certificate
// arrives in the background and nothing tells when it is in the cache.
// The deadline only catches a hang (it takes about a second).
func httpsGet(t *testing.T, s *serving, addr, host, path string, roots *x509.CertPool) (*http.Response, string) {
	t.Helper()
	if s != nil {
		s.ready(t)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get("https://" + host + path)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp, string(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET https://%s%s via %s for 2 minutes: %v", host, path, addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func acmeConfig(dataDir, domain string, httpsPort, httpPort int, p *pebble, challenges string) string {
	return fmt.Sprintf(`server_name = %[2]q
public_base_url = "https://%[2]s:%[3]d"
data_dir = %[1]q
[tls]
mode = "acme"
listen = "127.0.0.1:%[3]d"
http_listen = "127.0.0.1:%[4]d"
email = "admin@example.test"
ca = %[5]q
ca_roots_file = %[6]q
challenges = [%[7]s]
`, dataDir, domain, httpsPort, httpPort, p.DirURL, p.ListenerCA, challenges)
}

// TestACME runs `mxid serve` in acme mode against a real pebble that
// really validates: a certificate is obtained through each challenge type,
// served, and its chain verifies against pebble's root; :80 redirects to
// HTTPS; a restart with pebble stopped serves the stored certificate.
func TestACME(t *testing.T) {
	httpPort, httpsPort := freePort(t), freePort(t)
	p := startPebble(t, httpPort, httpsPort)
	addr := fmt.Sprintf("127.0.0.1:%d", httpsPort)

	root := t.TempDir() // outlives the subtests: the restart reuses a data dir
	var serial string
	var firstDataDir string
	for _, tc := range []struct{ challenge, domain string }{
		{"http-01", "is.example.test"},
		{"tls-alpn-01", "alpn.example.test"},
	} {
		t.Run(tc.challenge, func(t *testing.T) {
			dataDir := filepath.Join(root, tc.challenge)
			if firstDataDir == "" {
				firstDataDir = dataDir
			}
			s := startServe(t, acmeConfig(dataDir, tc.domain, httpsPort, httpPort, p, fmt.Sprintf("%q", tc.challenge)))
			start := time.Now()
			resp, body := httpsGet(t, s, addr, tc.domain, "/_matrix/identity/versions", p.IssuingRoot)
			if resp.StatusCode != 200 || !strings.Contains(body, "versions") {
				t.Fatalf("versions over HTTPS: %d %s", resp.StatusCode, body)
			}
			leaf := resp.TLS.PeerCertificates[0]
			if err := leaf.VerifyHostname(tc.domain); err != nil {
				t.Fatal(err)
			}
			t.Logf("certificate via %s obtained and served in %v (issuer %q)", tc.challenge, time.Since(start).Round(time.Millisecond), leaf.Issuer.CommonName)
			if tc.challenge == "http-01" {
				serial = leaf.SerialNumber.String()
			}
			if !strings.Contains(s.log.String(), `"challenge_type":"`+tc.challenge+`"`) && !strings.Contains(s.log.String(), "challenge_type="+tc.challenge) {
				t.Errorf("log does not show a %s challenge", tc.challenge)
			}

			// Plain HTTP redirects to public_base_url, whatever the Host.
			noFollow := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/_matrix/identity/v2/account?x=1", httpPort), nil)
			req.Host = "evil.example"
			r2, err := noFollow.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			r2.Body.Close()
			want := fmt.Sprintf("https://%s:%d/_matrix/identity/v2/account?x=1", tc.domain, httpsPort)
			if r2.StatusCode != http.StatusPermanentRedirect || r2.Header.Get("Location") != want {
				t.Errorf("plain HTTP: %d Location %q, want 308 %q", r2.StatusCode, r2.Header.Get("Location"), want)
			}
			s.stop(t)
		})
	}
	if serial == "" {
		t.Fatal("no certificate was obtained")
	}

	p.stop() // the CA is gone from here on
	t.Run("restart without the CA", func(t *testing.T) {
		s := startServe(t, acmeConfig(firstDataDir, "is.example.test", httpsPort, httpPort, p, `"http-01"`))
		resp, _ := httpsGet(t, s, addr, "is.example.test", "/_matrix/identity/v2", p.IssuingRoot)
		if resp.StatusCode != 200 {
			t.Fatalf("status over HTTPS: %d", resp.StatusCode)
		}
		if got := resp.TLS.PeerCertificates[0].SerialNumber.String(); got != serial {
			t.Errorf("served serial %s, want the stored %s", got, serial)
		}
		if !strings.Contains(s.log.String(), "serving the stored certificate") {
			t.Errorf("log does not say the stored certificate is served")
		}
	})
}
