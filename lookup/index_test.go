package lookup_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mxid/db"
	"mxid/lookup"
	"mxid/lookup/threepid"
)

// clock is an injectable clock for rotation tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openStore(t testing.TB, dir string) *db.Store {
	t.Helper()
	s, err := db.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func bind(t testing.TB, s *db.Store, x *lookup.Index, medium, address, mxid string) {
	t.Helper()
	if _, err := s.PutBinding(db.Binding{Medium: medium, Address: address, MXID: mxid, TS: 1}); err != nil {
		t.Fatal(err)
	}
	if x != nil {
		x.Bound(medium, address, mxid)
	}
}

func unbind(t testing.TB, s *db.Store, x *lookup.Index, medium, address, mxid string) {
	t.Helper()
	if _, err := s.DeleteBinding(medium, address, mxid); err != nil {
		t.Fatal(err)
	}
	x.Unbound(medium, address)
}

func find(t testing.TB, x *lookup.Index, pepper, medium, address string) (string, error) {
	t.Helper()
	got, err := x.LookupHashes(pepper, []string{threepid.Hash(address, medium, pepper)})
	if err != nil {
		return "", err
	}
	return got[0], nil
}

func TestIndexBindUnbindRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	bind(t, s, nil, "email", "alice@example.org", "@alice:example.org")
	bind(t, s, nil, "msisdn", "447700900001", "@bob:example.org")
	x, err := lookup.NewIndex(lookup.IndexOptions{Store: s, Rotation: time.Hour, Grace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	p := x.Pepper()
	if !regexpPepper(p) {
		t.Fatalf("pepper %q does not match ^[A-Za-z0-9]{20,}$", p)
	}
	for _, c := range []struct{ medium, address, want string }{
		{"email", "alice@example.org", "@alice:example.org"},
		{"msisdn", "447700900001", "@bob:example.org"},
		{"email", "nobody@example.org", ""},
		{"msisdn", "447700900001x", ""},
	} {
		if got, err := find(t, x, p, c.medium, c.address); err != nil || got != c.want {
			t.Errorf("%s %s: got %q, %v; want %q", c.medium, c.address, got, err, c.want)
		}
	}
	bind(t, s, x, "email", "carol@example.org", "@carol:example.org")
	bind(t, s, x, "email", "alice@example.org", "@alice2:example.org") // rebind to someone else
	unbind(t, s, x, "msisdn", "447700900001", "@bob:example.org")
	want := map[string]string{"carol@example.org": "@carol:example.org", "alice@example.org": "@alice2:example.org"}
	check := func(x *lookup.Index) {
		t.Helper()
		for a, m := range want {
			if got, _ := find(t, x, x.Pepper(), "email", a); got != m {
				t.Errorf("%s: got %q, want %q", a, got, m)
			}
		}
		if got, _ := find(t, x, x.Pepper(), "msisdn", "447700900001"); got != "" {
			t.Errorf("unbound msisdn still found: %q", got)
		}
	}
	check(x)
	// Malformed hashes do not match, they are not errors.
	got, err := x.LookupHashes(p, []string{"!!!", "", string(make([]byte, 1000)), "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZU="})
	if err != nil || got[0]+got[1]+got[2]+got[3] != "" {
		t.Errorf("malformed hashes: %q, %v", got, err)
	}
	// A restart keeps the pepper and rebuilds the same answers from the store.
	x2, err := lookup.NewIndex(lookup.IndexOptions{Store: s, Rotation: time.Hour, Grace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if x2.Pepper() != p {
		t.Errorf("pepper changed across restart: %q -> %q", p, x2.Pepper())
	}
	check(x2)
	if _, err := x2.LookupHashes("wrongpepper", nil); err != lookup.ErrPepper {
		t.Errorf("wrong pepper: %v", err)
	}
}

func regexpPepper(p string) bool {
	if len(p) < 20 {
		return false
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func TestIndexRotationGrace(t *testing.T) {
	s := openStore(t, t.TempDir())
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	bind(t, s, nil, "email", "alice@example.org", "@alice:example.org")
	rotated := make(chan struct{}, 1) // told by the log line of each rotation
	opts := lookup.IndexOptions{Store: s, Rotation: time.Hour, Grace: 10 * time.Minute, Now: clk.Now,
		Logger: slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			if bytes.Contains(p, []byte("lookup pepper rotated")) {
				select {
				case rotated <- struct{}{}:
				default:
				}
			}
			return len(p), nil
		}), nil))}
	x, err := lookup.NewIndex(opts)
	if err != nil {
		t.Fatal(err)
	}
	old := x.Pepper()
	if err := x.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-rotated
	cur := x.Pepper()
	if cur == old || !regexpPepper(cur) {
		t.Fatalf("rotation gave %q after %q", cur, old)
	}
	// A bind after the rotation is found with both peppers.
	bind(t, s, x, "email", "dave@example.org", "@dave:example.org")
	for _, p := range []string{old, cur} {
		for a, m := range map[string]string{"alice@example.org": "@alice:example.org", "dave@example.org": "@dave:example.org"} {
			if got, err := find(t, x, p, "email", a); err != nil || got != m {
				t.Errorf("pepper %s, %s: got %q, %v", p[:4], a, got, err)
			}
		}
	}
	// A restart within the grace period still accepts the old pepper.
	x2, err := lookup.NewIndex(opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := find(t, x2, old, "email", "dave@example.org"); err != nil || got != "@dave:example.org" {
		t.Errorf("old pepper after restart within grace: %q, %v", got, err)
	}
	clk.Add(10*time.Minute + time.Second)
	if _, err := find(t, x, old, "email", "alice@example.org"); err != lookup.ErrPepper {
		t.Errorf("old pepper after grace: %v, want ErrPepper", err)
	}
	if got, err := find(t, x, cur, "email", "alice@example.org"); err != nil || got != "@alice:example.org" {
		t.Errorf("current pepper after grace: %q, %v", got, err)
	}
	// Run rotates once the interval has passed.
	clk.Add(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Run(ctx); close(done) }()
	select {
	case <-rotated:
	case <-time.After(time.Minute): // a hang, not a slow machine
	}
	cancel()
	<-done
	if x.Pepper() == cur {
		t.Error("no rotation after the interval")
	}
}

// TestIndexNoLostUpdates binds and unbinds while rotations run: every
// change lands in the index whatever the swap timing.
func TestIndexNoLostUpdates(t *testing.T) {
	s := openStore(t, t.TempDir())
	var bs []db.Binding
	for i := range 20000 {
		bs = append(bs, db.Binding{Medium: "email", Address: fmt.Sprintf("u%d@example.org", i), MXID: fmt.Sprintf("@u%d:example.org", i)})
	}
	if _, err := s.PutBindings(bs, 10000); err != nil {
		t.Fatal(err)
	}
	x, err := lookup.NewIndex(lookup.IndexOptions{Store: s, Rotation: time.Hour, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := x.Rotate(context.Background()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 1200 {
		bind(t, s, x, "email", fmt.Sprintf("new%d@example.org", i), fmt.Sprintf("@new%d:example.org", i))
		if i%3 == 0 {
			unbind(t, s, x, "email", fmt.Sprintf("u%d@example.org", i), fmt.Sprintf("@u%d:example.org", i))
		}
	}
	stop.Store(true)
	wg.Wait()
	if r := x.Stats().Rotations; r < 5 {
		t.Fatalf("only %d rotations ran during the binds", r)
	}
	p := x.Pepper()
	for i := range 1200 {
		if got, _ := find(t, x, p, "email", fmt.Sprintf("new%d@example.org", i)); got != fmt.Sprintf("@new%d:example.org", i) {
			t.Fatalf("bind %d lost across rotation: %q", i, got)
		}
		want := fmt.Sprintf("@u%d:example.org", i)
		if i%3 == 0 {
			want = ""
		}
		if got, _ := find(t, x, p, "email", fmt.Sprintf("u%d@example.org", i)); got != want {
			t.Fatalf("binding u%d: got %q want %q", i, got, want)
		}
	}
}

func TestIndexFixedPepper(t *testing.T) {
	s := openStore(t, t.TempDir())
	const fixed = "matrixrocksmatrixrocks"
	x, err := lookup.NewIndex(lookup.IndexOptions{Store: s, Fixed: fixed})
	if err != nil {
		t.Fatal(err)
	}
	bind(t, s, x, "email", "alice@example.com", "@alice:example.org")
	x.Rotate(context.Background())
	if x.Pepper() != fixed {
		t.Fatalf("fixed pepper rotated to %q", x.Pepper())
	}
	if got, _ := find(t, x, fixed, "email", "alice@example.com"); got != "@alice:example.org" {
		t.Errorf("got %q", got)
	}
}

// TestIndexReloadFollowsLeader: two indexes on one store, as two replicas:
// the leader rotates; the other, told the state changed, takes the new
// pepper and goes on answering the old one for the grace period the leader
// recorded, and not after.
func TestIndexReloadFollowsLeader(t *testing.T) {
	s := openStore(t, t.TempDir())
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	bind(t, s, nil, "email", "alice@example.org", "@alice:example.org")
	opts := lookup.IndexOptions{Store: s, Rotation: time.Hour, Grace: 10 * time.Minute, Now: clk.Now}
	leader, err := lookup.NewIndex(opts)
	if err != nil {
		t.Fatal(err)
	}
	follower, err := lookup.NewIndex(opts)
	if err != nil {
		t.Fatal(err)
	}
	old := leader.Pepper()
	if follower.Pepper() != old {
		t.Fatalf("the second index made its own pepper: %q, %q", follower.Pepper(), old)
	}
	if changed, err := follower.Reload(context.Background()); changed || err != nil {
		t.Fatalf("Reload with nothing new: %v %v", changed, err)
	}
	if err := leader.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	bind(t, s, follower, "email", "bob@example.org", "@bob:example.org") // a bind the follower applied
	if changed, err := follower.Reload(context.Background()); !changed || err != nil {
		t.Fatalf("Reload after the leader rotated: %v %v", changed, err)
	}
	cur := leader.Pepper()
	if follower.Pepper() != cur {
		t.Fatalf("follower's pepper %q, leader's %q", follower.Pepper(), cur)
	}
	for _, p := range []string{old, cur} {
		for a, m := range map[string]string{"alice@example.org": "@alice:example.org", "bob@example.org": "@bob:example.org"} {
			if got, err := find(t, follower, p, "email", a); err != nil || got != m {
				t.Errorf("follower, pepper %s, %s: %q %v", p[:4], a, got, err)
			}
		}
	}
	clk.Add(10*time.Minute + time.Second)
	if follower.PepperAccepted(old) {
		t.Error("the old pepper is accepted after the grace the leader recorded")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
