package pg

import (
	"context"
	"fmt"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pgtest"
)

// within waits for ch, failing after a generous deadline.
func within(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("waited a minute for %s", what)
	}
}

// TestChangeFeed: the feed signals once connected (a follower catches up
// then), after a write by another handle, and again after PostgreSQL went
// away and came back; while it is away, Err says so.
func TestChangeFeed(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	follower, writer := openURL(t, url, Options{StatementTimeout: 2 * time.Second}), openURL(t, url, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	f := follower.FollowChanges(ctx)
	defer func() { cancel(); within(t, "the feed to stop", f.Done()) }()
	within(t, "the first signal", f.C())
	if err := f.Err(); err != nil {
		t.Fatalf("connected feed: Err %v", err)
	}
	if _, err := writer.PutBinding(db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs"}); err != nil {
		t.Fatal(err)
	}
	within(t, "the signal of a write", f.C())

	srv.Stop()
	deadline := time.Now().Add(time.Minute)
	for f.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the feed did not notice PostgreSQL going away")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select { // drain a signal sent before the outage was noticed
	case <-f.C():
	default:
	}
	srv.Start(t)
	within(t, "the signal after reconnecting", f.C())
	if err := f.Err(); err != nil {
		t.Errorf("reconnected feed: Err %v", err)
	}
}

// TestLeadership: of two replicas one leads; the other takes over once the
// first releases, or once its session is gone (as when its process dies);
// the leader whose session was ended learns it from Lost.
func TestLeadership(t *testing.T) {
	url := pgtest.New(t)
	a, b := openURL(t, url, Options{}).Leadership(), openURL(t, url, Options{}).Leadership()
	ctx := context.Background()
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("first bid: %v %v", ok, err)
	}
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("bid of the leader again: %v %v", ok, err)
	}
	if ok, err := b.TryAcquire(ctx); ok || err != nil {
		t.Fatalf("second replica's bid while the first leads: %v %v", ok, err)
	}
	a.Release()
	if ok, err := b.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("bid after the leader released: %v %v", ok, err)
	}
	// The leader's session ends (its backend terminated, as when its
	// process died): it notices, and the other replica can lead.
	pgtest.Exec(t, url, fmt.Sprintf("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = %d AND objid = %d", lockClass, lockLeader))
	within(t, "the leader to notice its session ended", b.Lost())
	if ok, err := a.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("bid after the leader's session ended: %v %v", ok, err)
	}
	a.Release()
	b.Release() // not leading: nothing to do
}
