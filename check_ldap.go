package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"strings"

	"mxid/lookup"
)

// checkLDAP tries the [ldap] settings step by step: connect, bind, base
// DNs, a lookup of ADDRESS when given, and the sync query, saying what the
// mapping yields.
func checkLDAP(ctx context.Context, c *check, fs *flag.FlagSet, args []string) error {
	pos, err := c.parse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	var tp *lookup.ThreePID
	if len(pos) == 1 {
		addr, err := lookup.ProbeAddress(pos[0], c.cfg.LDAP.DefaultRegion)
		if err != nil {
			fs.Usage()
			return usageError{fmt.Errorf("check ldap: %v", err)}
		}
		tp = &addr
	}
	lookup.ProbeLDAP(ctx, c.cfg.LDAP, c.cfg.Lookup.Deadlines.LDAP, tp, func(what string, fn func() (string, error)) bool {
		return c.step(what, func() (string, error) {
			found, err := fn()
			return found, explainLDAP(err, c.cfg)
		})
	})
	return c.verdict("mxid can read the directory with these settings; lookups and the sync into the hash index will find its users")
}

// explainLDAP turns a probe failure into advice naming the setting to
// change.
func explainLDAP(err error, cfg Config) error {
	if err == nil {
		return nil
	}
	var pw lookup.ProbeWarning
	var certErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	var dnsErr *net.DNSError
	var opErr *net.OpError
	msg := err.Error()
	switch {
	case errors.As(err, &pw):
		return warning{string(pw)}
	case errors.Is(err, lookup.ErrLDAPOff):
		return hint(err, `to use a directory, set [ldap] urls, base_dns, bind_dn, bind_password (or bind_password_file), a preset ("openldap", "ad", "freeipa") and uid_domain; see README "LDAP"`)
	case errors.As(err, &certErr):
		return hint(fmt.Errorf("the directory's certificate is not from a CA this machine trusts: %v", err),
			"set [ldap] ca_file to the PEM certificate of the CA that signed it (insecure_skip_verify = true turns the check off: for tests only)")
	case errors.As(err, &hostErr):
		return hint(fmt.Errorf("the directory's certificate does not name the host mxid connects to: %v", err),
			"use the host name the certificate was issued for in [ldap] urls")
	case errors.As(err, &invalidErr):
		return hint(fmt.Errorf("the directory's certificate is not valid: %v", err), "it may have expired; the directory's operator must renew it")
	case errors.Is(err, lookup.ErrLDAPStartTLS):
		return hint(err, `the directory does not do StartTLS on this port: use an ldaps:// URL (port 636) in [ldap] urls with starttls = false, or enable TLS on the directory`)
	case errors.Is(err, lookup.ErrLDAPCredentials):
		return hint(err, fmt.Sprintf("check [ldap] bind_dn (%q) and bind_password (or bind_password_file): the directory says they do not match (LDAP result 49, invalid credentials)", cfg.LDAP.BindDN))
	case errors.Is(err, lookup.ErrLDAPNeedsTLS):
		return hint(err, "use an ldaps:// URL in [ldap] urls, or starttls = true")
	case errors.Is(err, lookup.ErrLDAPNoBase):
		return hint(err, "check [ldap] base_dns: each must be the DN of an existing entry (e.g. ou=people,dc=example,dc=org) that bind_dn may read")
	case errors.Is(err, lookup.ErrLDAPAccess):
		return hint(err, "give [ldap] bind_dn read access to the entries under base_dns (their email and phone attributes and the uid or mxid attribute)")
	case errors.Is(err, lookup.ErrLDAPNotFound):
		return hint(err, "the address is not in the directory as mxid searches it: check [ldap] email_attributes / msisdn_attributes (or the preset), filter and base_dns; phone numbers are searched as +<digits>, <digits>, international format and, with default_region, national format")
	case errors.Is(err, lookup.ErrLDAPNoMXID):
		return hint(err, "set [ldap] uid_attribute (with uid_domain, the homeserver's server name) or mxid_attribute to an attribute every user entry has")
	case errors.Is(err, lookup.ErrLDAPEmpty):
		return hint(err, "no entry matches: check [ldap] filter (or the preset's), base_dns and email_attributes / msisdn_attributes, and that bind_dn may read the entries (OpenLDAP hides entries an account may not read)")
	case errors.As(err, &dnsErr):
		return hint(fmt.Errorf("the directory's host name does not resolve: %v", err), "check the host in [ldap] urls")
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "i/o timeout") || strings.Contains(msg, "timed out"):
		return hint(fmt.Errorf("the directory did not answer within %v: %v", cfg.Lookup.Deadlines.LDAP, err),
			"a firewall may drop the connection; or raise [lookup.deadlines] ldap for a slow directory")
	case errors.As(err, &opErr):
		return hint(fmt.Errorf("could not connect to the directory: %v", err),
			"check the host and port in [ldap] urls (ldap:// is usually port 389, ldaps:// 636) and that the directory accepts connections from this machine")
	}
	return err
}
