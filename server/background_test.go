package server

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// With several replicas, Start hands the sweeps to Deps.RunOnce (only the
// leader runs them) and runs the onbind deliveries itself: a job queued by
// a bind is delivered without the leader's jobs running.
func TestStartHandsSweepsToRunOnce(t *testing.T) {
	hs := newOnbindHS(t)
	e := newTestEnv(t, func(c *Config) { c.Outbound.Pins = map[string]string{"hs.test": hs.URL} })
	var mu sync.Mutex
	var names []string
	srv, err := New(e.srv.cfg, Deps{Store: e.store, Key: e.key, Policy: e.srv.policy, Now: e.clock.Now,
		RunOnce: func(name string, job func(context.Context)) {
			mu.Lock()
			defer mu.Unlock()
			names = append(names, name)
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait := srv.Start(ctx)
	defer func() { cancel(); wait() }()
	mu.Lock()
	if want := []string{"invite sweep", "session sweep", "retention sweep"}; !slices.Equal(names, want) {
		t.Errorf("jobs handed to RunOnce: %q, want %q", names, want)
	}
	mu.Unlock()
	storeTestInvite(t, e, "tok", "alice@example.org")
	if _, err := srv.bind(ctx, "email", "alice@example.org", "@alice:hs.test", 0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if inv, err := e.store.GetInvite("tok"); err == nil && inv.DeliveredTS != 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the invite was not delivered: %+v %v", inv, err)
		}
	}
}
