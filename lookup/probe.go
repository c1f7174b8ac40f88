package lookup

// Self-test probes for `mxid check ldap` and `mxid check dns`: each runs the
// source's real code one step at a time with the configured settings.
// main's check framework passes step, which runs one named step, prints
// what came of it and reports whether it passed; a probe stops where a
// later step could not succeed. Probes return plain errors (the sentinels
// below, or the underlying network, TLS and LDAP errors, which unwrap) and
// leave the advice to main; ProbeWarning marks an outcome that works but
// deserves attention.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
)

// ProbeWarning is a step outcome that is not a failure.
type ProbeWarning string

func (w ProbeWarning) Error() string { return string(w) }

// Errors the probes report, for the caller's advice.
var (
	ErrLDAPOff         = errors.New("no directory is configured ([ldap] urls is empty)")
	ErrLDAPCredentials = errors.New("the directory refused the bind DN and password")
	ErrLDAPNeedsTLS    = errors.New("the directory requires an encrypted connection")
	ErrLDAPStartTLS    = errors.New("StartTLS failed")
	ErrLDAPNoBase      = errors.New("a base DN does not exist (or bind_dn may not read it)")
	ErrLDAPAccess      = errors.New("bind_dn may not read this")
	ErrLDAPNotFound    = errors.New("no entry holds this address")
	ErrLDAPNoMXID      = errors.New("the entries yield no Matrix ID")
	ErrLDAPEmpty       = errors.New("the sync query found no entries")

	ErrDNSQuery     = errors.New("the DNS query failed")
	ErrDNSOwnDomain = errors.New("this is one of this server's own names")
	ErrDNSNoServer  = errors.New("the domain says it has no identity server")
	ErrDNSBlocked   = errors.New("refused by the outbound policy")
	ErrDNSNotIS     = errors.New("not an identity server")
	ErrDNSNeedToken = errors.New("the identity server wants an access token")
	// ErrDNSFallback marks a failure of https://<domain>, asked for want
	// of an SRV record.
	ErrDNSFallback = errors.New("no SRV record, and the domain itself does not work as its identity server")
)

// verifyingTLS returns a copy of base that verifies the peer itself (the
// same checks crypto/tls makes) and keeps the verification error, so the
// probe can report its type even where go-ldap flattens the handshake error
// into text (StartTLS).
func verifyingTLS(base *tls.Config, host string, failed *error) *tls.Config {
	tc := base.Clone()
	tc.ServerName = host
	if base.InsecureSkipVerify {
		return tc
	}
	tc.InsecureSkipVerify = true //nolint:gosec // verified below
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			*failed = errors.New("the server sent no certificate")
			return *failed
		}
		opts := x509.VerifyOptions{Roots: base.RootCAs, DNSName: host, Intermediates: x509.NewCertPool()}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			*failed = err
			return err
		}
		return nil
	}
	return tc
}
