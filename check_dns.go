package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"mxid/lookup"
	"mxid/lookup/threepid"
	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// checkDNS does the DNS source's discovery for DOMAIN (or the domain of an
// email address) step by step, through the configured outbound policy.
func checkDNS(ctx context.Context, c *check, fs *flag.FlagSet, args []string) error {
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	domain := pos[0]
	if strings.Contains(domain, "@") {
		if domain, err = threepid.EmailDomain(domain); err != nil {
			fs.Usage()
			return usageError{fmt.Errorf("check dns: %q is not an email address", pos[0])}
		}
	}
	if !matrixid.ValidDNSName(domain) {
		fs.Usage()
		return usageError{fmt.Errorf("check dns: %q is not a domain name like example.org", pos[0])}
	}
	policy, err := outbound.New(c.cfg.Outbound)
	if err != nil {
		return err
	}
	lookup.ProbeDNS(ctx, lookup.DNSProbe{
		Config: c.cfg.DNS,
		Server: c.cfg.Outbound.DNSServer,
		Client: policy.Client(outbound.ClientOptions{MaxResponseBytes: 4 << 20}), // as newLookup
		Self:   selfNames(c.cfg),
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return policy.LookupNetIP(ctx, "ip", host)
		},
		Allowed:   policy.Allowed,
		Recursion: c.cfg.Lookup.RecursionCIDRs,
		Timeout:   c.cfg.Lookup.Deadlines.DNS,
	}, domain, func(what string, fn func() (string, error)) bool {
		return c.step(what, func() (string, error) {
			found, err := fn()
			return found, explainDNS(err, c.cfg, domain)
		})
	})
	return c.verdict(fmt.Sprintf("lookups of %s addresses can be passed on to the identity server DNS names for it", domain))
}

// explainDNS turns a discovery failure into advice in plain words.
func explainDNS(err error, cfg Config, domain string) error {
	if err == nil {
		return nil
	}
	var pw lookup.ProbeWarning
	var certErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var dnsErr *net.DNSError
	var opErr *net.OpError
	srv := "_matrix-identity._tcp." + domain
	switch {
	case errors.As(err, &pw):
		return warning{string(pw)}
	case errors.Is(err, lookup.ErrDNSOwnDomain):
		return hint(err, "give the domain of another organisation's addresses: lookups never ask DNS about this server's own names")
	case errors.Is(err, lookup.ErrDNSNoServer):
		return hint(err, "the domain's owner publishes that it has no identity server; lookups of its addresses end here (nothing to fix in mxid)")
	case errors.Is(err, lookup.ErrDNSQuery):
		return hint(err, "the DNS server must answer from this machine: check [outbound] dns_server (or /etc/resolv.conf when it is not set)")
	case errors.Is(err, lookup.ErrDNSBlocked) || errors.Is(err, outbound.ErrBlocked):
		return hint(err, `mxid refuses private, loopback and reserved addresses so that nobody can make it probe your network; if this identity server is on your own network, add its range to [outbound] allow_cidrs (e.g. "10.1.0.0/16")`)
	case errors.As(err, &certErr):
		return hint(fmt.Errorf("the identity server's certificate is not from a trusted CA: %v", err),
			"identity servers need a certificate from a public CA; for a private CA set [outbound] ca_file")
	case errors.As(err, &hostErr):
		return hint(fmt.Errorf("the identity server's certificate does not name the host mxid connects to: %v", err),
			"the certificate must be valid for the SRV record's target (or, without a record, the domain itself)")
	case errors.Is(err, lookup.ErrDNSNeedToken):
		return hint(err, "lookups there will fail: set [dns] allow_v1_fallback = true if it still serves the v1 API (plaintext addresses), or list it in [[forwarders]] with an access_token mxid holds there")
	case errors.Is(err, lookup.ErrDNSFallback):
		return hint(err, fmt.Sprintf("publish an SRV record %s pointing at the identity server's host and port (see README \"DNS records\"), or serve an identity server at https://%s", srv, domain))
	case errors.Is(err, lookup.ErrDNSNotIS):
		return hint(err, fmt.Sprintf("the SRV record %s must name the host and port of an identity server: check its target and port", srv))
	case errors.As(err, &dnsErr):
		return hint(fmt.Errorf("the name does not resolve: %v", err), "check the SRV record's target; it needs an A or AAAA record")
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "i/o timeout") || strings.Contains(err.Error(), "Client.Timeout"):
		return hint(fmt.Errorf("no answer within %v: %v", cfg.Lookup.Deadlines.DNS, err),
			"a firewall may drop the connection; lookups give this source [lookup.deadlines] dns")
	case errors.As(err, &opErr):
		return hint(fmt.Errorf("could not connect: %v", err), "is the identity server running at the SRV record's target and port, and reachable from this machine?")
	}
	return err
}
