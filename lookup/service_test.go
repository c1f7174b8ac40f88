package lookup_test

import (
	"context"
	"testing"
	"time"

	"mxid/lookup"
)

// The wired service: the first directory sync runs in the background after
// start-up and then sha256 lookups find directory users; plaintext lookups
// walk local bindings, then the directory.
func TestServiceWithDirectory(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	s := openStore(t, t.TempDir())
	bind(t, s, nil, "email", "local@example.org", "@local:example.org")
	cfg := lookup.DefaultConfig()
	svc, err := lookup.New(cfg, ldapConfig(d.URL), lookup.DefaultDNSConfig(), nil, lookup.Deps{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	svc.Start(ctx)
	defer func() { cancel(); svc.Wait() }()
	p := svc.Index.Pepper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := find(t, svc.Index, p, "email", "user0042@example.org")
		if got == "@user0042:example.org" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("directory users not in the index 10s after start: %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, _ := find(t, svc.Index, p, "email", "local@example.org"); got != "@local:example.org" {
		t.Errorf("local binding: %q", got)
	}
	res := svc.Chain.Lookup(ctx, []lookup.ThreePID{{Medium: "email", Address: "local@example.org"}, {Medium: "email", Address: "bob@example.org"}}, false)
	if res[lookup.ThreePID{Medium: "email", Address: "local@example.org"}].Source != "local" || res[lookup.ThreePID{Medium: "email", Address: "bob@example.org"}].Source != "ldap" {
		t.Errorf("cascade: %v", res)
	}
}
