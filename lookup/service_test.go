package lookup_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"mxid/lookup"
)

// newService wires the lookup service over s with the directory c (not
// started: tests run syncs themselves or call Start).
func newService(t testing.TB, s lookup.Store, c lookup.LDAPConfig, d *lookup.Deps) *lookup.Service {
	t.Helper()
	if d == nil {
		d = &lookup.Deps{}
	}
	d.Store = s
	svc, err := lookup.New(lookup.DefaultConfig(), c, lookup.DefaultDNSConfig(), nil, *d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc
}

// logBuffer collects a logger's lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// count is the number of lines holding s.
func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The wired service: the first directory sync runs in the background after
// start-up and then sha256 lookups find directory users; plaintext lookups
// walk local bindings, then the directory.
func TestServiceWithDirectory(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	s := openStore(t, t.TempDir())
	bind(t, s, nil, "email", "local@example.org", "@local:example.org")
	synced := make(chan error, 1)
	svc := newService(t, s, ldapConfig(d.URL), &lookup.Deps{SyncDone: func(err error) { synced <- err }})
	ctx, cancel := context.WithCancel(context.Background())
	svc.Start(ctx)
	defer func() { cancel(); svc.Wait() }()
	p := svc.Index.Pepper()
	if got, _ := find(t, svc.Index, p, "email", "user0042@example.org"); got != "" {
		t.Errorf("a directory user in the index before any sync: %q", got)
	}
	if err := <-synced; err != nil {
		t.Fatalf("first sync: %v", err)
	}
	if got, _ := find(t, svc.Index, p, "email", "user0042@example.org"); got != "@user0042:example.org" {
		t.Errorf("directory user after the first sync: %q", got)
	}
	if got, _ := find(t, svc.Index, p, "email", "local@example.org"); got != "@local:example.org" {
		t.Errorf("local binding: %q", got)
	}
	res := svc.Chain.Lookup(ctx, []lookup.ThreePID{{Medium: "email", Address: "local@example.org"}, {Medium: "email", Address: "bob@example.org"}}, false)
	if res[lookup.ThreePID{Medium: "email", Address: "local@example.org"}].Source != "local" || res[lookup.ThreePID{Medium: "email", Address: "bob@example.org"}].Source != "ldap" {
		t.Errorf("cascade: %v", res)
	}
}

// With several replicas: Start hands the rotation and the directory sync
// to RunOnce (the leader's runner); a replica that did not sync takes in
// the snapshot the leader stored when told (DirectoryChanged), and the
// leader's own service finds nothing new to take.
func TestServiceReplicas(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	s := openStore(t, t.TempDir())
	var mu sync.Mutex
	var jobs []string
	runOnce := func(name string, job func(context.Context)) {
		mu.Lock()
		defer mu.Unlock()
		jobs = append(jobs, name)
	}
	leader := newService(t, s, ldapConfig(d.URL), &lookup.Deps{RunOnce: runOnce})
	follower := newService(t, s, ldapConfig(d.URL), &lookup.Deps{RunOnce: runOnce})
	ctx, cancel := context.WithCancel(context.Background())
	leader.Start(ctx)
	follower.Start(ctx)
	defer func() { cancel(); leader.Wait(); follower.Wait() }()
	mu.Lock()
	if got := strings.Join(jobs, ", "); got != "pepper rotation, directory sync, pepper rotation, directory sync" {
		t.Errorf("jobs handed to RunOnce: %s", got)
	}
	mu.Unlock()
	if err := leader.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	p := follower.Index.Pepper()
	if got, _ := find(t, follower.Index, p, "email", "user0042@example.org"); got != "" {
		t.Fatalf("the follower found a directory user before taking in the snapshot: %q", got)
	}
	if err := follower.DirectoryChanged(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := find(t, follower.Index, p, "email", "user0042@example.org"); got != "@user0042:example.org" {
		t.Errorf("directory user on the follower after taking in the snapshot: %q", got)
	}
	before := leader.Index.Stats().LastBuild
	if err := leader.DirectoryChanged(ctx); err != nil || leader.Index.Stats().LastBuild != before {
		t.Errorf("the leader rebuilt for its own snapshot: %v", err)
	}
}
