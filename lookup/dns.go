package lookup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"mxid/lookup/threepid"
)

// DNS is the source that asks, for an email address, the identity server
// DNS names for its domain: SRV _matrix-identity._tcp.<domain> (by
// priority, then weight), else <domain> itself on port 443. Discoveries are
// cached for their TTL (clamped); this server itself is never asked. A
// domain with neither (no SRV record, and https://<domain> does not answer
// as an identity server) is remembered as absent for the negative TTL: it is
// not asked again, and its failure is reported once, not at every lookup.
type DNS struct {
	cfg    DNSConfig
	server string // DNS server "host:port"
	client *http.Client
	self   map[string]bool
	now    func() time.Time

	mu      sync.Mutex
	cache   map[string]dnsEntry // domain -> discovered servers
	remotes map[string]*remote  // base URL -> client (keeps its pepper)
}

type dnsEntry struct {
	bases   []string
	noSRV   bool // bases is the https://<domain> fallback
	absent  bool // ... and it did not answer as an identity server
	expires time.Time
}

// NewDNS builds the source. server is the DNS server to ask ("" reads
// /etc/resolv.conf); self lists the host names of this server.
func NewDNS(cfg DNSConfig, server string, client *http.Client, self []string, now func() time.Time) *DNS {
	if now == nil {
		now = time.Now
	}
	d := &DNS{cfg: cfg, server: server, client: client, self: map[string]bool{}, now: now,
		cache: map[string]dnsEntry{}, remotes: map[string]*remote{}}
	for _, s := range self {
		if h, _, err := net.SplitHostPort(s); err == nil {
			s = h
		}
		if s = strings.ToLower(strings.TrimSuffix(strings.Trim(s, "[]"), ".")); s != "" {
			d.self[s] = true
		}
	}
	return d
}

// Name implements Source.
func (d *DNS) Name() string { return "dns" }

// Lookup implements Source: emails grouped by domain, the domains asked in
// parallel.
func (d *DNS) Lookup(ctx context.Context, tps []ThreePID) (map[ThreePID]string, error) {
	byDomain := map[string][]ThreePID{}
	for _, tp := range tps {
		if tp.Medium != threepid.Email {
			continue
		}
		dom, err := threepid.EmailDomain(tp.Address)
		if err != nil || d.self[strings.ToLower(dom)] {
			continue // we are the authority for our own domain
		}
		byDomain[strings.ToLower(dom)] = append(byDomain[strings.ToLower(dom)], tp)
	}
	out := map[ThreePID]string{}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for dom, group := range byDomain {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			got, err := d.lookupDomain(ctx, dom, group)
			mu.Lock()
			defer mu.Unlock()
			for tp, m := range got {
				out[tp] = m
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", dom, err))
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func (d *DNS) lookupDomain(ctx context.Context, domain string, tps []ThreePID) (map[ThreePID]string, error) {
	e, err := d.discover(ctx, domain)
	if err != nil || e.absent {
		return nil, err
	}
	var errs []error
	for _, base := range e.bases { // the first server that answers is the domain's
		got, err := d.remote(base).lookup(ctx, tps)
		if err == nil {
			return got, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	err = errors.Join(errs...)
	// A definite failure (not our deadline or the caller going away) of the
	// fallback: the domain has no identity server.
	if e.noSRV && err != nil && ctx.Err() == nil {
		ttl := d.clampTTL(d.cfg.NegativeTTL)
		d.put(domain, dnsEntry{noSRV: true, absent: true}, ttl)
		return nil, fmt.Errorf("no identity server (no SRV record, and %s does not answer as one; not asked again for %s): %w", e.bases[0], ttl, err)
	}
	return nil, err
}

func (d *DNS) remote(base string) *remote {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.remotes[base]
	if r == nil {
		if len(d.remotes) >= max(16, d.cfg.CacheSize) {
			clear(d.remotes)
		}
		r = &remote{base: base, allowV1: d.cfg.AllowV1Fallback, client: d.client}
		d.remotes[base] = r
	}
	return r
}

// discover returns a domain's cache entry: the base URLs of its identity
// servers, in the order to try them, or that it has none.
func (d *DNS) discover(ctx context.Context, domain string) (dnsEntry, error) {
	d.mu.Lock()
	e, ok := d.cache[domain]
	d.mu.Unlock()
	if ok && d.now().Before(e.expires) {
		return e, nil
	}
	srvs, ttl, err := d.querySRV(ctx, "_matrix-identity._tcp."+domain+".")
	if err != nil {
		return dnsEntry{}, err
	}
	e = dnsEntry{bases: d.bases(domain, srvs), noSRV: len(srvs) == 0}
	if e.noSRV {
		ttl = d.cfg.NegativeTTL
	}
	d.put(domain, e, d.clampTTL(ttl))
	return e, nil
}

func (d *DNS) clampTTL(ttl time.Duration) time.Duration {
	return min(max(ttl, d.cfg.MinTTL), d.cfg.MaxTTL)
}

// put caches e for ttl, keeping the cache within its size: expired entries
// go first, then any.
func (d *DNS) put(domain string, e dnsEntry, ttl time.Duration) {
	if d.cfg.CacheSize <= 0 {
		return
	}
	now := d.now()
	e.expires = now.Add(ttl)
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.cache[domain]; !ok && len(d.cache) >= d.cfg.CacheSize {
		for k, v := range d.cache {
			if !now.Before(v.expires) || len(d.cache) >= d.cfg.CacheSize {
				delete(d.cache, k)
			}
		}
	}
	d.cache[domain] = e
}

// bases are the base URLs to try for a domain's SRV records, in order:
// the targets (a "." target means "no service"; this server itself is never
// asked), or https://<domain> when there is no record.
func (d *DNS) bases(domain string, srvs []*dns.SRV) []string {
	if len(srvs) == 0 {
		return []string{"https://" + domain}
	}
	var bases []string
	for _, s := range srvs {
		host := strings.ToLower(strings.TrimSuffix(s.Target, "."))
		if host == "" || d.self[host] {
			continue
		}
		bases = append(bases, "https://"+net.JoinHostPort(host, strconv.Itoa(int(s.Port))))
	}
	return bases
}

// dnsServer is the DNS server asked: outbound.dns_server, else the first of
// /etc/resolv.conf.
func (d *DNS) dnsServer() (string, error) {
	if d.server != "" {
		return d.server, nil
	}
	conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(conf.Servers) == 0 {
		return "", fmt.Errorf("no DNS server: set outbound.dns_server (%v)", err)
	}
	return net.JoinHostPort(conf.Servers[0], conf.Port), nil
}

// querySRV asks the DNS server for SRV records (UDP, TCP when truncated)
// and returns them by priority, then heavier weight first, with the
// smallest TTL.
func (d *DNS) querySRV(ctx context.Context, name string) ([]*dns.SRV, time.Duration, error) {
	server, err := d.dnsServer()
	if err != nil {
		return nil, 0, err
	}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeSRV)
	m.RecursionDesired = true
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	resp, _, err := c.ExchangeContext(ctx, m, server)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, server)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("SRV %s at DNS server %s: %w", name, server, err)
	}
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return nil, 0, fmt.Errorf("SRV %s at DNS server %s: %s", name, server, dns.RcodeToString[resp.Rcode])
	}
	var out []*dns.SRV
	ttl := time.Duration(0)
	for _, rr := range resp.Answer {
		if s, ok := rr.(*dns.SRV); ok {
			out = append(out, s)
			if t := time.Duration(s.Hdr.Ttl) * time.Second; ttl == 0 || t < ttl {
				ttl = t
			}
		}
	}
	slices.SortStableFunc(out, func(a, b *dns.SRV) int {
		if a.Priority != b.Priority {
			return int(a.Priority) - int(b.Priority)
		}
		return int(b.Weight) - int(a.Weight)
	})
	return out, ttl, nil
}
