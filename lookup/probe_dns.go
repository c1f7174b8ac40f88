package lookup

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// DNSProbe is what ProbeDNS needs from main: the [dns] settings and the
// outbound policy's pieces (builtin types: lookup may not import server).
type DNSProbe struct {
	Config DNSConfig
	// Server is outbound.dns_server ("" reads /etc/resolv.conf).
	Server string
	// Client is the outbound policy's client, as the DNS source gets it.
	Client *http.Client
	// Self lists this server's names: never asked.
	Self []string
	// Resolve returns a host's addresses as the policy's resolver sees
	// them; Allowed says whether the policy lets mxid connect to one.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	Allowed func(netip.Addr) bool
	// Recursion is [lookup] recursion_cidrs (who may have lookups passed on).
	Recursion []string
	// Timeout bounds each step ([lookup.deadlines] dns).
	Timeout time.Duration
}

// ProbeDNS does the DNS source's discovery for domain one step at a time
// for `mxid check dns`: the settings, SRV _matrix-identity._tcp.<domain>
// (else the domain itself), then for each server found in order until one
// answers: resolving its host (and the outbound policy's verdict on the
// addresses), GET /_matrix/identity/v2 and /v2/hash_details, as lookups
// would ask them.
func ProbeDNS(ctx context.Context, p DNSProbe, domain string, step func(what string, fn func() (string, error)) bool) {
	d := NewDNS(p.Config, p.Server, p.Client, p.Self, nil)
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !step("settings", func() (string, error) {
		if d.self[domain] {
			return "", fmt.Errorf("%w: %s (mxid answers for its own domain from its own bindings)", ErrDNSOwnDomain, domain)
		}
		server, err := d.dnsServer()
		if err != nil {
			return "", err
		}
		from := "outbound.dns_server"
		if p.Server == "" {
			from = "/etc/resolv.conf"
		}
		text := fmt.Sprintf("SRV records asked at %s (%s)", server, from)
		var notes []string
		if !p.Config.Enabled {
			notes = append(notes, "[dns] enabled = false: lookups do not ask DNS-discovered servers (this check shows what they would find)")
		}
		if len(p.Recursion) == 0 {
			notes = append(notes, "[lookup] recursion_cidrs is empty: no requester may have lookups passed on to other servers")
		}
		if len(notes) > 0 {
			return "", ProbeWarning(text + "; but " + strings.Join(notes, "; "))
		}
		return text + fmt.Sprintf("; lookups from %s may be passed on", strings.Join(p.Recursion, ", ")), nil
	}) {
		return
	}

	name := "_matrix-identity._tcp." + domain
	var srvs []*dns.SRV
	if !step("SRV "+name, func() (string, error) {
		ctx, cancel := context.WithTimeout(ctx, p.Timeout)
		defer cancel()
		var err error
		srvs, _, err = d.querySRV(ctx, name+".")
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrDNSQuery, err)
		}
		if len(srvs) == 0 {
			return fmt.Sprintf("no record: mxid falls back to https://%s (port 443)", domain), nil
		}
		var recs []string
		for _, s := range srvs {
			target := strings.TrimSuffix(s.Target, ".")
			if target == "" {
				target = "."
			}
			recs = append(recs, fmt.Sprintf("priority %d weight %d -> %s:%d (TTL %ds)", s.Priority, s.Weight, target, s.Port, s.Hdr.Ttl))
		}
		text := fmt.Sprintf("%d record(s), in the order mxid tries them: %s", len(srvs), strings.Join(recs, "; "))
		if len(d.bases(domain, srvs)) == 0 {
			return "", fmt.Errorf("%w: %s (a \".\" target means no service; this server's own names are never asked)", ErrDNSNoServer, text)
		}
		return text, nil
	}) {
		return
	}

	bases := d.bases(domain, srvs)
	fallback := len(srvs) == 0
	for i, base := range bases {
		last := i == len(bases)-1
		// A server that fails is a failure only when it is the last one:
		// lookups go on to the next. worked says whether this one did.
		worked := false
		outcome := func(found string, err error) (string, error) {
			var w ProbeWarning
			if err == nil || errors.As(err, &w) {
				worked = true
				return found, err
			}
			if fallback {
				err = fmt.Errorf("%w: %w", ErrDNSFallback, err)
			}
			if !last {
				return "", ProbeWarning(err.Error() + "; lookups try the next server")
			}
			return "", err
		}
		u, _ := url.Parse(base)
		host := u.Hostname()
		step("resolve "+host, func() (string, error) { return outcome(probeResolve(ctx, p, host)) })
		if !worked {
			continue
		}
		worked = false
		step("identity server "+base, func() (string, error) {
			ctx, cancel := context.WithTimeout(ctx, p.Timeout)
			defer cancel()
			found, err := probeIS(ctx, d.remote(base), p.Config.AllowV1Fallback)
			if err == nil && !last {
				found += fmt.Sprintf("; lookups for %s go here (the %d other server(s) only when it fails)", domain, len(bases)-1-i)
			}
			return outcome(found, err)
		})
		if worked {
			return
		}
	}
}

// probeResolve resolves host as the outbound policy does and checks its
// addresses against the policy.
func probeResolve(ctx context.Context, p DNSProbe, host string) (string, error) {
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else {
		ctx, cancel := context.WithTimeout(ctx, p.Timeout)
		defer cancel()
		if addrs, err = p.Resolve(ctx, host); err != nil {
			return "", err
		}
	}
	var ok, refused []string
	for _, a := range addrs {
		if p.Allowed(a.Unmap()) {
			ok = append(ok, a.Unmap().String())
		} else {
			refused = append(refused, a.Unmap().String())
		}
	}
	switch {
	case len(ok) == 0:
		return "", fmt.Errorf("%w: %s resolves to %s, which mxid does not connect to (private, loopback or reserved)", ErrDNSBlocked, host, strings.Join(refused, ", "))
	case len(refused) > 0:
		return "", ProbeWarning(fmt.Sprintf("%s resolves to %s; %s refused by the outbound policy (private, loopback or reserved)", host, strings.Join(ok, ", "), strings.Join(refused, ", ")))
	}
	return fmt.Sprintf("%s resolves to %s", host, strings.Join(ok, ", ")), nil
}

// probeIS asks a discovered server what lookups will ask it.
func probeIS(ctx context.Context, r *remote, allowV1 bool) (string, error) {
	var root map[string]any
	status, err := r.do(ctx, "GET", "/_matrix/identity/v2", nil, &root)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("%w: GET %s/_matrix/identity/v2 answered HTTP %d", ErrDNSNotIS, r.base, status)
	}
	var hd struct {
		Pepper     string   `json:"lookup_pepper"`
		Algorithms []string `json:"algorithms"`
		Errcode    string   `json:"errcode"`
	}
	status, err = r.do(ctx, "GET", "/_matrix/identity/v2/hash_details", nil, &hd)
	if err != nil {
		return "", err
	}
	switch {
	case status == http.StatusOK && hd.Pepper != "" && slices.Contains(hd.Algorithms, "sha256"):
		return fmt.Sprintf("an identity server: /v2 answers, /v2/hash_details offers %v: lookups there are hashed with its pepper (no plaintext address leaves mxid)", hd.Algorithms), nil
	case status == http.StatusOK:
		return "", fmt.Errorf("%w: /v2/hash_details offers %v without a sha256 pepper", ErrDNSNotIS, hd.Algorithms)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		what := fmt.Sprintf("an identity server (/v2/hash_details answered HTTP %d %s), but its v2 lookups want an access token, and mxid has none for servers found through DNS", status, hd.Errcode)
		if !allowV1 {
			return "", fmt.Errorf("%w: %s", ErrDNSNeedToken, what)
		}
		var v1 map[string]any
		st, err := r.do(ctx, "GET", "/_matrix/identity/api/v1", nil, &v1)
		if err != nil || st != http.StatusOK {
			return "", fmt.Errorf("%w: %s, and its v1 API does not answer either (HTTP %d, %v)", ErrDNSNeedToken, what, st, err)
		}
		return "", ProbeWarning(what + "; lookups there use its v1 API ([dns] allow_v1_fallback = true), which sends addresses in plaintext")
	}
	return "", fmt.Errorf("%w: GET %s/_matrix/identity/v2/hash_details answered HTTP %d %s", ErrDNSNotIS, r.base, status, hd.Errcode)
}
