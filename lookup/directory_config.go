package lookup

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mxid/server/outbound"
)

// DirectoryConfig is the [directory] section: the user directory search
// for Matrix clients, answered from the LDAP directory's display names next
// to the homeserver's own user directory. lookup reads the display names
// (Filter, DisplayNameAttributes) and holds the search index; package
// server serves the endpoint with the rest.
type DirectoryConfig struct {
	// Enabled serves POST /_matrix/client/{v3,r0}/user_directory/search.
	Enabled bool `toml:"enabled"`
	// HomeserverURL is the homeserver's client API base URL as mxid
	// reaches it (e.g. "http://127.0.0.1:8008"): whoami and its own search
	// are asked there, through the outbound policy.
	HomeserverURL string `toml:"homeserver_url"`
	// Filter, when set, restricts which directory entries are searchable:
	// an LDAP filter ANDed with [ldap] filter, e.g.
	// "(memberOf=cn=matrix-users,ou=groups,dc=example,dc=org)".
	Filter string `toml:"filter"`
	// DisplayNameAttributes are tried in order; the first holding a
	// usable name is the entry's display name.
	DisplayNameAttributes []string `toml:"display_name_attributes"`
	// HomeserverTimeout bounds each call to the homeserver.
	HomeserverTimeout time.Duration `toml:"homeserver_timeout"`
	// WhoamiCache is how long a token the homeserver accepted is
	// remembered (by its SHA-256); 0 asks every time.
	WhoamiCache time.Duration `toml:"whoami_cache"`
	// RatePerUser and RatePerIP count searches.
	RatePerUser Rate `toml:"rate_per_user"`
	RatePerIP   Rate `toml:"rate_per_ip"`
}

// DefaultDirectoryConfig is the [directory] default (off).
func DefaultDirectoryConfig() DirectoryConfig {
	return DirectoryConfig{
		DisplayNameAttributes: []string{"displayName", "cn"},
		HomeserverTimeout:     5 * time.Second,
		WhoamiCache:           time.Minute,
		RatePerUser:           Rate{Burst: 30, Every: time.Second},
		RatePerIP:             Rate{Burst: 200, Every: 100 * time.Millisecond},
	}
}

// Validate reports every problem in the [directory] section. The search
// is built from the LDAP sync (ldap), and the homeserver is reached
// through the outbound policy (out), which must let a homeserver on a
// loopback or private address through.
func (c *DirectoryConfig) Validate(ldapCfg *LDAPConfig, out outbound.Config) []error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	u, err := url.Parse(c.HomeserverURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		add("directory.homeserver_url: %q must be the homeserver's client API base URL, like \"http://127.0.0.1:8008\"", c.HomeserverURL)
	} else if ip, ok := literalHost(u.Hostname()); ok {
		if p, err := outbound.New(out); err == nil && !p.Allowed(ip) {
			add("directory.homeserver_url: %s is a loopback, private or special address, which the outbound policy refuses; add it to outbound.allow_cidrs (e.g. \"%s\")", u.Hostname(), netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	if !ldapCfg.Enabled() || ldapCfg.SyncInterval <= 0 {
		add("directory.enabled needs an [ldap] directory with sync_interval > 0: the search is answered from the synced directory")
	}
	if c.Filter != "" {
		if _, err := ldap.CompileFilter(parenthesised(c.Filter)); err != nil {
			add("directory.filter: %q: %v", c.Filter, err)
		}
	}
	if len(c.DisplayNameAttributes) == 0 {
		add("directory.display_name_attributes must name at least one attribute")
	}
	for _, a := range c.DisplayNameAttributes {
		if !validAttr(a) {
			add("directory.display_name_attributes: %q is not an attribute name", a)
		}
	}
	if c.HomeserverTimeout < 100*time.Millisecond || c.HomeserverTimeout > time.Minute {
		add("directory.homeserver_timeout must be between 100ms and 1m, not %v", c.HomeserverTimeout)
	}
	if c.WhoamiCache < 0 || c.WhoamiCache > time.Hour {
		add("directory.whoami_cache must be between 0s and 1h, not %v", c.WhoamiCache)
	}
	for name, r := range map[string]Rate{"rate_per_user": c.RatePerUser, "rate_per_ip": c.RatePerIP} {
		if err := r.Validate("directory." + name); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// literalHost is the address a URL's host names without DNS: an IP
// literal, or loopback for "localhost".
func literalHost(host string) (netip.Addr, bool) {
	if strings.EqualFold(host, "localhost") {
		return netip.MustParseAddr("127.0.0.1"), true
	}
	ip, err := netip.ParseAddr(host)
	return ip.Unmap(), err == nil
}

// parenthesised wraps a filter written without its outer parentheses.
func parenthesised(f string) string {
	if !strings.HasPrefix(f, "(") {
		return "(" + f + ")"
	}
	return f
}
