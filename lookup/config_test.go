package lookup_test

import (
	"strings"
	"testing"
	"time"

	"mxid/lookup"
)

func TestConfigDefaultsValid(t *testing.T) {
	c, l, d := lookup.DefaultConfig(), lookup.DefaultLDAPConfig(), lookup.DefaultDNSConfig()
	if errs := append(append(c.Validate(), l.Validate()...), d.Validate()...); len(errs) > 0 {
		t.Fatal(errs)
	}
	if c.NoneEnabled() {
		t.Error("none must be off by default")
	}
}

func TestConfigProblems(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*lookup.Config, *lookup.LDAPConfig, *[]lookup.ForwarderConfig)
		want string
	}{
		{"no sha256", func(c *lookup.Config, _ *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			c.Algorithms = []string{"none"}
		}, `must contain "sha256"`},
		{"md5", func(c *lookup.Config, _ *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			c.Algorithms = []string{"sha256", "md5"}
		}, `"md5"`},
		{"short pepper", func(c *lookup.Config, _ *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) { c.Pepper = "short" }, "lookup.pepper"},
		{"grace > rotation", func(c *lookup.Config, _ *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			c.PepperGrace = 48 * time.Hour
		}, "pepper_grace"},
		{"bad cidr", func(c *lookup.Config, _ *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			c.RecursionCIDRs = []string{"10.0.0/8"}
		}, "recursion_cidrs"},
		{"burst below cap", func(c *lookup.Config, _ *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) { c.RatePerIP.Burst = 10 }, "rate_per_ip"},
		{"ldap url", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			l.URLs, l.BaseDNs, l.Preset, l.UIDDomain = []string{"http://dc"}, []string{"dc=x"}, "ad", "x.org"
		}, "ldap.urls"},
		{"ldap no mapping", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			l.URLs, l.BaseDNs, l.EmailAttributes = []string{"ldap://dc"}, []string{"dc=x"}, []string{"mail"}
		}, "uid_attribute"},
		{"ldap uid without domain", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			l.URLs, l.BaseDNs, l.Preset = []string{"ldap://dc"}, []string{"dc=x"}, "openldap"
		}, "uid_domain"},
		{"ldap bad filter", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			l.URLs, l.BaseDNs, l.Preset, l.UIDDomain, l.Filter = []string{"ldap://dc"}, []string{"dc=x"}, "openldap", "x.org", "(objectClass=person"
		}, "ldap.filter"},
		{"ldap bind without password", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			l.URLs, l.BaseDNs, l.Preset, l.UIDDomain, l.BindDN = []string{"ldap://dc"}, []string{"dc=x"}, "freeipa", "x.org", "cn=reader,dc=x"
		}, "bind_password"},
		{"ldaps with starttls", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) {
			l.URLs, l.BaseDNs, l.Preset, l.UIDDomain, l.StartTLS = []string{"ldaps://dc"}, []string{"dc=x"}, "openldap", "x.org", true
		}, "starttls"},
		{"ldap preset", func(_ *lookup.Config, l *lookup.LDAPConfig, _ *[]lookup.ForwarderConfig) { l.Preset = "novell" }, "ldap.preset"},
		{"forwarder without token", func(_ *lookup.Config, _ *lookup.LDAPConfig, f *[]lookup.ForwarderConfig) {
			*f = []lookup.ForwarderConfig{{URL: "https://matrix.org"}}
		}, "access_token"},
		{"forwarder url", func(_ *lookup.Config, _ *lookup.LDAPConfig, f *[]lookup.ForwarderConfig) {
			*f = []lookup.ForwarderConfig{{URL: "matrix.org", AccessToken: "x"}}
		}, "forwarders[0].url"},
	} {
		cfg, l, f := lookup.DefaultConfig(), lookup.DefaultLDAPConfig(), []lookup.ForwarderConfig(nil)
		c.mod(&cfg, &l, &f)
		var msgs []string
		for _, e := range append(append(cfg.Validate(), l.Validate()...), lookup.ValidateForwarders(f)...) {
			msgs = append(msgs, e.Error())
		}
		if !strings.Contains(strings.Join(msgs, "\n"), c.want) {
			t.Errorf("%s: problems %q do not mention %q", c.name, msgs, c.want)
		}
	}
	// Presets fill what is left empty, and keep what is set.
	l := lookup.LDAPConfig{Preset: "ad", EmailAttributes: []string{"proxyAddresses"}}.WithPreset()
	if l.UIDAttribute != "sAMAccountName" || l.EmailAttributes[0] != "proxyAddresses" || !strings.Contains(l.Filter, "userAccountControl") {
		t.Errorf("ad preset: %+v", l)
	}
}
