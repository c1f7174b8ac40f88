package lookup_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mxid/lookup"
	"mxid/server/outbound"
)

// manualClock is a clock the test moves by hand.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *manualClock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// webAt443Client resolves names with the test DNS server and sends every
// connection to port 443 to web instead (tests cannot listen on 443).
func webAt443Client(dnsAddr string, web *httptest.Server) *http.Client {
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	_, webPort, _ := net.SplitHostPort(web.Listener.Addr().String())
	dialer := &net.Dialer{Resolver: res, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, port, err := net.SplitHostPort(addr); err == nil && port == "443" {
				addr = net.JoinHostPort(host, webPort)
			}
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
}

// A domain with no SRV record whose https://<domain> is a web server but no
// identity server is remembered as absent for the negative TTL: within it,
// lookups ask neither DNS nor the web server and log nothing; after it, the
// domain is asked again, and the failure is logged once more.
func TestDNSAbsentDomainIsCached(t *testing.T) {
	var webHits atomic.Int64
	web := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		webHits.Add(1)
		http.NotFound(w, r)
	}))
	t.Cleanup(web.Close)
	addr, queries := dnsServer(t, "nois.test. 60 IN A 127.0.0.1")
	clock := &manualClock{now: time.Unix(1_700_000_000, 0)}
	cfg := lookup.DefaultDNSConfig()
	cfg.Enabled = true
	cfg.NegativeTTL = 5 * time.Minute
	src := lookup.NewDNS(cfg, addr, webAt443Client(addr, web), nil, clock.Now)
	var logs bytes.Buffer
	chain := lookup.NewChain(slog.New(slog.NewTextHandler(&logs, nil)), &lookup.Link{Source: src, Deadline: time.Minute, Remote: true})
	warnings := func() int { return strings.Count(logs.String(), "level=WARN") }
	tp := lookup.ThreePID{Medium: "email", Address: "alice@nois.test"}
	ctx := context.Background()

	if got := chain.Lookup(ctx, []lookup.ThreePID{tp}, true); len(got) != 0 {
		t.Fatalf("got %v", got)
	}
	if queries.Load() == 0 || webHits.Load() == 0 || warnings() != 1 {
		t.Fatalf("first lookup: %d DNS queries, %d web requests, %d warnings; want some, some, 1\n%s", queries.Load(), webHits.Load(), warnings(), logs.String())
	}
	if !strings.Contains(logs.String(), "not asked again for 5m0s") {
		t.Errorf("the warning does not say for how long the domain is skipped:\n%s", logs.String())
	}
	q, h := queries.Load(), webHits.Load()
	for range 9 { // 4.5 minutes of lookups
		clock.Add(30 * time.Second)
		chain.Lookup(ctx, []lookup.ThreePID{tp, {Medium: "email", Address: "bob@nois.test"}}, true)
	}
	if queries.Load() != q || webHits.Load() != h || warnings() != 1 {
		t.Errorf("within the negative TTL: %d new DNS queries, %d new web requests, %d warnings; want 0, 0, 1\n%s", queries.Load()-q, webHits.Load()-h, warnings(), logs.String())
	}
	clock.Add(31 * time.Second)
	chain.Lookup(ctx, []lookup.ThreePID{tp}, true)
	if queries.Load() == q || webHits.Load() == h || warnings() != 2 {
		t.Errorf("after the negative TTL: %d new DNS queries, %d new web requests, %d warnings; want some, some, 2", queries.Load()-q, webHits.Load()-h, warnings())
	}
}

// Errors name the DNS server mxid asked ([outbound] dns_server), not the
// first server of /etc/resolv.conf, for SRV queries and for resolving the
// identity server's host (by the outbound policy's client) alike. A lookup
// whose caller went away does not mark the domain absent.
func TestDNSErrorsNameTheServerAsked(t *testing.T) {
	addr, _ := dnsServer(t) // knows no name at all
	clock := &manualClock{now: time.Unix(1_700_000_000, 0)}
	cfg := lookup.DefaultDNSConfig()
	cfg.Enabled = true
	oc := outbound.DefaultConfig()
	oc.DNSServer = addr
	policy, err := outbound.New(oc)
	if err != nil {
		t.Fatal(err)
	}
	src := lookup.NewDNS(cfg, addr, policy.Client(outbound.ClientOptions{}), nil, clock.Now)
	_, err = src.Lookup(context.Background(), []lookup.ThreePID{{Medium: "email", Address: "a@gone.test"}})
	if err == nil || !strings.Contains(err.Error(), "lookup gone.test on "+addr+": no such host") {
		t.Errorf("host resolution error %v; want it to name %s", err, addr)
	}

	// A DNS server that never answers: the SRV query's error names it.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	src = lookup.NewDNS(cfg, silent.LocalAddr().String(), peerClient(addr), nil, clock.Now)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = src.Lookup(ctx, []lookup.ThreePID{{Medium: "email", Address: "a@gone.test"}})
	if err == nil || !strings.Contains(err.Error(), "at DNS server "+silent.LocalAddr().String()) {
		t.Errorf("SRV error %v; want it to name %s", err, silent.LocalAddr())
	}

	// The caller went away while https://<domain> was being asked: the
	// domain is not marked absent, the next lookup asks again.
	asked := make(chan struct{}, 10)
	web := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked <- struct{}{}
		<-r.Context().Done()
	}))
	t.Cleanup(web.Close)
	addr, queries := dnsServer(t, "slow.test. 60 IN A 127.0.0.1")
	src = lookup.NewDNS(cfg, addr, webAt443Client(addr, web), nil, clock.Now)
	ctx, cancel = context.WithCancel(context.Background())
	go func() { <-asked; cancel() }()
	if _, err := src.Lookup(ctx, []lookup.ThreePID{{Medium: "email", Address: "a@slow.test"}}); err == nil || strings.Contains(err.Error(), "not asked again") {
		t.Errorf("cancelled lookup: %v", err)
	}
	q := queries.Load()
	ctx, cancel = context.WithCancel(context.Background())
	go func() { <-asked; cancel() }()
	src.Lookup(ctx, []lookup.ThreePID{{Medium: "email", Address: "a@slow.test"}})
	if queries.Load() == q {
		t.Error("after a cancelled lookup the domain was not asked again")
	}
}
