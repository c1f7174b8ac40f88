package lookup_test

import (
	"context"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"mxid/lookup"
	"mxid/lookup/threepid"
)

// Deps.Observe hears of every source asked, once per request, with the
// outcome: found, not_found, timeout (a DNS server that never answers),
// error (a forwarder that is down), skipped (remote sources without
// recursion), and of the hash index's sha256 lookups.
func TestLookupsObserved(t *testing.T) {
	s := openStore(t, t.TempDir())
	bind(t, s, nil, "email", "alice@remote.test", "@alice:example.org")
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads queries, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	down := newPeerIS(t, "tok", nil)
	down.Close()

	type seen struct {
		source, outcome string
		d               time.Duration
	}
	var mu sync.Mutex
	var got []seen
	observe := func(source, outcome string, d time.Duration) {
		mu.Lock()
		got = append(got, seen{source, outcome, d})
		mu.Unlock()
	}
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, o := range got {
			out = append(out, o.source+" "+o.outcome)
		}
		got = nil
		return out
	}
	cfg := lookup.DefaultConfig()
	cfg.Deadlines.DNS = 100 * time.Millisecond
	dnsCfg := lookup.DefaultDNSConfig()
	dnsCfg.Enabled = true
	svc, err := lookup.New(cfg, lookup.DefaultLDAPConfig(), dnsCfg, []lookup.ForwarderConfig{{URL: down.URL, AccessToken: "tok"}}, lookup.Deps{
		Store: s, HTTPClient: &http.Client{Timeout: time.Second}, DNSServer: silent.LocalAddr().String(), Observe: observe,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	alice, nobody := lookup.ThreePID{Medium: "email", Address: "alice@remote.test"}, lookup.ThreePID{Medium: "email", Address: "nobody@remote.test"}

	start := time.Now()
	res := svc.Chain.Lookup(context.Background(), []lookup.ThreePID{alice, nobody}, true)
	if res[alice].MXID != "@alice:example.org" || len(res) != 1 {
		t.Fatalf("cascade: %v", res)
	}
	mu.Lock()
	// The source's time starts before its deadline does (so it is at least
	// the deadline, less a little for a socket deadline on the wall clock)
	// and ends before the request does.
	if len(got) == 3 && (got[1].d < 90*time.Millisecond || got[1].d > time.Since(start)) {
		t.Errorf("the DNS source's time %v does not match its deadline", got[1].d)
	}
	mu.Unlock()
	if o, want := take(), []string{"local found", "dns timeout", "forwarders error"}; !slices.Equal(o, want) {
		t.Errorf("with recursion: %v, want %v", o, want)
	}
	svc.Chain.Lookup(context.Background(), []lookup.ThreePID{nobody}, false)
	if o, want := take(), []string{"local not_found", "dns skipped", "forwarders skipped"}; !slices.Equal(o, want) {
		t.Errorf("without recursion: %v, want %v", o, want)
	}
	// Everything found locally: later sources are not asked, nor counted.
	svc.Chain.Lookup(context.Background(), []lookup.ThreePID{alice}, true)
	if o, want := take(), []string{"local found"}; !slices.Equal(o, want) {
		t.Errorf("found locally: %v, want %v", o, want)
	}

	// sha256: one observation per request, found when any address hit.
	p := svc.Index.Pepper()
	batch := []string{threepid.Hash(alice.Address, alice.Medium, p), threepid.Hash(nobody.Address, nobody.Medium, p)}
	svc.Index.LookupHashes(p, batch)
	svc.Index.LookupHashes(p, batch[1:])
	svc.Index.LookupHashes("wrongpepper", batch) // refused before any lookup: not counted
	if o, want := take(), []string{"index found", "index not_found"}; !slices.Equal(o, want) {
		t.Errorf("index: %v, want %v", o, want)
	}
}
