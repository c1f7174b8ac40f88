// Package slapdtest runs a throw-away OpenLDAP slapd on 127.0.0.1 for tests
// (the Go port of shared/recipes/slapd-test.sh): a temporary directory, the
// seed loaded offline with slapadd, slapd in the foreground (-d 0), as
// nobody when the test runs as root. Its size limit is 1,000 entries, as
// Active Directory's, so a full read needs paged searches. Its monitor
// backend counts the operations it was asked for (MonitorSearches), so a
// test can tell how often a directory was read. With TLS it also
// serves ldaps:// and StartTLS with a certificate for 127.0.0.1 signed by a
// CA made for the test.
//
// It is test support: only _test.go files import it (those of lookup and of
// main's `mxid check ldap`). It imports only the standard library; the
// readiness probe speaks the few bytes of an LDAP bind itself.
package slapdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The directory every Server holds: the suffix entry, a reader account
// allowed to read everything, and the people OU the seed's entries go in.
const (
	Suffix   = "dc=example,dc=org"
	Base     = "ou=people,dc=example,dc=org"
	Reader   = "cn=isreader,dc=example,dc=org"
	ReaderPW = "readerpw"
	// Admin may change the directory (its rootdn), e.g. to remove a user.
	Admin   = "cn=admin," + Suffix
	AdminPW = "adminpw"
	// MonitorSearches is the entry of slapd's monitor backend that counts
	// search operations (monitorOpInitiated, monitorOpCompleted); the
	// reader may read it.
	MonitorSearches = "cn=Search,cn=Operations,cn=Monitor"
)

// Binary is where Debian's slapd package installs the server.
const Binary = "/usr/sbin/slapd"

// Server is one running slapd.
type Server struct {
	// URL is ldap://127.0.0.1:PORT (StartTLS works on it with TLS).
	URL string
	// TLSURL is ldaps://127.0.0.1:PORT, when started with TLS.
	TLSURL string
	// CAFile is the PEM file of the CA that signed the server's
	// certificate, when started with TLS.
	CAFile string

	t       testing.TB
	dir     string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has exited
	stopped bool
}

// Start runs slapd with seed (LDIF entries under Base, e.g. from Person)
// until the test ends. Without slapd it skips the test, or fails it when
// CI=true.
func Start(t testing.TB, seed string) *Server { return start(t, seed, false) }

// StartTLS is Start with ldaps:// and StartTLS too.
func StartTLS(t testing.TB, seed string) *Server { return start(t, seed, true) }

func start(t testing.TB, seed string, withTLS bool) *Server {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("slapd is required in CI: %v (apt-get install slapd ldap-utils)", err)
		}
		t.Skip("slapd not installed (apt-get install slapd ldap-utils)")
	}
	// Not t.TempDir: slapd may run as nobody, which must reach the files.
	dir, err := os.MkdirTemp("", "mxid-slapd-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := &Server{t: t, dir: dir}
	t.Cleanup(func() { s.Stop(); os.RemoveAll(dir) })
	tlsConf := ""
	if withTLS {
		s.CAFile = filepath.Join(dir, "ca.pem")
		writeCerts(t, dir)
		tlsConf = fmt.Sprintf("TLSCACertificateFile %[1]s/ca.pem\nTLSCertificateFile %[1]s/cert.pem\nTLSCertificateKeyFile %[1]s/key.pem\n", dir)
	}
	conf := tlsConf + fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile  %[1]s/slapd.pid
argsfile %[1]s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
loglevel none

database mdb
maxsize  67108864
suffix   "%[2]s"
rootdn   "%[4]s"
rootpw   %[5]s
directory %[1]s/db
sizelimit size.soft=1000 size.hard=1000 size.prtotal=unlimited
index objectClass eq
index mail,uid eq
index telephoneNumber,mobile eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="%[3]s" read by * none

database monitor
access to * by dn.exact="%[3]s" read by * none
`, dir, Suffix, Reader, Admin, AdminPW)
	base := fmt.Sprintf(`dn: %[1]s
objectClass: top
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: %[2]s
objectClass: simpleSecurityObject
objectClass: organizationalRole
cn: isreader
userPassword: %[3]s

dn: %[4]s
objectClass: organizationalUnit
ou: people

`, Suffix, Reader, ReaderPW, Base)
	os.MkdirAll(filepath.Join(dir, "db"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "slapd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "seed.ldif"), []byte(base+seed), 0o644); err != nil {
		t.Fatal(err)
	}
	slapadd := filepath.Join(filepath.Dir(Binary), "slapadd")
	if out, err := exec.Command(slapadd, "-q", "-f", filepath.Join(dir, "slapd.conf"), "-l", filepath.Join(dir, "seed.ldif")).CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}
	// A free port can be taken between our probe and slapd's bind: try
	// again with others.
	for attempt := 1; ; attempt++ {
		s.URL = fmt.Sprintf("ldap://127.0.0.1:%d", FreePort(t))
		if withTLS {
			s.TLSURL = fmt.Sprintf("ldaps://127.0.0.1:%d", FreePort(t))
		}
		err := s.run()
		if err == nil {
			return s
		}
		if attempt == 5 || !errors.Is(err, errAddrInUse) {
			t.Fatal(err)
		}
	}
}

// Start runs slapd again, after Stop, on the same ports and data, and
// returns once the reader can bind.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.run(); err != nil {
		s.t.Fatal(err)
	}
}

var errAddrInUse = errors.New("address in use")

// run starts slapd and returns once the reader can bind, or with an error
// (errAddrInUse when a port was taken) once slapd has exited.
func (s *Server) run() error {
	urls := s.URL + "/"
	if s.TLSURL != "" {
		urls += " " + s.TLSURL + "/"
	}
	args := []string{Binary, "-f", filepath.Join(s.dir, "slapd.conf"), "-h", urls, "-d", "0"}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "-R", "nobody:nogroup", s.dir).CombinedOutput(); err != nil {
			s.t.Fatalf("chown: %v %s", err, out)
		}
		args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	logPath := filepath.Join(s.dir, "slapd.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited, s.stopped = cmd, exited, false
	addr := strings.TrimPrefix(s.URL, "ldap://")
	// Generous: slapd starts in well under a second, but a loaded machine
	// may take many; the loop ends at once if slapd exits.
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := bind(addr, Reader, ReaderPW)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			s.stopped = true
			// slapd says nothing about a failed bind at log level none:
			// a port we cannot bind either (slapd is gone) was taken.
			for _, u := range strings.Fields(urls) {
				u = strings.TrimSuffix(u[strings.Index(u, "://")+3:], "/")
				if _, port, _ := net.SplitHostPort(u); !free(port) {
					return fmt.Errorf("slapd on %s: %w", u, errAddrInUse)
				}
			}
			logText, _ := os.ReadFile(logPath)
			return fmt.Errorf("slapd exited while starting: %v\n%s", cmd.ProcessState, logText)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			logText, _ := os.ReadFile(logPath)
			return fmt.Errorf("slapd did not answer in 60s: %v\n%s", err, logText)
		}
	}
}

// Stop ends slapd (by its own pid) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.stopped {
		return
	}
	s.stopped = true
	s.cmd.Process.Signal(syscall.SIGCONT) // in case it was paused
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Pause freezes slapd (SIGSTOP): connections hang rather than fail. It
// returns once the kernel shows the process stopped (the signal is
// asynchronous).
func (s *Server) Pause() {
	s.cmd.Process.Signal(syscall.SIGSTOP)
	// A poll of the process state (no event tells), generously bounded: a
	// loaded machine may take a while to schedule the stop.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
		if _, rest, ok := strings.Cut(string(stat), ") "); ok && (strings.HasPrefix(rest, "T") || strings.HasPrefix(rest, "t")) {
			return
		}
	}
	s.t.Fatal("slapd did not stop within 30s of SIGSTOP")
}

// Resume continues a paused slapd.
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// Person is one inetOrgPerson entry uid=UID under Base, with more
// attributes as name, value pairs. Values beyond ASCII (accents) are
// written base64-encoded, as LDIF requires.
func Person(uid string, attrs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dn: uid=%s,%s\nobjectClass: inetOrgPerson\nuid: %s\ncn: %s\nsn: Example\n", uid, Base, uid, uid)
	for i := 0; i+1 < len(attrs); i += 2 {
		if v := attrs[i+1]; safeLDIF(v) {
			fmt.Fprintf(&b, "%s: %s\n", attrs[i], v)
		} else {
			fmt.Fprintf(&b, "%s:: %s\n", attrs[i], base64.StdEncoding.EncodeToString([]byte(v)))
		}
	}
	return b.String() + "\n"
}

// safeLDIF reports whether v may be written as it is in LDIF (RFC 2849's
// SAFE-STRING).
func safeLDIF(v string) bool {
	if v != "" && (v[0] == ' ' || v[0] == ':' || v[0] == '<' || v[len(v)-1] == ' ') {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c >= 0x80 || c == 0 || c == '\n' || c == '\r' {
			return false
		}
	}
	return true
}

// Colleagues is n people uid=colleagueNNNN as a company directory holds
// them, for the directory search: display names of several words with
// accents, many shared by two people or more, a department for some; an
// email address in mail (at mail.example.com), and others planted where a
// search must never look (description, title, a second mail).
func Colleagues(n int) string {
	first := strings.Fields("Amélie Benoît Chloé Élodie François Gaëlle Hélène Inès Jérôme Łukasz Maëlle Noémie Øystein Raphaël Søren Zoé Anna Jean Marc Paul")
	last := strings.Fields("Dupont Müller Lefèvre Ødegård Martin Nowak García Böhm Rivière O'Brien Da-Silva Lambert")
	depts := strings.Fields("Accounting Sales Engineering Legal Support")
	var b strings.Builder
	for i := range n {
		uid := fmt.Sprintf("colleague%04d", i)
		name := first[i%len(first)] + " " + last[(i/len(first))%len(last)]
		if i%3 == 0 {
			name += " (" + depts[i%len(depts)] + ")"
		}
		b.WriteString(Person(uid, "displayName", name,
			"mail", uid+"@mail.example.com",
			"description", "private: "+uid+".home@mail.example.com",
			"title", "Phone +44 20 7946 "+fmt.Sprintf("%04d", i)))
	}
	return b.String()
}

// bind sends one LDAPv3 simple bind and reads its result code: the server
// is ready when it answers success.
func bind(addr, dn, password string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	req := tlv(0x30, // LDAPMessage
		tlv(0x02, []byte{1}), // messageID 1
		tlv(0x60, // BindRequest
			tlv(0x02, []byte{3}), // version 3
			tlv(0x04, []byte(dn)),
			tlv(0x80, []byte(password)))) // simple authentication
	if _, err := c.Write(req); err != nil {
		return err
	}
	msg, err := readTLV(c, 0x30)
	if err != nil {
		return err
	}
	_, rest, err := splitTLV(msg, 0x02) // messageID
	if err != nil {
		return err
	}
	resp, _, err := splitTLV(rest, 0x61) // BindResponse
	if err != nil {
		return err
	}
	code, _, err := splitTLV(resp, 0x0a) // resultCode
	if err != nil || len(code) != 1 {
		return fmt.Errorf("malformed bind response: %v", err)
	}
	if code[0] != 0 {
		return fmt.Errorf("bind as %s: LDAP result code %d", dn, code[0])
	}
	return nil
}

// tlv encodes one BER element with a definite length.
func tlv(tag byte, parts ...[]byte) []byte {
	var content []byte
	for _, p := range parts {
		content = append(content, p...)
	}
	out := []byte{tag}
	switch n := len(content); {
	case n < 0x80:
		out = append(out, byte(n))
	case n < 0x100:
		out = append(out, 0x81, byte(n))
	default:
		out = append(out, 0x82, byte(n>>8), byte(n))
	}
	return append(out, content...)
}

// readTLV reads one BER element of the given tag from r and returns its
// content.
func readTLV(r io.Reader, tag byte) ([]byte, error) {
	head := make([]byte, 2)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, err
	}
	if head[0] != tag {
		return nil, fmt.Errorf("BER tag %#x, want %#x", head[0], tag)
	}
	n := int(head[1])
	if n&0x80 != 0 {
		lb := make([]byte, n&0x7f)
		if len(lb) == 0 || len(lb) > 3 {
			return nil, errors.New("unsupported BER length")
		}
		if _, err := io.ReadFull(r, lb); err != nil {
			return nil, err
		}
		n = 0
		for _, b := range lb {
			n = n<<8 | int(b)
		}
	}
	content := make([]byte, n)
	_, err := io.ReadFull(r, content)
	return content, err
}

// splitTLV splits the first element (of the given tag) off b.
func splitTLV(b []byte, tag byte) (content, rest []byte, err error) {
	r := &sliceReader{b: b}
	content, err = readTLV(r, tag)
	return content, r.b, err
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

// writeCerts writes ca.pem, cert.pem (for 127.0.0.1, signed by the CA) and
// key.pem into dir.
func writeCerts(t testing.TB, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mxid test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	for name, block := range map[string]*pem.Block{
		"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "cert.pem": {Type: "CERTIFICATE", Bytes: der}, "key.pem": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
