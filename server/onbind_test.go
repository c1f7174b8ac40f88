package server

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/db"
	"mxid/server/federation"
	"mxid/server/signing"
)

// onbindHS is a homeserver stand-in that records onbind calls and answers
// with the statuses it is given, one per call (then 200).
type onbindHS struct {
	*httptest.Server
	mu       sync.Mutex
	statuses []int
	calls    []onbindCall
}

type onbindCall struct {
	method string
	body   map[string]any
}

func newOnbindHS(t *testing.T, statuses ...int) *onbindHS {
	hs := &onbindHS{statuses: statuses}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != federation.OnbindPath {
			http.NotFound(w, r)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		json.Unmarshal(raw, &body)
		hs.mu.Lock()
		hs.calls = append(hs.calls, onbindCall{r.Method, body})
		status := 200
		if len(hs.statuses) > 0 {
			status, hs.statuses = hs.statuses[0], hs.statuses[1:]
		}
		hs.mu.Unlock()
		w.WriteHeader(status)
		w.Write([]byte(`{}`))
	}))
	t.Cleanup(hs.Close)
	return hs
}

func (hs *onbindHS) got() []onbindCall {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]onbindCall(nil), hs.calls...)
}

func storeTestInvite(t *testing.T, e *testEnv, token, address string) {
	t.Helper()
	eph, _ := signing.NewKey(signing.LongTermKeyID)
	now := e.clock.Now()
	err := e.store.PutInvite(db.Invite{Token: token, Medium: "email", Address: address, RoomID: "!room:hs.test",
		Sender: "@bob:hs.test", Ephemeral: signing.EncodeBase64URL(eph.Public()), CreatedTS: now.UnixMilli(), ExpiresTS: now.Add(time.Hour).UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
}

// checkOnbindBody verifies what a homeserver checks: every invite's signed
// block is signed by mxid's published long-term key, for the bound user.
func checkOnbindBody(t *testing.T, serverName string, pub ed25519.PublicKey, body map[string]any, mxid string, tokens ...string) {
	t.Helper()
	if body["mxid"] != mxid || body["medium"] != "email" {
		t.Errorf("onbind body %v", body)
	}
	if err := signing.Verify(body, serverName, "ed25519:0", pub); err != nil {
		t.Errorf("onbind body signature: %v", err)
	}
	invites, _ := body["invites"].([]any)
	if len(invites) != len(tokens) {
		t.Fatalf("onbind carries %d invites, want %d: %v", len(invites), len(tokens), body)
	}
	for i, raw := range invites {
		inv := raw.(map[string]any)
		signed, _ := inv["signed"].(map[string]any)
		if inv["token"] != tokens[i] || signed["token"] != tokens[i] || signed["mxid"] != mxid || inv["room_id"] != "!room:hs.test" || inv["sender"] != "@bob:hs.test" {
			t.Errorf("invite %d: %v", i, inv)
		}
		if err := signing.Verify(signed, serverName, "ed25519:0", pub); err != nil {
			t.Errorf("invite %d signed block: %v", i, err)
		}
	}
}

func TestOnbindRetriesThenDelivers(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		hs := newOnbindHS(t, 500, 502, 503)
		e := newTestEnvOn(t, be, func(c *Config) { c.Outbound.Pins = map[string]string{"hs.test": hs.URL} })
		storeTestInvite(t, e, "tok1", "alice@example.org")
		storeTestInvite(t, e, "tok2", "alice@example.org")
		storeTestInvite(t, e, "other", "carol@example.org")
		if _, err := e.srv.bind(context.Background(), "email", "alice@example.org", "@alice:hs.test", 0); err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		for attempt := 1; attempt <= 3; attempt++ {
			e.srv.deliverDue(ctx)
			if n := len(hs.got()); n != attempt {
				t.Fatalf("after attempt %d the homeserver saw %d calls", attempt, n)
			}
			e.srv.deliverDue(ctx) // not due again yet: backoff
			if n := len(hs.got()); n != attempt {
				t.Fatalf("a retry came before its backoff (%d calls)", n)
			}
			if _, err := e.store.GetInvite("tok1"); err != nil {
				t.Fatalf("invite gone before delivery: %v", err)
			}
			e.clock.Advance(10 * time.Minute)
		}
		e.srv.deliverDue(ctx)
		calls := hs.got()
		if len(calls) != 4 {
			t.Fatalf("%d calls, want 4", len(calls))
		}
		checkOnbindBody(t, e.srv.cfg.ServerName, e.key.Public(), calls[3].body, "@alice:hs.test", "tok1", "tok2")
		if depth, _ := e.store.QueueDepth(); depth != 0 {
			t.Errorf("queue depth %d after delivery", depth)
		}
		for _, tok := range []string{"tok1", "tok2"} {
			if inv, err := e.store.GetInvite(tok); err != nil || inv.DeliveredTS == 0 {
				t.Errorf("delivered invite %s not marked delivered: %+v %v", tok, inv, err)
			}
		}
		if _, err := e.store.GetInvite("other"); err != nil {
			t.Errorf("another address's invite was removed: %v", err)
		}
		// A rebind to the same user with nothing pending sends nothing more.
		e.srv.bind(context.Background(), "email", "alice@example.org", "@alice:hs.test", 0)
		e.srv.deliverDue(ctx)
		if n := len(hs.got()); n != 4 {
			t.Errorf("an idle rebind caused another onbind (%d calls)", n)
		}
	})
}

func TestOnbindFallsBackToPut(t *testing.T) {
	hs := newOnbindHS(t, http.StatusMethodNotAllowed)
	e := newTestEnv(t, func(c *Config) { c.Outbound.Pins = map[string]string{"hs.test": hs.URL} })
	storeTestInvite(t, e, "tok", "alice@example.org")
	e.srv.bind(context.Background(), "email", "alice@example.org", "@alice:hs.test", 0)
	e.srv.deliverDue(context.Background())
	calls := hs.got()
	if len(calls) != 2 || calls[0].method != "POST" || calls[1].method != "PUT" {
		t.Fatalf("calls %+v, want POST then PUT", calls)
	}
	checkOnbindBody(t, e.srv.cfg.ServerName, e.key.Public(), calls[1].body, "@alice:hs.test", "tok")
	if depth, _ := e.store.QueueDepth(); depth != 0 {
		t.Errorf("queue depth %d", depth)
	}
}

func TestOnbindGivesUpAfterMaxAttempts(t *testing.T) {
	hs := newOnbindHS(t, 500, 500, 500, 500)
	e := newTestEnv(t, func(c *Config) {
		c.Outbound.Pins = map[string]string{"hs.test": hs.URL}
		c.Invites.DeliveryMaxAttempts = 2
	})
	storeTestInvite(t, e, "tok", "alice@example.org")
	e.srv.bind(context.Background(), "email", "alice@example.org", "@alice:hs.test", 0)
	for i := 0; i < 3; i++ {
		e.srv.deliverDue(context.Background())
		e.clock.Advance(time.Hour * 2)
	}
	if n := len(hs.got()); n != 2 {
		t.Errorf("%d attempts, want 2", n)
	}
	if depth, _ := e.store.QueueDepth(); depth != 0 {
		t.Errorf("queue depth %d after giving up", depth)
	}
	// The invite is pending again: a later bind of the address carries it.
	inv, err := e.store.GetInvite("tok")
	if err != nil || inv.QueuedJob != 0 {
		t.Errorf("invite after giving up: %+v %v", inv, err)
	}
}

// The queue lives in the store: a server started on the same store after a
// restart delivers what the previous one could not, through its background
// loop.
func TestOnbindSurvivesRestart(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		hs := newOnbindHS(t, 503)
		e := newTestEnvOn(t, be, func(c *Config) { c.Outbound.Pins = map[string]string{"hs.test": hs.URL} })
		storeTestInvite(t, e, "tok", "alice@example.org")
		e.srv.bind(context.Background(), "email", "alice@example.org", "@alice:hs.test", 0)
		e.srv.deliverDue(context.Background()) // fails; retry scheduled
		e.clock.Advance(30 * time.Minute)      // the retry is due; the invite has not expired

		srv2, err := New(e.srv.cfg, Deps{Store: e.store, Key: e.key, Policy: e.srv.policy, Now: e.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		wait := srv2.Start(ctx)
		// Until the delivery is recorded (a condition in the store, which
		// tells no one: polled, with a deadline that only catches a hang).
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if inv, err := e.store.GetInvite("tok"); err == nil && inv.DeliveredTS != 0 {
				break
			}
		}
		cancel()
		wait()
		calls := hs.got()
		if len(calls) != 2 {
			t.Fatalf("%d calls after restart, want 2", len(calls))
		}
		checkOnbindBody(t, e.srv.cfg.ServerName, e.key.Public(), calls[1].body, "@alice:hs.test", "tok")
		if inv, err := e.store.GetInvite("tok"); err != nil || inv.DeliveredTS == 0 {
			t.Errorf("invite after delivery: %+v %v", inv, err)
		}
		// Delivered invites go when they expire.
		e.clock.Advance(2 * time.Hour)
		if n, err := e.store.SweepInvites(e.clock.Now().UnixMilli()); err != nil || n != 1 {
			t.Errorf("sweep after expiry removed %d (%v), want 1", n, err)
		}
	})
}

// A homeserver on an address the outbound policy refuses: the retry is
// logged with the setting that would let it through.
func TestOnbindBlockedDestinationHint(t *testing.T) {
	hs := newOnbindHS(t)
	e := newTestEnv(t, nil)
	host := strings.TrimPrefix(hs.URL, "http://") // 127.0.0.1:port, not pinned, not allowed
	storeTestInvite(t, e, "tok", "alice@example.org")
	if _, err := e.srv.bind(context.Background(), "email", "alice@example.org", "@alice:"+host, 0); err != nil {
		t.Fatal(err)
	}
	e.srv.deliverDue(context.Background())
	if n := len(hs.got()); n != 0 {
		t.Fatalf("a refused destination was called %d times", n)
	}
	logged := e.logs()
	for _, want := range []string{`msg="onbind delivery failed; will retry"`, "destination address is not allowed", "/_matrix/federation/v1/3pid/onbind", "allow_cidrs", "[outbound.pins]"} {
		if !strings.Contains(logged, want) {
			t.Errorf("the retry log lacks %q:\n%s", want, logged)
		}
	}
}
