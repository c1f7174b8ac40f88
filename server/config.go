package server

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// Config is the part of mxid's configuration the HTTP API owns: the
// top-level identity keys and the [http], [accounts], [terms], [outbound],
// [validation], [ratelimit] and [audit] sections. main embeds it in the whole configuration.
type Config struct {
	// ServerName is the name mxid signs associations with.
	ServerName string `toml:"server_name"`
	// PublicBaseURL is where clients reach mxid; links in mails and
	// key_validity_urls are built from it, never from a request's Host.
	PublicBaseURL string `toml:"public_base_url"`
	// V1 serves the legacy /_matrix/identity/api/v1 API too.
	V1 bool `toml:"v1"`

	HTTP     HTTPConfig      `toml:"http"`
	Accounts AccountsConfig  `toml:"accounts"`
	Terms    TermsConfig     `toml:"terms"`
	Outbound outbound.Config `toml:"outbound"`
	Invites  InvitesConfig   `toml:"invites"`
	TLS      TLSConfig       `toml:"tls"`
	Metrics  MetricsConfig   `toml:"metrics"`

	Validation ValidationConfig `toml:"validation"`
	RateLimit  RateLimitConfig  `toml:"ratelimit"`
	Audit      AuditConfig      `toml:"audit"`
}

// HTTPConfig is the [http] section.
type HTTPConfig struct {
	Listen            string        `toml:"listen"`
	TrustedProxies    []string      `toml:"trusted_proxies"`
	MaxBodyBytes      int64         `toml:"max_body_bytes"`
	ReadHeaderTimeout time.Duration `toml:"read_header_timeout"`
	ReadTimeout       time.Duration `toml:"read_timeout"`
	WriteTimeout      time.Duration `toml:"write_timeout"`
	IdleTimeout       time.Duration `toml:"idle_timeout"`
	ShutdownTimeout   time.Duration `toml:"shutdown_timeout"`
}

// AccountsConfig is the [accounts] section.
type AccountsConfig struct {
	// HomeserverAllowlist, when not empty, is the only homeservers whose
	// users may register.
	HomeserverAllowlist []string `toml:"homeserver_allowlist"`
	// TokenLifetime is how long an access token lasts without being used
	// (clients register again when it is refused); 0: until logout.
	TokenLifetime time.Duration `toml:"token_lifetime"`
}

// TermsConfig is the [terms] section: the policies users must accept.
type TermsConfig struct {
	Policies []Policy `toml:"policy"`
}

// Policy is one document users must accept, in one version, with its name
// and URL per language.
type Policy struct {
	Name      string                `toml:"name"`
	Version   string                `toml:"version"`
	Languages map[string]PolicyText `toml:"languages"`
}

// PolicyText is a policy's name and URL in one language.
type PolicyText struct {
	Name string `toml:"name"`
	URL  string `toml:"url"`
}

// DefaultConfig is the configuration mxid runs with when a key is not given.
func DefaultConfig() Config {
	return Config{
		ServerName:    "127.0.0.1:8090", // what clients call the default public_base_url
		PublicBaseURL: "http://127.0.0.1:8090",
		HTTP: HTTPConfig{
			Listen:            "127.0.0.1:8090",
			MaxBodyBytes:      512 << 10,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       120 * time.Second,
			ShutdownTimeout:   10 * time.Second,
		},
		Accounts: AccountsConfig{TokenLifetime: 365 * 24 * time.Hour},
		Outbound: outbound.DefaultConfig(),
		Invites:  DefaultInvitesConfig(),
		TLS:      DefaultTLSConfig(),
		Metrics:  DefaultMetricsConfig(),

		Validation: DefaultValidationConfig(),
		RateLimit:  DefaultRateLimitConfig(),
		Audit:      DefaultAuditConfig(),
	}
}

// Validate reports every problem in the sections the server owns.
func (c *Config) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !matrixid.ValidServerName(c.ServerName) {
		add("server_name: %q is not a valid server name (a host name like \"id.example.org\")", c.ServerName)
	}
	if u, err := url.Parse(c.PublicBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		add("public_base_url: %q must be an absolute http(s) URL like \"https://id.example.org\"", c.PublicBaseURL)
	}
	if c.HTTP.Listen != "" {
		if _, err := netip.ParseAddrPort(c.HTTP.Listen); err != nil && !strings.HasPrefix(c.HTTP.Listen, ":") {
			add("http.listen: %q must be IP:port like \"127.0.0.1:8090\" or \":8090\"", c.HTTP.Listen)
		}
	}
	for _, p := range c.HTTP.TrustedProxies {
		if _, err := parsePrefixOrAddr(p); err != nil {
			add("http.trusted_proxies: %q is not an IP address or CIDR", p)
		}
	}
	if c.HTTP.MaxBodyBytes < 1024 || c.HTTP.MaxBodyBytes > 64<<20 {
		add("http.max_body_bytes must be between 1024 and 67108864")
	}
	for name, d := range map[string]time.Duration{
		"read_header_timeout": c.HTTP.ReadHeaderTimeout, "read_timeout": c.HTTP.ReadTimeout,
		"write_timeout": c.HTTP.WriteTimeout, "idle_timeout": c.HTTP.IdleTimeout, "shutdown_timeout": c.HTTP.ShutdownTimeout,
	} {
		if d < time.Second || d > time.Hour {
			add("http.%s must be between 1s and 1h, not %v", name, d)
		}
	}
	for _, hs := range c.Accounts.HomeserverAllowlist {
		if !matrixid.ValidServerName(hs) {
			add("accounts.homeserver_allowlist: %q is not a valid server name", hs)
		}
	}
	if d := c.Accounts.TokenLifetime; d != 0 && (d < minTokenLifetime || d > maxAuditRetention) {
		add("accounts.token_lifetime must be 0 (until logout) or between 48h and 87600h (uses are recorded once a day), not %v", d)
	}
	seen := map[string]bool{}
	for i, p := range c.Terms.Policies {
		where := fmt.Sprintf("terms.policy[%d]", i)
		if p.Name == "" {
			add("%s: name is required", where)
		} else if seen[p.Name] {
			add("%s: policy %q is listed twice", where, p.Name)
		}
		seen[p.Name] = true
		if p.Version == "" {
			add("%s: version is required", where)
		}
		if len(p.Languages) == 0 {
			add("%s: at least one [terms.policy.languages.<lang>] with name and url is required", where)
		}
		for lang, t := range p.Languages {
			if t.Name == "" {
				add("%s.languages.%s: name is required", where, lang)
			}
			if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				add("%s.languages.%s: url %q must be an absolute http(s) URL", where, lang, t.URL)
			}
		}
	}
	errs = append(errs, c.Outbound.Validate()...)
	errs = append(errs, c.Invites.validate()...)
	errs = append(errs, c.TLS.Validate(c.PublicBaseURL)...)
	errs = append(errs, c.Metrics.Validate()...)
	errs = append(errs, c.Validation.validate()...)
	errs = append(errs, c.RateLimit.validate()...)
	errs = append(errs, c.Audit.validate()...)
	return errs
}

// IdentityServerName is the name homeservers know this identity server by:
// the host of public_base_url, lower-cased, with its port unless that is
// the scheme's default (443 for https, 80 for http). It is the id_server
// string users type and clients pass on; homeservers verify mxid's
// signatures under it. ok is false when public_base_url names no host.
func (c *Config) IdentityServerName() (name string, ok bool) {
	u, err := url.Parse(c.PublicBaseURL)
	if err != nil || u.Hostname() == "" {
		return "", false
	}
	host := strings.ToLower(u.Hostname())
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // IPv6 literal
	}
	port := u.Port()
	if port == "" || port == map[string]string{"https": "443", "http": "80"}[u.Scheme] {
		return host, true
	}
	return host + ":" + port, true
}

// Warnings are settings that are valid but will not work with the callers
// mxid has: serve logs them at start-up, check-config prints them.
func (c *Config) Warnings() []string {
	var out []string
	if w := c.ServerNameWarning(); w != "" {
		out = append(out, w)
	}
	return out
}

// ServerNameWarning explains, when server_name is not IdentityServerName,
// what homeservers will check and what to set; it is "" when they match.
func (c *Config) ServerNameWarning() string {
	want, ok := c.IdentityServerName()
	if !ok || sameServerName(c.ServerName, want) {
		return ""
	}
	return fmt.Sprintf("server_name %q does not match public_base_url: "+
		"homeservers verify signatures under the name users type as their identity server, %q (the host and port of public_base_url), "+
		"but mxid signs as %q, so Dendrite refuses invites to bound addresses (\"No signature for domain %s\"); "+
		"set server_name = %q (or correct public_base_url)",
		c.ServerName, want, c.ServerName, want, want)
}

// sameServerName compares server names as homeservers do for hosts:
// case-insensitively on the host, exactly on the port.
func sameServerName(a, b string) bool {
	ha, pa, okA := matrixid.SplitServerName(a)
	hb, pb, okB := matrixid.SplitServerName(b)
	return okA && okB && strings.EqualFold(ha, hb) && pa == pb
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an address or prefix")
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}
