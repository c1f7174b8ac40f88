package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/db/storetest"
)

// openPG opens one more handle on the database at url, closed when the test
// ends: what another replica has.
func openPG(t testing.TB, url string, opts pg.Options) *pg.Store {
	t.Helper()
	store, err := pg.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// onEachBudgets runs the Budgets contract on each implementation, with two
// handles a and b that must count as one: this process's memory (one
// handle twice) and PostgreSQL (two handles of one database, as two
// replicas have).
func onEachBudgets(t *testing.T, fn func(t *testing.T, a, b Budgets)) {
	t.Run("memory", func(t *testing.T) {
		m := newMemoryBudgets()
		fn(t, m, m)
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.New(t)
		fn(t, openPG(t, url, pg.Options{}), openPG(t, url, pg.Options{}))
	})
}

func mustCharge(t *testing.T, what string, b Budgets, bs []db.Bucket, nowMS int64, wantRefused int, wantWait int64) {
	t.Helper()
	refused, wait, err := b.ChargeBudgets(bs, nowMS)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if refused != wantRefused || wait < wantWait || wait > wantWait+1 { // +1: rounded up
		t.Errorf("%s: refused %d after %dms, want %d after %dms", what, refused, wait, wantRefused, wantWait)
	}
}

func TestBudgetsContract(t *testing.T) {
	onEachBudgets(t, func(t *testing.T, a, b Budgets) {
		const t0 = int64(1_800_000_000_000)
		three := []db.Bucket{{Key: "ratelimit.email_address/a@example.org", Burst: 3, EveryMS: 1000}}

		// Three tokens, spent on either handle; the fourth waits a whole
		// period, less what has refilled.
		mustCharge(t, "first", a, three, t0, -1, 0)
		mustCharge(t, "second", b, three, t0, -1, 0)
		mustCharge(t, "third", a, three, t0, -1, 0)
		mustCharge(t, "fourth", b, three, t0, 0, 1000)
		mustCharge(t, "fourth, 400ms later", a, three, t0+400, 0, 600)
		mustCharge(t, "fourth, refilled", b, three, t0+1000, -1, 0)

		// All or none: a refusal by one bucket spends nothing of another.
		one := db.Bucket{Key: "invites.address_rate_limit/victim@example.org", Burst: 1, EveryMS: 60_000}
		five := db.Bucket{Key: "invites.rate_limit/user:@mallory:example.org", Burst: 5, EveryMS: 60_000}
		mustCharge(t, "both", a, []db.Bucket{five, one}, t0, -1, 0)
		for i := range 3 {
			mustCharge(t, fmt.Sprintf("refused by the second bucket (%d)", i), b, []db.Bucket{five, one}, t0, 1, 60_000)
		}
		for i := range 4 {
			mustCharge(t, fmt.Sprintf("the first bucket still holds its tokens (%d)", i), a, []db.Bucket{five}, t0, -1, 0)
		}
		mustCharge(t, "the first bucket empty", b, []db.Bucket{five}, t0, 0, 60_000)

		// A replica whose clock is behind refills nothing, and does not
		// hand the next charge extra refill either.
		late := []db.Bucket{{Key: "ratelimit.msisdn_country/GB", Burst: 1, EveryMS: 1000}}
		mustCharge(t, "at t0+10s", a, late, t0+10_000, -1, 0)
		mustCharge(t, "from a clock 5s behind", b, late, t0+5_000, 0, 1000)
		mustCharge(t, "at t0+10.5s", a, late, t0+10_500, 0, 500)
		mustCharge(t, "at t0+11s", b, late, t0+11_000, -1, 0)

		// Malformed charges are refused as a caller's bug.
		for _, bad := range [][]db.Bucket{
			{{Key: "k", Burst: 0, EveryMS: 1000}},
			{{Key: "k", Burst: 1, EveryMS: 0}},
			{{Key: "k", Burst: 1, EveryMS: 1}, {Key: "k", Burst: 1, EveryMS: 1}},
		} {
			if _, _, err := a.ChargeBudgets(bad, t0); !errors.Is(err, db.ErrBadBuckets) {
				t.Errorf("ChargeBudgets(%v) = %v, want ErrBadBuckets", bad, err)
			}
		}

		// Sweeping forgets full buckets only (at t0+20s: the first and the
		// late one); the others still count.
		n, err := b.SweepBudgets(t0 + 20_000)
		if err != nil || n != 2 {
			t.Errorf("SweepBudgets: %d, %v; want the 2 full buckets swept", n, err)
		}
		mustCharge(t, "after the sweep, an emptied bucket", a, []db.Bucket{five}, t0+20_000, 0, 40_000)
		for i := range 3 {
			mustCharge(t, fmt.Sprintf("after the sweep, a swept bucket is full (%d)", i), b, three, t0+20_000, -1, 0)
		}
		mustCharge(t, "after the sweep, the swept bucket empty", a, three, t0+20_000, 0, 1000)
	})
}

// Concurrent charges of one bucket from two handles: exactly burst pass.
func TestBudgetsConcurrent(t *testing.T) {
	onEachBudgets(t, func(t *testing.T, a, b Budgets) {
		bs := []db.Bucket{{Key: "ratelimit.email_address/race@example.org", Burst: 5, EveryMS: 3_600_000},
			{Key: "ratelimit.request_token/acct:@x:example.org", Burst: 100, EveryMS: 1000}}
		var ok atomic.Int32
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				h := a
				if i%2 == 1 {
					h = b
				}
				refused, _, err := h.ChargeBudgets(bs, 1_800_000_000_000)
				if err != nil {
					t.Error(err)
				}
				if refused < 0 {
					ok.Add(1)
				}
			})
		}
		wg.Wait()
		if n := ok.Load(); n != 5 {
			t.Errorf("%d of 40 concurrent charges passed, want 5", n)
		}
	})
}

// replicaPair is two mxid servers on two handles of one PostgreSQL
// database, with one clock and one mail server: two replicas.
func replicaPair(t *testing.T, opts pg.Options, config func(*Config)) (*idHarness, *idHarness) {
	t.Helper()
	url := pgtest.New(t)
	open := func(t testing.TB) storetest.Store { return openPG(t, url, opts) }
	h1 := newIDHarness(t, idHarnessOpts{store: open, config: config})
	h2 := newIDHarness(t, idHarnessOpts{store: open, config: config, clock: h1.clock, smtp: h1.smtp})
	return h1, h2
}

// Two replicas share the budgets that protect others: five mails to one
// address in total, not five each; invites per sender likewise. Per-IP
// request buckets stay each replica's own.
func TestBudgetsAcrossReplicas(t *testing.T) {
	t.Run("mails per address", func(t *testing.T) {
		h1, h2 := replicaPair(t, pg.Options{}, func(c *Config) { c.RateLimit.EmailAddress = Rate{Burst: 5, Every: time.Hour} })
		alice, bob := h1.account("@alice:hs.test"), h1.account("@bob:hs.test")
		for i := range 5 {
			h, tok := h1, alice
			if i%2 == 1 {
				h, tok = h2, bob
			}
			wantReply(t, fmt.Sprintf("mail %d", i+1), h.requestEmail(tok, "victim@example.org", fmt.Sprintf("s%d", i), 1, nil), 200, "")
		}
		// A retry of a request already served, on the other replica, sends
		// nothing and costs nothing.
		wantReply(t, "retry on the other replica", h2.requestEmail(alice, "victim@example.org", "s0", 1, nil), 200, "")
		for _, h := range []*idHarness{h1, h2} {
			r := h.requestEmail(bob, "victim@example.org", "s9", 1, nil)
			wantReply(t, "sixth mail", r, 429, "M_LIMIT_EXCEEDED")
			if ms, _ := r.body["retry_after_ms"].(float64); ms != float64(time.Hour.Milliseconds()) {
				t.Errorf("retry_after_ms %v, want the hour one mail takes to refill", r.body["retry_after_ms"])
			}
		}
		wantReply(t, "another address", h2.requestEmail(bob, "other@example.org", "s", 1, nil), 200, "")
		if n := len(h1.smtp.Messages()); n != 6 {
			t.Errorf("%d mails sent, want 6 (5 to the victim, 1 to another address)", n)
		}
		h1.clock.Advance(time.Hour)
		wantReply(t, "after one refill", h2.requestEmail(bob, "victim@example.org", "s9", 1, nil), 200, "")
	})

	t.Run("invites per sender", func(t *testing.T) {
		h1, h2 := replicaPair(t, pg.Options{}, func(c *Config) { c.Invites.RateLimit = Rate{Burst: 2, Every: time.Hour} })
		bob := h1.account("@bob:hs.test")
		inv := func(h *idHarness, addr string) apiReply {
			return h.call("POST", v2Path+"/store-invite", bob, map[string]any{"medium": "email", "address": addr, "room_id": "!room:hs.test", "sender": "@bob:hs.test"}, nil)
		}
		wantReply(t, "invite on replica 1", inv(h1, "a1@example.org"), 200, "")
		wantReply(t, "invite on replica 2", inv(h2, "a2@example.org"), 200, "")
		wantReply(t, "third invite on replica 1", inv(h1, "a3@example.org"), 429, "M_LIMIT_EXCEEDED")
		wantReply(t, "third invite on replica 2", inv(h2, "a3@example.org"), 429, "M_LIMIT_EXCEEDED")
	})

	t.Run("per-IP buckets per replica", func(t *testing.T) {
		h1, h2 := replicaPair(t, pg.Options{}, func(c *Config) { c.RateLimit.Attempts = Rate{Burst: 3, Every: time.Hour} })
		tok := h1.account("@alice:hs.test")
		submit := map[string]any{"sid": "x", "client_secret": "s", "token": "t"}
		for _, h := range []*idHarness{h1, h2} {
			for i := range 3 {
				wantReply(t, fmt.Sprintf("attempt %d", i+1), h.call("POST", v2Path+"/validate/email/submitToken", tok, submit, nil), 404, "M_NO_VALID_SESSION")
			}
			wantReply(t, "fourth attempt", h.call("POST", v2Path+"/validate/email/submitToken", tok, submit, nil), 429, "M_LIMIT_EXCEEDED")
		}
	})
}

// The send budgets are charged inside RequestSession's transaction. With a
// pool of two connections, many concurrent requestTokens (each holding one
// connection in its transaction while it charges) all complete: charges do
// not wait for the main pool.
func TestBudgetChargeInsideSessionTransaction(t *testing.T) {
	url := pgtest.New(t)
	h := newIDHarness(t, idHarnessOpts{store: func(t testing.TB) storetest.Store {
		return openPG(t, url, pg.Options{MaxConns: 2, StatementTimeout: 30 * time.Second})
	}})
	tok := h.account("@alice:hs.test")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			r := h.requestEmail(tok, fmt.Sprintf("user%d@example.org", i), "s", 1, nil)
			if r.status != 200 {
				t.Errorf("requestToken %d: %d %s", i, r.status, r.raw)
			}
		})
	}
	wg.Wait()
	if n := len(h.smtp.Messages()); n != 16 {
		t.Errorf("%d mails, want 16", n)
	}
}

// BenchmarkBudgetCharge is the cost of one send's charge (three buckets, as
// an SMS: requester, number, country) in memory and in PostgreSQL.
func BenchmarkBudgetCharge(b *testing.B) {
	impls := []struct {
		name string
		open func(b *testing.B) Budgets
	}{
		{"memory", func(*testing.B) Budgets { return newMemoryBudgets() }},
		{"postgres", func(b *testing.B) Budgets { return openPG(b, pgtest.New(b), pg.Options{}) }},
	}
	for _, impl := range impls {
		b.Run(impl.name, func(b *testing.B) {
			budgets := impl.open(b)
			now := int64(1_800_000_000_000)
			i := 0
			for b.Loop() {
				i++
				bs := []db.Bucket{
					{Key: fmt.Sprintf("ratelimit.request_token/acct:@u%d:example.org", i%1000), Burst: 1 << 30, EveryMS: 1},
					{Key: fmt.Sprintf("ratelimit.msisdn_number/4477009%05d", i), Burst: 5, EveryMS: 3_600_000},
					{Key: "ratelimit.msisdn_country/GB", Burst: 1 << 30, EveryMS: 1},
				}
				if refused, _, err := budgets.ChargeBudgets(bs, now); err != nil || refused >= 0 {
					b.Fatalf("charge refused %d: %v", refused, err)
				}
			}
		})
	}
}
