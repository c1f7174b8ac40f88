package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/db/storetest"
	"mxid/lookup/threepid"
)

// With PostgreSQL down, hashed lookups go on from the in-memory index,
// writes answer 503 M_UNKNOWN with Retry-After (never hang past the
// statement timeout), the replica says it is not ready while it stays
// live; when PostgreSQL is back the pool reconnects by itself and the same
// requests succeed.
func TestPostgresUnavailable(t *testing.T) {
	srv := pgtest.Start(t)
	store, err := pg.Open(context.Background(), srv.NewDatabase(t), pg.Options{StatementTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	h := newIDHarness(t, idHarnessOpts{store: func(testing.TB) storetest.Store { return store }})
	alice := h.account("@alice:hs.test")
	sid := h.validatedEmail(alice, "alice@example.org", "s1")
	wantReply(t, "bind", h.call("POST", v2Path+"/3pid/bind", alice, map[string]any{"sid": sid, "client_secret": "s1", "mxid": "@alice:hs.test"}, nil), 200, "")
	details := h.call("GET", v2Path+"/hash_details", alice, nil, nil)
	pepper := details.str("lookup_pepper")
	hash := threepid.Hash("alice@example.org", "email", pepper)
	wantReply(t, "ready", h.call("GET", "/health/ready", "", nil, nil), 200, "")

	srv.Stop()
	// Authenticated requests need the database (the token is in it):
	// 503, with a Retry-After, and the log says why.
	r := h.call("POST", v2Path+"/validate/email/requestToken", alice, map[string]any{"email": "bob@example.org", "client_secret": "s2", "send_attempt": 1}, nil)
	wantReply(t, "requestToken with the database down", r, 503, "M_UNKNOWN")
	if r.header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %v", r.header)
	}
	wantReply(t, "unbind with the database down", h.call("POST", v2Path+"/3pid/unbind", "", map[string]any{"sid": sid, "client_secret": "s1", "mxid": "@alice:hs.test",
		"threepid": map[string]any{"medium": "email", "address": "alice@example.org"}}, nil), 503, "M_UNKNOWN")
	wantReply(t, "not ready", h.call("GET", "/health/ready", "", nil, nil), 503, "M_UNKNOWN")
	wantReply(t, "still live", h.call("GET", "/health/live", "", nil, nil), 200, "")
	// Hashed lookups are answered from memory, for a token that passed a
	// moment ago.
	for _, path := range []string{"/hash_details", "/lookup"} {
		var r apiReply
		if path == "/lookup" {
			r = h.call("POST", v2Path+path, alice, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{hash}}, nil)
		} else {
			r = h.call("GET", v2Path+path, alice, nil, nil)
		}
		wantReply(t, path+" with the database down", r, 200, "")
		if m, _ := r.body["mappings"].(map[string]any); path == "/lookup" && m[hash] != "@alice:hs.test" {
			t.Errorf("hashed lookup with the database down: %s", r.raw)
		}
	}
	wantReply(t, "an unknown token with the database down", h.call("GET", v2Path+"/hash_details", "nope", nil, nil), 503, "M_UNKNOWN")

	srv.Start(t)
	wantReply(t, "ready again", h.call("GET", "/health/ready", "", nil, nil), 200, "")
	r = h.call("POST", v2Path+"/lookup", alice, map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{hash}}, nil)
	wantReply(t, "lookup after the restart", r, 200, "")
	wantReply(t, "requestToken after the restart", h.call("POST", v2Path+"/validate/email/requestToken", alice, map[string]any{"email": "bob@example.org", "client_secret": "s2", "send_attempt": 1}, nil), 200, "")
	if b, err := h.store.GetBinding("email", "alice@example.org"); err != nil || b.MXID != "@alice:hs.test" {
		t.Errorf("the acknowledged bind after the outage: %+v %v", b, err)
	}
	if logged := h.log.String(); !strings.Contains(logged, "the database is not available") {
		t.Errorf("the log does not say why requests failed:\n%s", logged)
	}
}
