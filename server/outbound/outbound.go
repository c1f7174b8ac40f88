// Package outbound is mxid's one policy for requests it makes to other
// servers: every outbound HTTP request and DNS-named destination goes through
// a Policy, which gives each request a deadline and a response-size cap,
// refuses private, loopback, link-local, multicast, unspecified and other
// special-purpose destinations (checked on the address actually dialled, so
// DNS rebinding and odd IP notations do not get around it), verifies TLS with
// the hostname, and never uses an environment proxy.
//
// It also owns what every outbound TLS connection (HTTP, SMTP, LDAP, ACME)
// trusts and how it is described (trust.go): the one loader of CA files
// (LoadRoots: the system's roots plus the file's certificates, for every
// ca_file and ca_roots_file), the system's roots alone (SystemRoots),
// DescribeTLS for the check commands, and IsLoopbackHost (where a password
// may go without TLS).
//
// It imports only the standard library and is a leaf (DESIGN.md section
// 1): any mxid package may import it. lookup and mail use it for CA files
// and TLS descriptions; main builds their HTTP clients with a Policy and
// hands them over.
package outbound

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Config is the [outbound] section.
type Config struct {
	// Timeout bounds each request from dial to the last body byte.
	Timeout time.Duration `toml:"timeout"`
	// MaxResponseBytes caps every response body unless a caller sets a
	// smaller cap.
	MaxResponseBytes int64 `toml:"max_response_bytes"`
	// AllowCIDRs lists destination ranges allowed even though they are
	// blocked by default (an on-premises homeserver, tests).
	AllowCIDRs []string `toml:"allow_cidrs"`
	// Pins maps a server name to the base URL used for it instead of
	// discovery, e.g. "localhost" = "http://127.0.0.1:18448". A pinned
	// IP-literal destination is allowed even if private.
	Pins map[string]string `toml:"pins"`
	// InsecureSkipVerify turns off TLS certificate checks (tests only).
	InsecureSkipVerify bool `toml:"insecure_skip_verify"`
	// CAFile is a PEM file of roots trusted for outbound TLS besides the
	// system's (LoadRoots).
	CAFile string `toml:"ca_file"`
	// DNSServer, when set ("host:port"), is asked instead of the system
	// resolver, for A/AAAA and SRV lookups alike.
	DNSServer string `toml:"dns_server"`
}

// DefaultConfig is the section's default.
func DefaultConfig() Config {
	return Config{Timeout: 15 * time.Second, MaxResponseBytes: 1 << 20}
}

// Validate reports every problem with the section.
func (c *Config) Validate() []error {
	var errs []error
	if c.Timeout <= 0 || c.Timeout > 5*time.Minute {
		errs = append(errs, errors.New("outbound.timeout must be between 0s and 5m"))
	}
	if c.MaxResponseBytes < 1024 {
		errs = append(errs, errors.New("outbound.max_response_bytes must be at least 1024"))
	}
	for _, s := range c.AllowCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, fmt.Errorf("outbound.allow_cidrs: %q is not a CIDR like \"10.1.0.0/16\"", s))
		}
	}
	for name, base := range c.Pins {
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			errs = append(errs, fmt.Errorf("outbound.pins.%q: %q must be a base URL like \"https://hs.example.org:8448\"", name, base))
		}
	}
	if c.CAFile != "" {
		if _, err := LoadRoots(c.CAFile); err != nil {
			errs = append(errs, fmt.Errorf("outbound.ca_file: %v", err))
		}
	}
	if c.DNSServer != "" {
		if _, err := netip.ParseAddrPort(c.DNSServer); err != nil {
			errs = append(errs, fmt.Errorf("outbound.dns_server: %q must be an IP:port like \"127.0.0.1:53\"", c.DNSServer))
		}
	}
	return errs
}

// ErrBlocked is returned (wrapped) when a destination is refused by policy.
var ErrBlocked = errors.New("destination address is not allowed")

// ErrTooLarge is returned (wrapped) while reading a response body that is
// larger than the cap.
var ErrTooLarge = errors.New("response body too large")

// Policy builds HTTP clients and resolvers that follow the configured rules.
type Policy struct {
	cfg      Config
	allow    []netip.Prefix
	pinned   map[netip.AddrPort]bool
	roots    *x509.CertPool
	resolver *net.Resolver
}

// New builds the policy from a validated Config.
func New(cfg Config) (*Policy, error) {
	p := &Policy{cfg: cfg, pinned: map[netip.AddrPort]bool{}}
	for _, s := range cfg.AllowCIDRs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		p.allow = append(p.allow, pfx.Masked())
	}
	for _, base := range cfg.Pins {
		u, err := url.Parse(base)
		if err != nil {
			return nil, err
		}
		if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil {
			port := u.Port()
			if port == "" {
				port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
			}
			ap, err := netip.ParseAddrPort(net.JoinHostPort(ip.Unmap().String(), port))
			if err == nil {
				p.pinned[ap] = true
			}
		}
	}
	if cfg.CAFile != "" {
		pool, err := LoadRoots(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		p.roots = pool
	}
	p.resolver = net.DefaultResolver
	if cfg.DNSServer != "" {
		server := cfg.DNSServer
		p.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	return p, nil
}

// Pin returns the pinned base URL for a server name, if any.
func (p *Policy) Pin(serverName string) (string, bool) {
	u, ok := p.cfg.Pins[serverName]
	return strings.TrimSuffix(u, "/"), ok
}

// LookupNetIP resolves host as the policy's clients do.
func (p *Policy) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	addrs, err := p.resolver.LookupNetIP(ctx, network, host)
	return addrs, p.nameDNSServer(err)
}

// LookupSRV asks the policy's resolver for SRV records.
func (p *Policy) LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
	cname, addrs, err := p.resolver.LookupSRV(ctx, service, proto, name)
	return cname, addrs, p.nameDNSServer(err)
}

// nameDNSServer makes a resolver error name the DNS server really asked:
// with dns_server set, the resolver dials it whatever /etc/resolv.conf
// says, but the net package names resolv.conf's server in its errors.
func (p *Policy) nameDNSServer(err error) error {
	var dnsErr *net.DNSError
	if p.cfg.DNSServer != "" && errors.As(err, &dnsErr) {
		dnsErr.Server = p.cfg.DNSServer
	}
	return err
}

// Timeout is the per-request deadline.
func (p *Policy) Timeout() time.Duration { return p.cfg.Timeout }

// MaxResponseBytes is the default response cap.
func (p *Policy) MaxResponseBytes() int64 { return p.cfg.MaxResponseBytes }

// TLSConfig is the client TLS configuration: verified, with the configured
// extra roots. serverName sets SNI and the name checked, when not empty.
func (p *Policy) TLSConfig(serverName string) *tls.Config {
	return &tls.Config{
		RootCAs:            p.roots,
		ServerName:         serverName,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: p.cfg.InsecureSkipVerify, //nolint:gosec // operator switch, off by default
	}
}

// blocked holds the special-purpose ranges no outbound request may reach
// unless allowed: sydent's list plus 0.0.0.0/8, ::/128, reserved, NAT64,
// Teredo, 6to4 and discard-only ranges. IPv4-mapped addresses are unmapped
// before the check, so ::ffff:127.0.0.1 is 127.0.0.1.
var blocked = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
		"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
		"198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
		"255.255.255.255/32",
		"::/128", "::1/128", "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/32",
		"2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Allowed reports whether the policy lets a connection go to ip.
func (p *Policy) Allowed(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, pfx := range p.allow {
		if pfx.Contains(ip) {
			return true
		}
	}
	for _, pfx := range blocked {
		if pfx.Contains(ip) {
			return false
		}
	}
	return ip.IsValid() && !ip.IsUnspecified() && !ip.IsLoopback() && !ip.IsPrivate() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast()
}

// control runs on every socket before it connects, with the address that is
// actually being dialled.
func (p *Policy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unparsable %q", ErrBlocked, address)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
	if p.pinned[ap] || p.Allowed(ap.Addr()) {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrBlocked, ap.Addr())
}

// dialContext dials under the address policy, with the policy's resolver.
func (p *Policy) dialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Resolver:  p.resolver,
		Control:   p.control,
	}
	c, err := d.DialContext(ctx, network, address)
	return c, p.nameDNSServer(err)
}

// ClientOptions tunes one client.
type ClientOptions struct {
	// MaxResponseBytes overrides the policy's cap when > 0.
	MaxResponseBytes int64
	// MaxRedirects is how many redirects are followed (0: none).
	MaxRedirects int
	// TLSServerName, when set, is the name checked on the server's
	// certificate and sent as SNI, whatever host the URL names (for
	// federation, where the URL holds a resolved target).
	TLSServerName string
	// RootCAs, when set, replaces the policy's roots (system roots plus
	// ca_file) for this client: to see a server as someone without
	// ca_file would.
	RootCAs *x509.CertPool
}

// Client returns an *http.Client that applies the policy: policy-checked
// dialing, the deadline, the size cap (reading past it fails with
// ErrTooLarge), verified TLS, no proxy and bounded redirects.
func (p *Policy) Client(o ClientOptions) *http.Client {
	limit := o.MaxResponseBytes
	if limit <= 0 {
		limit = p.cfg.MaxResponseBytes
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            p.dialContext,
		TLSClientConfig:        p.TLSConfig(o.TLSServerName),
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  p.cfg.Timeout,
		MaxResponseHeaderBytes: 16 << 10,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        60 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	if o.RootCAs != nil {
		tr.TLSClientConfig.RootCAs = o.RootCAs
	}
	maxRedirects := o.MaxRedirects
	return &http.Client{
		Transport: &capTransport{base: tr, limit: limit},
		Timeout:   p.cfg.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > maxRedirects {
				return fmt.Errorf("stopped after %d redirects", maxRedirects)
			}
			return nil
		},
	}
}

// capTransport wraps response bodies so reading past limit fails.
type capTransport struct {
	base  http.RoundTripper
	limit int64
}

func (t *capTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.limit {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %d bytes announced, cap %d", ErrTooLarge, resp.ContentLength, t.limit)
	}
	resp.Body = &capBody{rc: resp.Body, left: t.limit}
	return resp, nil
}

type capBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *capBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more than the cap tells an exact-size body from a larger one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, ErrTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *capBody) Close() error { return b.rc.Close() }
