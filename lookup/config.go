package lookup

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/nyaruka/phonenumbers"

	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// Config is the [lookup] section.
type Config struct {
	// Algorithms offered by /hash_details and accepted by /lookup:
	// "sha256" (required) and, only if listed, "none" (plaintext).
	Algorithms []string `toml:"algorithms"`
	// PepperRotation is how often the pepper changes.
	PepperRotation time.Duration `toml:"pepper_rotation"`
	// PepperGrace is how long the previous pepper is still answered.
	PepperGrace time.Duration `toml:"pepper_grace"`
	// Pepper, when set, is a fixed pepper: no rotation.
	Pepper string `toml:"pepper"`
	// MaxAddresses caps the addresses of one lookup request.
	MaxAddresses int `toml:"max_addresses"`
	// RatePerAccount and RatePerIP are token buckets counted in addresses.
	RatePerAccount Rate `toml:"rate_per_account"`
	RatePerIP      Rate `toml:"rate_per_ip"`
	// RatePerHomeserver is shared by all accounts of one homeserver
	// (accounts are cheap to make).
	RatePerHomeserver Rate `toml:"rate_per_homeserver"`
	// RecursionCIDRs are the requesters whose plaintext and v1 lookups may
	// be passed on to DNS-discovered servers and forwarders.
	RecursionCIDRs []string `toml:"recursion_cidrs"`
	// Deadlines per source of the cascade.
	Deadlines Deadlines `toml:"deadlines"`
}

// Rate is a token bucket: Burst at once (addresses, for lookups), one more
// every Every. Burst 0 turns the limit off. The server's rate limits are
// Rates too.
type Rate struct {
	Burst int           `toml:"burst"`
	Every time.Duration `toml:"every"`
}

// Validate checks a Rate whose configuration key is name.
func (r Rate) Validate(name string) error {
	if r.Burst < 0 {
		return fmt.Errorf("%s.burst must not be negative", name)
	}
	if r.Burst > 0 && r.Every <= 0 {
		return fmt.Errorf("%s.every must be a positive duration when burst is set", name)
	}
	return nil
}

// Deadlines bound each source of the cascade.
type Deadlines struct {
	Local      time.Duration `toml:"local"`
	LDAP       time.Duration `toml:"ldap"`
	DNS        time.Duration `toml:"dns"`
	Forwarders time.Duration `toml:"forwarders"`
}

// LDAPConfig is the [ldap] section. No URLs means no directory.
type LDAPConfig struct {
	// URLs are tried in order: ldap://host:389 or ldaps://host:636.
	URLs []string `toml:"urls"`
	// StartTLS upgrades ldap:// connections.
	StartTLS bool `toml:"starttls"`
	// CAFile is a PEM file of roots trusted for the directory besides the
	// system's (outbound.LoadRoots).
	CAFile string `toml:"ca_file"`
	// InsecureSkipVerify turns certificate checks off (tests only).
	InsecureSkipVerify bool   `toml:"insecure_skip_verify"`
	BindDN             string `toml:"bind_dn"`
	BindPassword       string `toml:"bind_password"`
	BindPasswordFile   string `toml:"bind_password_file"`
	// BaseDNs are searched one after the other.
	BaseDNs []string `toml:"base_dns"`
	// Filter is ANDed into every search, e.g. "(objectClass=inetOrgPerson)".
	Filter string `toml:"filter"`
	// Preset fills empty attribute settings: "openldap", "ad", "freeipa".
	Preset string `toml:"preset"`
	// UIDAttribute holds the localpart; the Matrix ID is
	// @<lower-cased value>:<UIDDomain>.
	UIDAttribute string `toml:"uid_attribute"`
	UIDDomain    string `toml:"uid_domain"`
	// MXIDAttribute, instead, holds a full Matrix ID.
	MXIDAttribute    string   `toml:"mxid_attribute"`
	EmailAttributes  []string `toml:"email_attributes"`
	MSISDNAttributes []string `toml:"msisdn_attributes"`
	// DefaultRegion reads phone numbers without an international prefix.
	DefaultRegion string `toml:"default_region"`
	// SyncInterval is how often the whole directory is read into the hash
	// index; 0 turns the sync off (sha256 lookups then miss LDAP users).
	SyncInterval time.Duration `toml:"sync_interval"`
	// PageSize of the paged sync searches (Active Directory allows 1000).
	PageSize int `toml:"page_size"`
	// BatchSize is how many addresses go into one OR filter.
	BatchSize int `toml:"batch_size"`
}

// DNSConfig is the [dns] section: asking the identity server that DNS names
// for an email's domain.
type DNSConfig struct {
	Enabled bool `toml:"enabled"`
	// CacheSize bounds the cached discoveries.
	CacheSize int `toml:"cache_size"`
	// MinTTL and MaxTTL clamp record TTLs; NegativeTTL is how long "no
	// server" is remembered.
	MinTTL      time.Duration `toml:"min_ttl"`
	MaxTTL      time.Duration `toml:"max_ttl"`
	NegativeTTL time.Duration `toml:"negative_ttl"`
	// AllowV1Fallback asks with the legacy v1 API when v2 fails.
	AllowV1Fallback bool `toml:"allow_v1_fallback"`
}

// ForwarderConfig is one [[forwarders]] entry.
type ForwarderConfig struct {
	// URL is the identity server's base URL, e.g. "https://vector.im".
	URL string `toml:"url"`
	// AccessToken is mxid's token at that server (v2 lookups need one).
	AccessToken     string `toml:"access_token"`
	AccessTokenFile string `toml:"access_token_file"`
	AllowV1Fallback bool   `toml:"allow_v1_fallback"`
}

// DefaultConfig is the [lookup] default.
func DefaultConfig() Config {
	return Config{
		Algorithms:        []string{"sha256"},
		PepperRotation:    24 * time.Hour,
		PepperGrace:       10 * time.Minute,
		MaxAddresses:      10000,
		RatePerAccount:    Rate{Burst: 20000, Every: 100 * time.Millisecond},
		RatePerIP:         Rate{Burst: 50000, Every: 20 * time.Millisecond},
		RatePerHomeserver: Rate{Burst: 200000, Every: 5 * time.Millisecond},
		Deadlines:         Deadlines{Local: time.Second, LDAP: 3 * time.Second, DNS: 5 * time.Second, Forwarders: 5 * time.Second},
	}
}

// DefaultLDAPConfig is the [ldap] default (off).
func DefaultLDAPConfig() LDAPConfig {
	return LDAPConfig{SyncInterval: 15 * time.Minute, PageSize: 500, BatchSize: 50}
}

// DefaultDNSConfig is the [dns] default (off).
func DefaultDNSConfig() DNSConfig {
	return DNSConfig{CacheSize: 10000, MinTTL: time.Minute, MaxTTL: time.Hour, NegativeTTL: 5 * time.Minute}
}

var pepperRE = regexp.MustCompile(`^[A-Za-z0-9]{20,}$`)

// NoneEnabled reports whether plaintext lookups are on.
func (c *Config) NoneEnabled() bool {
	for _, a := range c.Algorithms {
		if a == "none" {
			return true
		}
	}
	return false
}

// Validate reports every problem in the [lookup] section.
func (c *Config) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	sha := false
	for _, a := range c.Algorithms {
		switch a {
		case "sha256":
			sha = true
		case "none":
		default:
			add("lookup.algorithms: %q is not one of sha256, none", a)
		}
	}
	if !sha {
		add(`lookup.algorithms must contain "sha256" (the spec requires it)`)
	}
	if c.Pepper != "" && !pepperRE.MatchString(c.Pepper) {
		add("lookup.pepper must be at least 20 characters of [A-Za-z0-9]")
	}
	if c.Pepper == "" {
		if c.PepperRotation < time.Minute {
			add("lookup.pepper_rotation must be at least 1m, not %v", c.PepperRotation)
		}
		if c.PepperGrace < 0 || c.PepperGrace >= c.PepperRotation {
			add("lookup.pepper_grace must be between 0s and lookup.pepper_rotation, not %v", c.PepperGrace)
		}
	}
	if c.MaxAddresses < 1 || c.MaxAddresses > 100000 {
		add("lookup.max_addresses must be between 1 and 100000")
	}
	for name, r := range map[string]Rate{"rate_per_account": c.RatePerAccount, "rate_per_ip": c.RatePerIP, "rate_per_homeserver": c.RatePerHomeserver} {
		if err := r.Validate("lookup." + name); err != nil {
			errs = append(errs, err)
		}
		if r.Burst > 0 && r.Burst < c.MaxAddresses {
			add("lookup.%s.burst (%d) is below lookup.max_addresses (%d): the largest requests could never pass", name, r.Burst, c.MaxAddresses)
		}
	}
	for _, s := range c.RecursionCIDRs {
		if _, err := ParsePrefix(s); err != nil {
			add("lookup.recursion_cidrs: %q is not an IP address or CIDR", s)
		}
	}
	for name, d := range map[string]time.Duration{"local": c.Deadlines.Local, "ldap": c.Deadlines.LDAP, "dns": c.Deadlines.DNS, "forwarders": c.Deadlines.Forwarders} {
		if d < 10*time.Millisecond || d > time.Minute {
			add("lookup.deadlines.%s must be between 10ms and 1m, not %v", name, d)
		}
	}
	return errs
}

// ParsePrefix parses a CIDR or a single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("not an address or prefix")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Enabled reports whether a directory is configured.
func (c *LDAPConfig) Enabled() bool { return len(c.URLs) > 0 }

// presets fill attribute settings left empty.
var presets = map[string]LDAPConfig{
	"openldap": {UIDAttribute: "uid", EmailAttributes: []string{"mail"}, MSISDNAttributes: []string{"mobile", "telephoneNumber"},
		Filter: "(objectClass=inetOrgPerson)"},
	"ad": {UIDAttribute: "sAMAccountName", EmailAttributes: []string{"mail", "otherMailbox"},
		MSISDNAttributes: []string{"mobile", "telephoneNumber", "otherMobile", "otherTelephone"},
		// People only, disabled accounts left out.
		Filter: "(&(objectCategory=person)(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"},
	"freeipa": {UIDAttribute: "uid", EmailAttributes: []string{"mail"}, MSISDNAttributes: []string{"mobile", "telephoneNumber"},
		Filter: "(&(objectClass=posixAccount)(!(nsAccountLock=TRUE)))"},
}

// WithPreset returns c with the preset's values in every attribute setting
// left empty.
func (c LDAPConfig) WithPreset() LDAPConfig {
	p, ok := presets[c.Preset]
	if !ok {
		return c
	}
	if c.UIDAttribute == "" && c.MXIDAttribute == "" {
		c.UIDAttribute = p.UIDAttribute
	}
	if len(c.EmailAttributes) == 0 {
		c.EmailAttributes = p.EmailAttributes
	}
	if len(c.MSISDNAttributes) == 0 {
		c.MSISDNAttributes = p.MSISDNAttributes
	}
	if c.Filter == "" {
		c.Filter = p.Filter
	}
	return c
}

// Validate reports every problem in the [ldap] section.
func (c *LDAPConfig) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Preset != "" {
		if _, ok := presets[c.Preset]; !ok {
			add("ldap.preset: %q is not one of openldap, ad, freeipa", c.Preset)
		}
	}
	if !c.Enabled() {
		return errs
	}
	eff := c.WithPreset()
	for _, u := range c.URLs {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "ldap" && pu.Scheme != "ldaps") || pu.Host == "" || (pu.Path != "" && pu.Path != "/") {
			add("ldap.urls: %q must be like \"ldap://dc1.example.org:389\" or \"ldaps://dc1.example.org:636\"", u)
		} else if pu.Scheme == "ldaps" && c.StartTLS {
			add("ldap.starttls cannot be used with ldaps:// URL %q", u)
		}
	}
	if c.CAFile != "" {
		if _, err := outbound.LoadRoots(c.CAFile); err != nil {
			add("ldap.ca_file: %v", err)
		}
	}
	if len(c.BaseDNs) == 0 {
		add("ldap.base_dns: at least one base DN is required")
	}
	for _, dn := range c.BaseDNs {
		if _, err := ldap.ParseDN(dn); err != nil || dn == "" {
			add("ldap.base_dns: %q is not a DN", dn)
		}
	}
	if c.BindDN != "" {
		if _, err := ldap.ParseDN(c.BindDN); err != nil {
			add("ldap.bind_dn: %q is not a DN", c.BindDN)
		}
		if c.BindPassword == "" {
			add("ldap.bind_password (or bind_password_file) is required with bind_dn: an empty password is an anonymous bind")
		}
	}
	if eff.Filter != "" {
		if _, err := ldap.CompileFilter(eff.Filter); err != nil {
			add("ldap.filter: %q: %v", eff.Filter, err)
		}
	}
	switch {
	case eff.MXIDAttribute != "" && c.UIDAttribute != "":
		add("ldap: set uid_attribute or mxid_attribute, not both")
	case eff.MXIDAttribute == "" && eff.UIDAttribute == "":
		add("ldap: uid_attribute (with uid_domain) or mxid_attribute is required (or a preset)")
	case eff.UIDAttribute != "" && !matrixid.ValidServerName(c.UIDDomain):
		add("ldap.uid_domain: %q must be the homeserver's server name (the part after ':' in Matrix IDs)", c.UIDDomain)
	}
	for _, a := range append(append([]string{eff.UIDAttribute, eff.MXIDAttribute}, eff.EmailAttributes...), eff.MSISDNAttributes...) {
		if a != "" && !validAttr(a) {
			add("ldap: %q is not an attribute name", a)
		}
	}
	if len(eff.EmailAttributes)+len(eff.MSISDNAttributes) == 0 {
		add("ldap: email_attributes or msisdn_attributes must name at least one attribute")
	}
	if c.DefaultRegion != "" && phonenumbers.GetCountryCodeForRegion(c.DefaultRegion) == 0 {
		add("ldap.default_region: %q is not an ISO 3166 country code like \"GB\"", c.DefaultRegion)
	}
	if c.SyncInterval != 0 && c.SyncInterval < 10*time.Second {
		add("ldap.sync_interval must be 0 (off) or at least 10s")
	}
	if c.PageSize < 1 || c.PageSize > 10000 {
		add("ldap.page_size must be between 1 and 10000")
	}
	if c.BatchSize < 1 || c.BatchSize > 500 {
		add("ldap.batch_size must be between 1 and 500")
	}
	return errs
}

func validAttr(a string) bool {
	for i, c := range a {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || (i > 0 && (c >= '0' && c <= '9' || c == '-' || c == ';'))) {
			return false
		}
	}
	return a != ""
}

// Validate reports every problem in the [dns] section.
func (c *DNSConfig) Validate() []error {
	var errs []error
	if c.CacheSize < 0 {
		errs = append(errs, errors.New("dns.cache_size must not be negative"))
	}
	if c.MinTTL < 0 || c.MaxTTL < c.MinTTL {
		errs = append(errs, errors.New("dns.min_ttl must be >= 0 and dns.max_ttl >= dns.min_ttl"))
	}
	if c.NegativeTTL < 0 {
		errs = append(errs, errors.New("dns.negative_ttl must not be negative"))
	}
	return errs
}

// ValidateForwarders reports every problem in the [[forwarders]] list.
func ValidateForwarders(fs []ForwarderConfig) []error {
	var errs []error
	for i, f := range fs {
		u, err := url.Parse(f.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("forwarders[%d].url: %q must be a base URL like \"https://matrix.org\"", i, f.URL))
		}
		if f.AccessToken == "" && !f.AllowV1Fallback {
			errs = append(errs, fmt.Errorf("forwarders[%d]: access_token (or access_token_file) is required for v2 lookups, or set allow_v1_fallback", i))
		}
		if strings.ContainsAny(f.AccessToken, " \r\n") {
			errs = append(errs, fmt.Errorf("forwarders[%d].access_token contains whitespace", i))
		}
	}
	return errs
}
