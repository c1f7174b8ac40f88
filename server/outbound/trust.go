package outbound

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// LoadRoots is the one loader of the root CAs an operator names in a PEM
// file ([outbound] ca_file, [email] ca_file, [ldap] ca_file, [tls]
// ca_roots_file). The rule: the system's roots plus every certificate in
// the file, so naming a private CA never stops public servers from being
// trusted. Where the system has no roots (a container without
// ca-certificates) the file's certificates are trusted alone. An empty path
// gives nil, which crypto/tls reads as the system's roots.
//
// The error names the file: it cannot be read, or it holds no certificate
// (saying what it holds instead, e.g. a private key).
func LoadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err // *fs.PathError: "open PATH: no such file or directory"
	}
	certs, err := parseCertificates(path, data)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// parseCertificates returns the certificates of a PEM file; like
// crypto/x509's AppendCertsFromPEM it passes over other blocks and
// certificates that do not parse, but it fails when none is left.
func parseCertificates(path string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	var others []string
	var bad error
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			others = append(others, block.Type)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			bad = err
			continue
		}
		certs = append(certs, c)
	}
	switch {
	case len(certs) > 0:
		return certs, nil
	case bad != nil:
		return nil, fmt.Errorf("%s holds no PEM certificate that parses: %v", path, bad)
	case len(others) > 0:
		return nil, fmt.Errorf("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----), only %s", path, strings.Join(others, ", "))
	default:
		return nil, fmt.Errorf("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
	}
}

// SystemRoots returns the system's root CAs, which homeservers and other
// clients trust by default, or an error in plain words when this machine
// has none mxid can read.
func SystemRoots() (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		return nil, fmt.Errorf("the system's CA certificates could not be read: %v", err)
	}
	return pool, nil
}

// DescribeTLS says which TLS version a connection has and whose
// certificate, for the `mxid check` commands: "TLS 1.3, certificate for
// ldap.example.org issued by "Example CA", valid until 2030-01-01".
// skipVerify marks a connection whose certificate was not checked.
func DescribeTLS(st tls.ConnectionState, skipVerify bool) string {
	s := tls.VersionName(st.Version)
	if len(st.PeerCertificates) == 0 {
		s += " established"
	} else {
		c := st.PeerCertificates[0]
		names := append([]string{}, c.DNSNames...)
		for _, ip := range c.IPAddresses {
			names = append(names, ip.String())
		}
		if len(names) == 0 {
			names = append(names, c.Subject.CommonName)
		}
		issuer := c.Issuer.CommonName
		if issuer == "" {
			issuer = c.Issuer.String()
		}
		s += fmt.Sprintf(", certificate for %s issued by %q, valid until %s", strings.Join(names, ", "), issuer, c.NotAfter.UTC().Format("2006-01-02"))
	}
	if skipVerify {
		s += " (NOT verified: insecure_skip_verify)"
	}
	return s
}

// IsLoopbackHost reports whether host (a name or an IP address, IPv6 with
// or without brackets) is localhost or a loopback address: where a
// password may go without TLS because it never leaves the machine.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && ip.Unmap().IsLoopback()
}
