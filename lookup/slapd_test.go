package lookup_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// slapd is a throw-away OpenLDAP server on 127.0.0.1 (the Go port of
// shared/recipes/slapd-test.sh): a temp dir, the seed loaded offline with
// slapadd, slapd in the foreground (-d 0), as nobody when the test runs as
// root. Its size limit is 1,000 entries, as Active Directory's, so a full
// read needs paged searches.
type slapd struct {
	t       *testing.T
	dir     string
	url     string
	tlsURL  string // ldaps://, when started with TLS
	caFile  string // the CA that signed the server's certificate
	cmd     *exec.Cmd
	stopped bool
}

const (
	ldapSuffix = "dc=example,dc=org"
	ldapBase   = "ou=people,dc=example,dc=org"
	ldapReader = "cn=isreader,dc=example,dc=org"
	ldapPW     = "readerpw"
)

func startSlapd(t *testing.T, seed string) *slapd { return startSlapdTLS(t, seed, false) }

// startSlapdTLS also serves ldaps:// and StartTLS with a certificate for
// 127.0.0.1 signed by a CA made for the test (caFile).
func startSlapdTLS(t *testing.T, seed string, withTLS bool) *slapd {
	t.Helper()
	bin := "/usr/sbin/slapd"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("slapd is required in CI: %v (apt-get install slapd ldap-utils)", err)
		}
		t.Skip("slapd not installed (apt-get install slapd ldap-utils)")
	}
	dir, err := os.MkdirTemp("", "mxid-slapd-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	s := &slapd{t: t, dir: dir}
	t.Cleanup(func() { s.stop(); os.RemoveAll(dir) })
	tlsConf := ""
	if withTLS {
		s.caFile = filepath.Join(dir, "ca.pem")
		writeTestCerts(t, dir)
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
rootdn   "cn=admin,%[2]s"
rootpw   adminpw
directory %[1]s/db
sizelimit size.soft=1000 size.hard=1000 size.prtotal=unlimited
index objectClass eq
index mail,uid eq
index telephoneNumber,mobile eq
access to attrs=userPassword by self write by anonymous auth by * none
access to * by dn.exact="%[3]s" read by * none
`, dir, ldapSuffix, ldapReader)
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

`, ldapSuffix, ldapReader, ldapPW, ldapBase)
	os.MkdirAll(filepath.Join(dir, "db"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "slapd.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "seed.ldif"), []byte(base+seed), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("/usr/sbin/slapadd", "-q", "-f", filepath.Join(dir, "slapd.conf"), "-l", filepath.Join(dir, "seed.ldif")).CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.url = "ldap://" + ln.Addr().String()
	ln.Close()
	if withTLS {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.tlsURL = "ldaps://" + ln.Addr().String()
		ln.Close()
	}
	s.start()
	return s
}

// start runs slapd (again) on the same port and data.
func (s *slapd) start() {
	s.t.Helper()
	urls := s.url + "/"
	if s.tlsURL != "" {
		urls += " " + s.tlsURL + "/"
	}
	args := []string{"/usr/sbin/slapd", "-f", filepath.Join(s.dir, "slapd.conf"), "-h", urls, "-d", "0"}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "-R", "nobody:nogroup", s.dir).CombinedOutput(); err != nil {
			s.t.Fatalf("chown: %v %s", err, out)
		}
		args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	log, _ := os.Create(filepath.Join(s.dir, "slapd.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd, s.stopped = cmd, false
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := ldap.DialURL(s.url)
		if err == nil {
			err = c.Bind(ldapReader, ldapPW)
			c.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			logText, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
			s.t.Fatalf("slapd did not answer in 10s: %v\n%s", err, logText)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends slapd (by its own pid) and waits for it.
func (s *slapd) stop() {
	if s.cmd == nil || s.stopped {
		return
	}
	s.stopped = true
	s.cmd.Process.Signal(syscall.SIGCONT) // in case it was paused
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// pause freezes slapd (SIGSTOP): connections hang rather than fail.
// It returns once the kernel shows the process stopped: the signal is
// asynchronous.
func (s *slapd) pause() {
	s.cmd.Process.Signal(syscall.SIGSTOP)
	for range 200 {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
		if _, rest, ok := strings.Cut(string(stat), ") "); ok && (strings.HasPrefix(rest, "T") || strings.HasPrefix(rest, "t")) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.t.Fatal("slapd did not stop")
}
func (s *slapd) resume() { s.cmd.Process.Signal(syscall.SIGCONT) }

// writeTestCerts writes ca.pem, cert.pem (for 127.0.0.1, signed by the CA)
// and key.pem into dir.
func writeTestCerts(t *testing.T, dir string) {
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

// person is one inetOrgPerson entry of the seed.
func person(uid string, attrs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dn: uid=%s,%s\nobjectClass: inetOrgPerson\nuid: %s\ncn: %s\nsn: Example\n", uid, ldapBase, uid, uid)
	for i := 0; i+1 < len(attrs); i += 2 {
		fmt.Fprintf(&b, "%s: %s\n", attrs[i], attrs[i+1])
	}
	return b.String() + "\n"
}
