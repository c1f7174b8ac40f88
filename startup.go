package main

import (
	"log/slog"
	"net/url"
	"time"

	"mxid/lookup"
	"mxid/server"
)

// logLookupDecisions logs, one line each, what serve decided about
// lookups: the algorithms offered, each source on or off (with where it
// asks, never its secrets), who may have lookups passed on, the pepper's
// age and next rotation, the v1 API with the homeservers trusted as callers,
// and the outbound policy (what mxid may call). TLS mode, metrics, email and
// SMS are logged where they are wired.
func logLookupDecisions(log *slog.Logger, cfg Config, lk *lookup.Service) {
	log.Info("lookup algorithms", "algorithms", cfg.Lookup.Algorithms, "plaintext", cfg.Lookup.NoneEnabled())
	log.Info("lookup source", "source", "local", "enabled", true, "deadline", cfg.Lookup.Deadlines.Local.String())
	if l := cfg.LDAP.WithPreset(); l.Enabled() {
		var urls []string
		for _, raw := range l.URLs {
			urls = append(urls, schemeHost(raw))
		}
		sync := "off (sha256 lookups do not find directory users)"
		if l.SyncInterval > 0 {
			sync = l.SyncInterval.String()
		}
		log.Info("lookup source", "source", "ldap", "enabled", true, "urls", urls, "starttls", l.StartTLS,
			"preset", l.Preset, "base_dns", l.BaseDNs, "sync_interval", sync, "deadline", cfg.Lookup.Deadlines.LDAP.String())
	} else {
		log.Info("lookup source", "source", "ldap", "enabled", false)
	}
	if cfg.DNS.Enabled {
		server := cfg.Outbound.DNSServer
		if server == "" {
			server = "/etc/resolv.conf"
		}
		log.Info("lookup source", "source", "dns", "enabled", true, "dns_server", server, "v1_fallback", cfg.DNS.AllowV1Fallback, "deadline", cfg.Lookup.Deadlines.DNS.String())
	} else {
		log.Info("lookup source", "source", "dns", "enabled", false)
	}
	if len(cfg.Forwarders) > 0 {
		var hosts []string
		for _, f := range cfg.Forwarders {
			hosts = append(hosts, schemeHost(f.URL))
		}
		log.Info("lookup source", "source", "forwarders", "enabled", true, "servers", hosts, "deadline", cfg.Lookup.Deadlines.Forwarders.String())
	} else {
		log.Info("lookup source", "source", "forwarders", "enabled", false)
	}
	remote := cfg.DNS.Enabled || len(cfg.Forwarders) > 0
	switch {
	case len(cfg.Lookup.RecursionCIDRs) > 0:
		log.Info("lookup recursion", "cidrs", cfg.Lookup.RecursionCIDRs, "trusted_proxies", cfg.HTTP.TrustedProxies)
	case remote:
		log.Warn("lookup recursion: [lookup] recursion_cidrs is empty, so the dns and forwarder sources are asked for nobody", "cidrs", []string{})
	default:
		log.Info("lookup recursion", "cidrs", []string{})
	}
	if d := cfg.Directory; d.Enabled {
		log.Info("directory search", "enabled", true, "homeserver", schemeHost(d.HomeserverURL), "filter", d.Filter != "",
			"display_name_attributes", d.DisplayNameAttributes, "searchable", lk.Search.Len())
	} else {
		log.Info("directory search", "enabled", false)
	}
	st := lk.Index.Stats()
	if st.Fixed {
		log.Info("lookup pepper", "fixed", true, "age", st.PepperAge.Round(time.Second).String())
	} else {
		log.Info("lookup pepper", "fixed", false, "age", st.PepperAge.Round(time.Second).String(),
			"next_rotation", st.NextRotation.UTC().Format(time.RFC3339), "rotation", cfg.Lookup.PepperRotation.String(), "grace", cfg.Lookup.PepperGrace.String())
	}
	log.Info("v1 API", "enabled", cfg.V1, "trusted_callers", nonNil(cfg.RateLimit.TrustedCallers))
	pins := make(map[string]string, len(cfg.Outbound.Pins))
	for name, raw := range cfg.Outbound.Pins {
		pins[name] = schemeHost(raw)
	}
	log.Info("outbound policy", "timeout", cfg.Outbound.Timeout.String(), "allow_cidrs", nonNil(cfg.Outbound.AllowCIDRs),
		"pins", pins, "ca_file", cfg.Outbound.CAFile != "", "insecure_skip_verify", cfg.Outbound.InsecureSkipVerify)
}

// nonNil logs an empty list as [] rather than nothing.
func nonNil(list []string) []string {
	if list == nil {
		return []string{}
	}
	return list
}

// schemeHost is scheme://host of a URL: what is logged of it (no user
// information, path or query).
func schemeHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Scheme + "://" + u.Host
}

// logRetention logs how long mxid keeps what it removes on a schedule: the
// audit log and access tokens (the README's retention table has the rest).
func logRetention(log *slog.Logger, cfg Config) {
	tokens := "until logout"
	if d := cfg.Accounts.TokenLifetime; d > 0 {
		tokens = d.String() + " without use"
	}
	log.Info("retention", "audit_log", cfg.Audit.Retention.String(), "audit_addresses", "keyed hashes only",
		"access_tokens", tokens, "sessions", server.SessionKept.String()+" after their last change", "invites", cfg.Invites.Lifetime.String())
}
