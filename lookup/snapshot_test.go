package lookup_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mxid/db"
	"mxid/lookup"
	"mxid/lookup/slapdtest"
)

// plain asks the cascade for addresses as a plaintext (or v1) lookup does.
func plain(svc *lookup.Service, tps ...lookup.ThreePID) map[lookup.ThreePID]lookup.Result {
	return svc.Chain.Lookup(context.Background(), tps, false)
}

func email(a string) lookup.ThreePID  { return lookup.ThreePID{Medium: "email", Address: a} }
func msisdn(a string) lookup.ThreePID { return lookup.ThreePID{Medium: "msisdn", Address: a} }

// removeUser deletes uid from the directory as its administrator.
func removeUser(t *testing.T, d *slapdtest.Server, uid string) {
	t.Helper()
	asAdmin(t, d, func(c *ldap.Conn) error { return c.Del(ldap.NewDelRequest("uid="+uid+","+slapdtest.Base, nil)) })
}

// The directory snapshot is stored at each sync that changes it, replaces
// the previous one whole, and survives a restart while the directory is
// down: hashed and plaintext lookups of directory users are still
// answered, and a failed sync keeps it.
func TestSnapshotSurvivesRestart(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	dir := t.TempDir()
	cfg := ldapConfig(d.URL)
	ctx := context.Background()

	s1, err := db.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	svc1 := newService(t, s1, cfg, nil)
	if err := svc1.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := find(t, svc1.Index, svc1.Index.Pepper(), "email", "user0001@example.org"); got != "@user0001:example.org" {
		t.Fatalf("after the first sync: %q", got)
	}
	// A user leaves: the next sync replaces the snapshot, without them.
	removeUser(t, d, "user0001")
	if err := svc1.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	svc1.Close()
	s1.Close()

	d.Stop()
	var logs logBuffer
	s2 := openStore(t, dir)
	svc2 := newService(t, s2, cfg, &lookup.Deps{Logger: logs.logger()})
	p := svc2.Index.Pepper()
	for _, c := range []struct {
		tp   lookup.ThreePID
		want string
	}{
		{email("user0042@example.org"), "@user0042:example.org"},
		{email("alice.second@example.org"), "@alice:example.org"},
		{msisdn("442079460000"), "@frank:example.org"}, // "020 7946 0000" in the directory
		{msisdn("12015550120"), "@user0120:example.org"},
		{email("user0001@example.org"), ""}, // removed before the last sync
		{email("nobody@example.org"), ""},
	} {
		if got, _ := find(t, svc2.Index, p, c.tp.Medium, c.tp.Address); got != c.want {
			t.Errorf("hashed %v after the restart: %q, want %q", c.tp, got, c.want)
		}
		res, ok := plain(svc2, c.tp)[c.tp]
		if res.MXID != c.want || (ok && res.Source != "ldap") {
			t.Errorf("plaintext %v after the restart: %+v, want %q from ldap", c.tp, res, c.want)
		}
	}
	// A sync that fails keeps the snapshot.
	if err := svc2.Sync(ctx); err == nil {
		t.Fatal("a sync of a stopped directory succeeded")
	}
	if got, _ := find(t, svc2.Index, p, "email", "user0042@example.org"); got != "@user0042:example.org" {
		t.Errorf("hashed after a failed sync: %q", got)
	}
	if got := plain(svc2, email("bob@example.org"))[email("bob@example.org")]; got.MXID != "@bob:example.org" {
		t.Errorf("plaintext after a failed sync: %+v", got)
	}
	if n := logs.count("answered from the stored snapshot"); n != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", n, logs.String())
	}
	if n := logs.count("lookup source failed"); n != 0 {
		t.Errorf("the cascade logged the directory's failure per request:\n%s", logs.String())
	}
	// The directory is back: asked live again, and that is logged once.
	d.Start()
	removeUser(t, d, "user0042")
	for range 2 {
		if got := plain(svc2, email("user0042@example.org")); len(got) != 0 {
			t.Errorf("the directory is back, yet a removed user is still answered: %v", got)
		}
	}
	if n := logs.count("the directory answers again"); n != 1 {
		t.Errorf("the end of the outage was logged %d times, want once:\n%s", n, logs.String())
	}
}

// storedSnapshot syncs a directory into a new store once, then stops the
// directory: what is found afterwards comes from the stored snapshot.
func storedSnapshot(t *testing.T) (*slapdtest.Server, *db.Store, lookup.LDAPConfig) {
	t.Helper()
	d := startSlapd(t, seedDirectory())
	s := openStore(t, t.TempDir())
	cfg := ldapConfig(d.URL)
	svc := newService(t, s, cfg, nil)
	if err := svc.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc.Close()
	d.Stop()
	return d, s, cfg
}

// snapshotUnused checks that svc, configured with other [ldap] settings
// than the stored snapshot's, answers nothing from it.
func snapshotUnused(t *testing.T, svc *lookup.Service) {
	t.Helper()
	if got, _ := find(t, svc.Index, svc.Index.Pepper(), "email", "bob@example.org"); got != "" {
		t.Errorf("a snapshot of other settings is used: %q", got)
	}
	if got := plain(svc, email("bob@example.org")); len(got) != 0 {
		t.Errorf("plaintext from a snapshot of other settings: %v", got)
	}
}

// The snapshot belongs to the settings it was read with: other mapping
// settings drop it at start-up, and so does a configuration without [ldap]
// or without the sync.
func TestSnapshotDroppedWithOtherSettings(t *testing.T) {
	d, s, cfg := storedSnapshot(t)

	// Another URL for the same directory keeps it.
	moved := cfg
	moved.URLs = []string{"ldap://127.0.0.1:1"}
	svc := newService(t, s, moved, nil)
	if got, _ := find(t, svc.Index, svc.Index.Pepper(), "email", "bob@example.org"); got != "@bob:example.org" {
		t.Errorf("same settings, another URL: %q", got)
	}
	svc.Close()

	other := moved
	other.UIDDomain = "other.example"
	var logs logBuffer
	svc = newService(t, s, other, &lookup.Deps{Logger: logs.logger()})
	snapshotUnused(t, svc)
	if logs.count("read with other [ldap] settings") != 1 {
		t.Errorf("dropping it is not logged:\n%s", logs.String())
	}
	svc.Close()

	// Refill it, then start with the sync off, or without [ldap]: dropped,
	// as nothing would refresh it.
	d.Start()
	syncOff := cfg
	syncOff.SyncInterval = 0
	for name, c := range map[string]lookup.LDAPConfig{"sync_interval = 0": syncOff, "no [ldap]": lookup.DefaultLDAPConfig()} {
		svc = newService(t, s, cfg, nil)
		if err := svc.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		svc.Close()
		svc = newService(t, s, c, nil)
		if got, _ := find(t, svc.Index, svc.Index.Pepper(), "email", "bob@example.org"); got != "" {
			t.Errorf("%s: hashed lookups find a directory user: %q", name, got)
		}
		svc.Close()
		if _, ok, err := s.DirectorySummary(); ok || err != nil {
			t.Errorf("%s: the snapshot is kept: %v %v", name, ok, err)
		}
		n := 0
		s.ScanDirectory(func(_, _, _ []byte) error { n++; return nil })
		if n != 0 {
			t.Errorf("%s: %d records left after dropping the snapshot", name, n)
		}
	}
}

// Replicas share the snapshot: one configured with other [ldap] settings,
// or without the sync (a rolling change of the configuration), neither uses
// it nor drops it at start-up, so the others keep their directory users;
// without a sync, the drop is the leader's job.
func TestSharedSnapshotLeftToTheLeader(t *testing.T) {
	_, s, cfg := storedSnapshot(t)
	jobs := map[string]func(context.Context){}
	runOnce := func(name string, job func(context.Context)) { jobs[name] = job }
	other := cfg
	other.UIDDomain = "other.example"
	var logs logBuffer
	svc := newService(t, s, other, &lookup.Deps{Logger: logs.logger(), RunOnce: runOnce})
	snapshotUnused(t, svc)
	if logs.count("not used here, the leader's sync replaces it") != 1 {
		t.Errorf("ignoring it is not logged:\n%s", logs.String())
	}
	svc.Close()
	noSync := cfg
	noSync.SyncInterval = 0
	svc = newService(t, s, noSync, &lookup.Deps{RunOnce: runOnce})
	ctx, cancel := context.WithCancel(context.Background())
	svc.Start(ctx)
	cancel()
	svc.Wait()
	svc.Close()

	same := newService(t, s, cfg, &lookup.Deps{RunOnce: runOnce})
	if got, _ := find(t, same.Index, same.Index.Pepper(), "email", "bob@example.org"); got != "@bob:example.org" {
		t.Errorf("a replica with the snapshot's settings lost it to the others' start-up: %q", got)
	}
	drop := jobs["stale directory snapshot"]
	if drop == nil {
		t.Fatalf("a replica without the sync hands no job to the leader: %v", slices.Collect(maps.Keys(jobs)))
	}
	drop(context.Background())
	if _, ok, err := s.DirectorySummary(); ok || err != nil {
		t.Errorf("the leader without a sync keeps the snapshot: %v %v", ok, err)
	}
}

// hangingDirectory accepts connections and never answers.
func hangingDirectory(t *testing.T) (url string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "ldap://" + ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

// A directory that hangs past its deadline: plaintext lookups of
// directory users are answered from the snapshot, the outage is logged
// once, and metrics still see the directory fail.
func TestSnapshotAnswersForHangingDirectory(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	s := openStore(t, t.TempDir())
	svc := newService(t, s, ldapConfig(d.URL), nil)
	if err := svc.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc.Close()
	d.Stop()

	hang, accepted := hangingDirectory(t)
	cfg := ldapConfig(hang)
	var logs logBuffer
	var mu sync.Mutex
	outcomes := map[string]int{}
	lcfg := lookup.DefaultConfig()
	lcfg.Deadlines.LDAP = 200 * time.Millisecond
	svc, err := lookup.New(lcfg, cfg, lookup.DefaultDNSConfig(), nil, lookup.Deps{Store: s, Logger: logs.logger(),
		Observe: func(source, outcome string, _ time.Duration) {
			if source == "ldap" {
				mu.Lock()
				outcomes[outcome]++
				mu.Unlock()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ask := func(i int) {
		addr := fmt.Sprintf("user%04d@example.org", i)
		got := plain(svc, email(addr), msisdn("442079460000"), email("nobody@example.org"))
		if got[email(addr)].MXID != fmt.Sprintf("@user%04d:example.org", i) || got[msisdn("442079460000")].MXID != "@frank:example.org" || len(got) != 2 {
			t.Errorf("lookup %d: %v", i, got)
		}
	}
	for i := range 3 {
		ask(i)
	}
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() { defer wg.Done(); ask(100 + i) }()
	}
	wg.Wait()
	if accepted() == 0 {
		t.Error("the hanging directory was never asked")
	}
	if n := logs.count("answered from the stored snapshot"); n != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", n, logs.String())
	}
	if n := logs.count("lookup source failed"); n != 0 {
		t.Errorf("the cascade logged the directory's failure per request:\n%s", logs.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if outcomes["timeout"]+outcomes["error"] != 9 {
		t.Errorf("ldap outcomes %v, want 9 timeouts or errors (a waiter may get the shared dial's own timeout first)", outcomes)
	}
}
