package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/lookup"
	"mxid/lookup/threepid"
)

// followerOn is a lookup service over its own handle on the database at
// url, and the follower of its index, following from the newest change.
func followerOn(t *testing.T, url string) (*follower, *pg.Store) {
	t.Helper()
	store, err := pg.Open(context.Background(), url, pg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	from, err := store.LatestChange()
	if err != nil {
		t.Fatal(err)
	}
	lk, err := lookup.New(lookup.DefaultConfig(), lookup.DefaultLDAPConfig(), lookup.DefaultDNSConfig(), nil,
		lookup.Deps{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lk.Close)
	return newFollower(store, lk, from, discardLog()), store
}

func found(f *follower, address string) string {
	p := f.lk.Index.Pepper()
	got, _ := f.lk.Index.LookupHashes(p, []string{threepid.Hash(address, "email", p)})
	return got[0]
}

// The follower applies another replica's writes in the log's order once it
// reads the log; a follower further behind than the pruned log rebuilds
// from the database; a pepper the leader rotated is taken in by the
// rebuilder; readiness fails when the log has not been read for max_lag.
func TestFollower(t *testing.T) {
	url := pgtest.New(t)
	f, _ := followerOn(t, url)
	other, writer := followerOn(t, url) // another replica, writing
	for i := range 3 {
		if _, err := writer.PutBinding(db.Binding{Medium: "email", Address: fmt.Sprintf("u%d@example.org", i), MXID: fmt.Sprintf("@u%d:hs", i)}); err != nil {
			t.Fatal(err)
		}
	}
	writer.PutBinding(db.Binding{Medium: "email", Address: "u0@example.org", MXID: "@again:hs"})
	writer.DeleteBinding("email", "u1@example.org", "@u1:hs")
	if found(f, "u2@example.org") != "" {
		t.Fatal("found before reading the log")
	}
	if err := f.sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{"u0@example.org": "@again:hs", "u1@example.org": "", "u2@example.org": "@u2:hs"} {
		if got := found(f, addr); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}

	// Pruned past it: a new follower from 0 rebuilds and ends at the newest.
	writer.PutBinding(db.Binding{Medium: "email", Address: "late@example.org", MXID: "@late:hs"})
	if _, err := writer.PruneChanges(time.Now().Add(24 * time.Hour * 3650).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	f.seq.Store(0)
	if err := f.sync(context.Background()); err != nil {
		t.Fatalf("sync after pruning: %v", err)
	}
	latest, _ := writer.LatestChange()
	if f.seq.Load() != latest || found(f, "late@example.org") != "@late:hs" || found(f, "u1@example.org") != "" {
		t.Errorf("after the rebuild: seq %d (latest %d), late %q, u1 %q", f.seq.Load(), latest, found(f, "late@example.org"), found(f, "u1@example.org"))
	}

	// The other replica leads and rotates: the follower takes the pepper.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.runRebuilds(ctx)
	old := f.lk.Index.Pepper()
	if err := other.lk.Index.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the follower to take the new pepper", func() bool {
		f.sync(ctx)
		return f.lk.Index.Pepper() == other.lk.Index.Pepper()
	})
	if !f.lk.Index.PepperAccepted(old) {
		t.Error("the old pepper is not accepted during the grace period")
	}

	// Readiness: behind by more than max_lag is not ready.
	ready := f.ready(10 * time.Second)
	if err := ready(); err != nil {
		t.Errorf("ready just after reading the log: %v", err)
	}
	f.now = func() time.Time { return time.Now().Add(11 * time.Second) }
	if err := ready(); err == nil || !strings.Contains(err.Error(), "max_lag") {
		t.Errorf("ready 11s after reading the log, max_lag 10s: %v", err)
	}
}
