package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/lookup/threepid"
)

// Several `mxid serve` processes on one PostgreSQL database, as an operator
// runs them behind a load balancer: what one replica writes, the others
// answer; one leads; killing any of them loses nothing acknowledged.

// cluster is a set of replicas on one database, with a homeserver stand-in
// that every replica reaches on a port of its own (so the stand-in knows
// which replica delivers an onbind).
type cluster struct {
	t     *testing.T
	url   string
	dir   string
	store *pg.Store // the test's own handle: fixtures and checks
	hs    *hsStandIn
	opts  clusterOpts
	nodes []*node
}

// clusterOpts add to every replica's configuration.
type clusterOpts struct {
	pins  string // lines of [outbound.pins]
	extra string // sections appended
}

// node is one replica.
type node struct {
	name    string
	api     string // http://127.0.0.1:port
	metrics string // http://127.0.0.1:port/metrics
	config  string // path
	proc    *running
}

// userToken is an account of @user:hs.test, created in the database (the
// registration flow is tested elsewhere).
const userToken = "replicatoken0123456789abcdefghijklmnop"

// startCluster starts n replicas on the database at url, waiting until each
// is ready.
func startCluster(t *testing.T, url string, n int, opts clusterOpts) *cluster {
	t.Helper()
	store, err := pg.Open(context.Background(), url, pg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := store.CreateAccountToken(userToken, "@user:hs.test", time.Now()); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, url: url, dir: t.TempDir(), store: store, opts: opts}
	c.hs = startHSStandIn(t, n)
	for i := range n {
		c.nodes = append(c.nodes, c.configure(i))
	}
	for _, nd := range c.nodes {
		c.start(nd)
	}
	for _, nd := range c.nodes {
		c.waitReady(nd)
	}
	return c
}

// configure writes replica i's configuration.
func (c *cluster) configure(i int) *node {
	api, metrics := freePort(c.t), freePort(c.t)
	nd := &node{name: fmt.Sprintf("r%d", i), api: fmt.Sprintf("http://127.0.0.1:%d", api),
		metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", metrics), config: filepath.Join(c.dir, fmt.Sprintf("r%d.toml", i))}
	cfg := fmt.Sprintf(`server_name = "id.test"
public_base_url = "https://id.test"
data_dir = %q
[http]
listen = "127.0.0.1:%d"
[metrics]
enabled = true
listen = "127.0.0.1:%d"
[database]
url = %q
replica_name = %q
statement_timeout = "2s"
claim_lease = "3s"
[outbound]
timeout = "1s"
[outbound.pins]
"hs.test" = %q
%s
[invites.rate_limit]
burst = 0
[invites.address_rate_limit]
burst = 0
`, filepath.Join(c.dir, nd.name), api, metrics, c.url, nd.name, c.hs.urls[i], c.opts.pins) + benchUnlimited + "\n" + c.opts.extra
	if err := os.WriteFile(nd.config, []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return nd
}

func (c *cluster) start(nd *node) { nd.proc = execMxid(c.t, "serve", "-config", nd.config) }

// waitReady waits until nd answers /health/ready with 200.
func (c *cluster) waitReady(nd *node) {
	c.t.Helper()
	waitFor(c.t, nd.name+" to be ready", func() bool {
		if nd.exited() {
			c.t.Fatalf("%s exited: %s", nd.name, nd.proc.result())
		}
		st, _, err := call("GET", nd.api+"/health/ready", "", nil)
		return err == nil && st == 200
	})
}

func (nd *node) exited() bool {
	select {
	case <-nd.proc.exited:
		return true
	default:
		return false
	}
}

// kill ends nd with SIGKILL and waits for it to be gone.
func (nd *node) kill() {
	nd.proc.Kill()
	<-nd.proc.exited
}

// live are the nodes still running.
func (c *cluster) live() []*node {
	var out []*node
	for _, nd := range c.nodes {
		if !nd.exited() {
			out = append(out, nd)
		}
	}
	return out
}

// leader is the live node whose metrics say it leads, or nil when none or
// several do (for a moment after the database restarted, a leader that has
// not yet noticed its session is gone and its successor).
func (c *cluster) leader() *node {
	var found []*node
	for _, nd := range c.live() {
		if gauge(nd, "mxid_replica_leader") == 1 {
			found = append(found, nd)
		}
	}
	if len(found) != 1 {
		return nil
	}
	return found[0]
}

// gauge reads one unlabelled sample from nd's metrics (-1 if absent).
func gauge(nd *node, name string) float64 {
	_, body, err := fetch(nd.metrics)
	if err != nil {
		return -1
	}
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	var v float64
	fmt.Sscan(m[1], &v)
	return v
}

// session stores a validated session for a 3PID and returns its sid and
// client secret (the validation flow is tested elsewhere).
func (c *cluster) session(medium, address string) (sid, secret string) {
	c.t.Helper()
	sid, secret = "sid"+threepid.Hash(address, medium, "s")[:20], "secret"+threepid.Hash(address, medium, "c")[:20]
	sid, secret = strings.NewReplacer("-", "x", "_", "y").Replace(sid), strings.NewReplacer("-", "x", "_", "y").Replace(secret)
	_, err := c.store.RequestSession(medium, address, secret, func(*db.Session) (db.Session, bool, error) {
		now := time.Now().UnixMilli()
		return db.Session{ID: sid, Medium: medium, Address: address, ClientSecret: secret, Token: "123456",
			CreatedTS: now, ModifiedTS: now, ValidatedTS: now}, true, nil
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return sid, secret
}

// bind binds address to @user:hs.test through nd's API.
func bindOn(nd *node, sid, secret string) (int, map[string]any, error) {
	return call("POST", nd.api+"/_matrix/identity/v2/3pid/bind", userToken,
		map[string]any{"sid": sid, "client_secret": secret, "mxid": "@user:hs.test"})
}

// pepper is nd's current lookup pepper.
func pepperOf(t *testing.T, nd *node) string {
	t.Helper()
	st, body, err := call("GET", nd.api+"/_matrix/identity/v2/hash_details", userToken, nil)
	if err != nil || st != 200 {
		t.Fatalf("hash_details on %s: %d %v %v", nd.name, st, body, err)
	}
	return body["lookup_pepper"].(string)
}

// lookupOn asks nd for the Matrix ID of an email address with pepper:
// "" when not found; status and error when the request failed.
func lookupOn(nd *node, pepper, address string) (string, int, error) {
	h := threepid.Hash(address, "email", pepper)
	st, body, err := call("POST", nd.api+"/_matrix/identity/v2/lookup", userToken,
		map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": []string{h}})
	if err != nil || st != 200 {
		return "", st, fmt.Errorf("lookup on %s: %d %v %v", nd.name, st, body, err)
	}
	m, _ := body["mappings"].(map[string]any)[h].(string)
	return m, st, nil
}

// call is one JSON request; a network failure is returned, not fatal
// (replicas get killed under load).
func call(method, url, token string, body any) (int, map[string]any, error) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := testClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode == 503 && resp.Header.Get("Retry-After") == "" {
		return resp.StatusCode, out, fmt.Errorf("503 without Retry-After")
	}
	return resp.StatusCode, out, nil
}

// fetch GETs url and returns the status and body, or the error.
func fetch(url string) (int, string, error) {
	resp, err := testClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

var testClient = &http.Client{Timeout: 10 * time.Second}

// hsStandIn is the homeserver hs.test as the replicas see it: one listener
// per replica, counting the invites of every onbind delivered (answered
// 200). An invite token listed in hang is held unanswered on its first
// delivery until the delivering replica goes away.
type hsStandIn struct {
	urls []string

	mu        sync.Mutex
	delivered map[string][]int // invite token -> the replicas that delivered it
	hang      map[string]bool
	hung      chan int // the replica whose delivery is being held
}

func startHSStandIn(t *testing.T, n int) *hsStandIn {
	hs := &hsStandIn{delivered: map[string][]int{}, hang: map[string]bool{}, hung: make(chan int, 1)}
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hs.serve(i, w, r) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		hs.urls = append(hs.urls, "http://"+ln.Addr().String())
	}
	return hs
}

func (hs *hsStandIn) serve(replica int, w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/_matrix/federation/v1/3pid/onbind" {
		http.NotFound(w, r)
		return
	}
	var body struct {
		Invites []struct {
			Token string `json:"token"`
		} `json:"invites"`
	}
	json.NewDecoder(r.Body).Decode(&body)
	hs.mu.Lock()
	for _, inv := range body.Invites {
		if hs.hang[inv.Token] {
			delete(hs.hang, inv.Token)
			hs.mu.Unlock()
			hs.hung <- replica
			<-r.Context().Done() // the replica died: nothing was delivered
			return
		}
	}
	for _, inv := range body.Invites {
		hs.delivered[inv.Token] = append(hs.delivered[inv.Token], replica)
	}
	hs.mu.Unlock()
	w.Write([]byte(`{}`))
}

// deliveries returns who delivered token.
func (hs *hsStandIn) deliveries(token string) []int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return slices.Clone(hs.delivered[token])
}

// invite stores an invite for address through nd and returns its token.
func invite(t *testing.T, nd *node, address string) string {
	t.Helper()
	st, body, err := call("POST", nd.api+"/_matrix/identity/v2/store-invite", userToken, map[string]any{
		"medium": "email", "address": address, "room_id": "!room:hs.test", "sender": "@user:hs.test"})
	if err != nil || st != 200 {
		t.Fatalf("store-invite on %s: %d %v %v", nd.name, st, body, err)
	}
	return body["token"].(string)
}

// percentile of sorted durations.
func percentile(ds []time.Duration, p float64) time.Duration {
	return ds[min(len(ds)-1, int(p*float64(len(ds))))]
}

// TestReplicas: three replicas on one database.
//   - A bind acknowledged by one is found by a hashed lookup on itself at
//     once and on the others within about a second (measured), an unbind
//     likewise.
//   - One replica leads; SIGUSR1 to another does nothing, SIGUSR1 to the
//     leader rotates the pepper, every replica takes it, and the old
//     pepper still answers everywhere during the grace period.
//   - Invites bound through any replica reach the homeserver exactly once.
//   - The replica delivering an onbind is killed with SIGKILL mid-delivery:
//     another delivers it once its claim lapses; when it was the leader,
//     another takes the lead (measured) and rotates.
func TestReplicas(t *testing.T) {
	c := startCluster(t, pgtest.New(t), 3, clusterOpts{})
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	pepper := pepperOf(t, a)
	for _, nd := range c.nodes[1:] {
		if p := pepperOf(t, nd); p != pepper {
			t.Fatalf("replicas disagree on the pepper: %s has %q, %s %q", a.name, pepper, nd.name, p)
		}
	}

	t.Run("propagation", func(t *testing.T) {
		var lags []time.Duration
		for i := range 40 {
			writer := c.nodes[i%3]
			addr := fmt.Sprintf("prop%d@example.org", i)
			sid, secret := c.session("email", addr)
			if st, body, err := bindOn(writer, sid, secret); err != nil || st != 200 {
				t.Fatalf("bind on %s: %d %v %v", writer.name, st, body, err)
			}
			acked := time.Now()
			if got, _, err := lookupOn(writer, pepper, addr); err != nil || got != "@user:hs.test" {
				t.Fatalf("the writer %s does not find its own bind at once: %q %v", writer.name, got, err)
			}
			for _, other := range c.nodes {
				if other == writer {
					continue
				}
				waitFor(t, "the bind on "+other.name, func() bool {
					got, _, err := lookupOn(other, pepper, addr)
					return err == nil && got == "@user:hs.test"
				})
				lags = append(lags, time.Since(acked))
			}
		}
		slices.Sort(lags)
		t.Logf("bind acknowledged by one replica -> found by a hashed lookup on another: p50 %v, p99 %v, max %v (%d samples, loopback)",
			percentile(lags, 0.5), percentile(lags, 0.99), lags[len(lags)-1], len(lags))
		// The target (1 s at p99) is measured, not asserted: on a loaded
		// machine a test cannot promise it; bench-replicas reports it.
		// An unbind on b is seen by a and c.
		sid, secret := c.session("email", "prop0@example.org")
		if st, body, err := call("POST", b.api+"/_matrix/identity/v2/3pid/unbind", "", map[string]any{"sid": sid, "client_secret": secret,
			"mxid": "@user:hs.test", "threepid": map[string]any{"medium": "email", "address": "prop0@example.org"}}); err != nil || st != 200 {
			t.Fatalf("unbind: %d %v %v", st, body, err)
		}
		for _, nd := range []*node{a, cc} {
			waitFor(t, "the unbind on "+nd.name, func() bool {
				got, _, err := lookupOn(nd, pepper, "prop0@example.org")
				return err == nil && got == ""
			})
		}
	})

	// Replicas answer a token that passed a moment ago from memory (lookups
	// never wait for the database); a logout on one is forgotten by all.
	t.Run("logout", func(t *testing.T) {
		const tok = "logouttoken0123456789abcdefghijklmnopqrs"
		if err := c.store.CreateAccountToken(tok, "@leaving:hs.test", time.Now()); err != nil {
			t.Fatal(err)
		}
		for _, nd := range c.nodes {
			if st, body, err := call("GET", nd.api+"/_matrix/identity/v2/hash_details", tok, nil); err != nil || st != 200 {
				t.Fatalf("hash_details on %s: %d %v %v", nd.name, st, body, err)
			}
		}
		if st, body, err := call("POST", a.api+"/_matrix/identity/v2/account/logout", tok, map[string]any{}); err != nil || st != 200 {
			t.Fatalf("logout on %s: %d %v %v", a.name, st, body, err)
		}
		for _, nd := range c.nodes {
			waitFor(t, nd.name+" to forget the token", func() bool {
				st, _, err := call("GET", nd.api+"/_matrix/identity/v2/hash_details", tok, nil)
				return err == nil && st == 401
			})
		}
	})

	t.Run("rotation", func(t *testing.T) {
		var l *node
		waitFor(t, "a leader", func() bool { l = c.leader(); return l != nil })
		var other *node
		for _, nd := range c.nodes {
			if nd != l {
				other = nd
			}
		}
		other.proc.Signal(syscall.SIGUSR1)
		if !other.proc.stderr.waitFor("this replica does not lead") {
			t.Fatalf("%s exited", other.name)
		}
		if p := pepperOf(t, other); p != pepper {
			t.Fatalf("SIGUSR1 to a replica that does not lead changed the pepper")
		}
		l.proc.Signal(syscall.SIGUSR1)
		for _, nd := range c.nodes {
			waitFor(t, nd.name+" to take the new pepper", func() bool { return pepperOf(t, nd) != pepper })
		}
		next := pepperOf(t, l)
		for _, nd := range c.nodes {
			if p := pepperOf(t, nd); p != next {
				t.Errorf("%s has pepper %q, the leader %q", nd.name, p, next)
			}
			for _, p := range []string{pepper, next} {
				if got, _, err := lookupOn(nd, p, "prop1@example.org"); err != nil || got != "@user:hs.test" {
					t.Errorf("%s with the %s pepper: %q %v", nd.name, map[bool]string{true: "old", false: "new"}[p == pepper], got, err)
				}
			}
		}
		pepper = next
	})

	t.Run("onbind exactly once", func(t *testing.T) {
		var tokens []string
		for i := range 15 {
			addr := fmt.Sprintf("invited%d@example.org", i)
			tokens = append(tokens, invite(t, c.nodes[(i+1)%3], addr))
			sid, secret := c.session("email", addr)
			if st, body, err := bindOn(c.nodes[i%3], sid, secret); err != nil || st != 200 {
				t.Fatalf("bind: %d %v %v", st, body, err)
			}
		}
		waitFor(t, "every onbind delivered and the queue empty", func() bool {
			for _, tok := range tokens {
				if len(c.hs.deliveries(tok)) == 0 {
					return false
				}
			}
			n, err := c.store.QueueDepth()
			return err == nil && n == 0
		})
		by := map[int]int{}
		for _, tok := range tokens {
			d := c.hs.deliveries(tok)
			if len(d) != 1 {
				t.Errorf("invite %s delivered %d times (by %v)", tok, len(d), d)
			}
			by[d[0]]++
		}
		t.Logf("onbind deliveries by replica: %v", by)
	})

	t.Run("killed mid-delivery and leader failover", func(t *testing.T) {
		tok := invite(t, a, "held@example.org")
		c.hs.mu.Lock()
		c.hs.hang[tok] = true
		c.hs.mu.Unlock()
		var l *node
		waitFor(t, "a leader", func() bool { l = c.leader(); return l != nil })
		sid, secret := c.session("email", "held@example.org")
		if st, body, err := bindOn(l, sid, secret); err != nil || st != 200 {
			t.Fatalf("bind on the leader: %d %v %v", st, body, err)
		}
		var holder *node
		select {
		case i := <-c.hs.hung:
			holder = c.nodes[i]
		case <-time.After(time.Minute):
			t.Fatal("no delivery of the held invite")
		}
		holder.kill()
		killed := time.Now()
		t.Logf("killed %s (the leader: %v) holding the delivery", holder.name, holder == l)
		if holder != l { // the leader's own delivery was beaten to it: kill it too
			l.kill()
			killed = time.Now()
		}
		var next *node
		waitFor(t, "another replica to lead", func() bool { next = c.leader(); return next != nil })
		failover := time.Since(killed)
		t.Logf("leader failover after SIGKILL: %v (to %s)", failover, next.name)
		if failover > 30*time.Second {
			t.Errorf("failover took %v, more than 30s", failover)
		}
		waitFor(t, "the held invite delivered by a survivor", func() bool { return len(c.hs.deliveries(tok)) > 0 })
		if d := c.hs.deliveries(tok); len(d) != 1 || c.nodes[d[0]] == holder {
			t.Errorf("the held invite was delivered by %v (the killed replica was %s)", d, holder.name)
		}
		next.proc.Signal(syscall.SIGUSR1)
		for _, nd := range c.live() {
			waitFor(t, nd.name+" to take the new leader's pepper", func() bool { return pepperOf(t, nd) != pepper })
			if got, _, err := lookupOn(nd, pepper, "prop1@example.org"); err != nil || got != "@user:hs.test" {
				t.Errorf("%s with the old pepper after the new leader rotated: %q %v", nd.name, got, err)
			}
		}
	})
}

// TestReplicasKilledUnderBindLoad: clients bind through three replicas (a
// failed request is retried on another replica, as a load balancer would);
// two replicas are killed with SIGKILL along the way and one of them is
// started again. Every bind that was acknowledged is in the database and
// found by hashed lookups on every running replica.
func TestReplicasKilledUnderBindLoad(t *testing.T) {
	c := startCluster(t, pgtest.New(t), 3, clusterOpts{})
	const clients, perClient = 6, 40
	var mu sync.Mutex
	var done []string
	var wg sync.WaitGroup
	progress := make(chan int, clients*perClient)
	for cl := range clients {
		wg.Go(func() {
			for i := range perClient {
				addr := fmt.Sprintf("load%d-%d@example.org", cl, i)
				sid, secret := c.session("email", addr)
				for try := cl + i; ; try++ {
					nd := c.nodes[try%3]
					if st, _, err := bindOn(nd, sid, secret); err == nil && st == 200 {
						break
					}
					if try > cl+i+100 {
						t.Errorf("bind of %s failed on every replica", addr)
						return
					}
					time.Sleep(10 * time.Millisecond) // the balancer's retry
				}
				mu.Lock()
				done = append(done, addr)
				n := len(done)
				mu.Unlock()
				progress <- n
			}
		})
	}
	go func() { wg.Wait(); close(progress) }()
	killedA, killedB, restarted := false, false, false
	for n := range progress {
		switch {
		case !killedA && n >= clients*perClient/4:
			c.nodes[0].kill()
			killedA = true
		case !killedB && n >= clients*perClient/2:
			c.nodes[1].kill()
			killedB = true
		case !restarted && n >= clients*perClient*3/4:
			c.start(c.nodes[0])
			restarted = true
		}
	}
	c.waitReady(c.nodes[0])
	if len(done) != clients*perClient {
		t.Fatalf("%d binds acknowledged, want %d", len(done), clients*perClient)
	}
	for _, nd := range c.live() {
		pepper := pepperOf(t, nd)
		for _, addr := range done {
			if b, err := c.store.GetBinding("email", addr); err != nil || b.MXID != "@user:hs.test" {
				t.Fatalf("acknowledged bind of %s not in the database: %+v %v", addr, b, err)
			}
			waitFor(t, addr+" on "+nd.name, func() bool {
				got, _, err := lookupOn(nd, pepper, addr)
				return err == nil && got == "@user:hs.test"
			})
		}
	}
}

// TestReplicasDatabaseOutage: PostgreSQL stops under lookup load on two
// replicas and starts again. Hashed lookups never fail; a bind answers 503
// with Retry-After while it is down (and readiness says not ready), then
// works, and the other replica finds it.
func TestReplicasDatabaseOutage(t *testing.T) {
	srv := pgtest.Start(t)
	c := startCluster(t, srv.NewDatabase(t), 2, clusterOpts{})
	a, b := c.nodes[0], c.nodes[1]
	sid, secret := c.session("email", "before@example.org")
	if st, body, err := bindOn(a, sid, secret); err != nil || st != 200 {
		t.Fatalf("bind: %d %v %v", st, body, err)
	}
	pepper := pepperOf(t, a)
	waitFor(t, "the bind on b", func() bool { got, _, _ := lookupOn(b, pepper, "before@example.org"); return got == "@user:hs.test" })
	sidAfter, secretAfter := c.session("email", "after@example.org")

	ctx, stop := context.WithCancel(context.Background())
	var failures, lookups sync.Map
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Go(func() {
			n := 0
			for ctx.Err() == nil {
				got, _, err := lookupOn(nd, pepper, "before@example.org")
				if err != nil || got != "@user:hs.test" {
					failures.Store(fmt.Sprintf("%s %d", nd.name, n), fmt.Sprintf("%q %v", got, err))
				}
				n++
				time.Sleep(2 * time.Millisecond) // a steady load, not a CPU hog
			}
			lookups.Store(nd.name, n)
		})
	}
	srv.Stop()
	st, body, err := bindOn(a, sidAfter, secretAfter)
	if err != nil || st != 503 || body["errcode"] != "M_UNKNOWN" {
		t.Errorf("bind with PostgreSQL down: %d %v %v, want 503 M_UNKNOWN with Retry-After", st, body, err)
	}
	if st, _, _ := call("GET", b.api+"/health/ready", "", nil); st != 503 {
		t.Errorf("readiness with PostgreSQL down: %d, want 503", st)
	}
	srv.Start(t)
	waitFor(t, "a bind to work again", func() bool {
		st, _, err := bindOn(a, sidAfter, secretAfter)
		return err == nil && st == 200
	})
	waitFor(t, "the new bind on b", func() bool { got, _, _ := lookupOn(b, pepper, "after@example.org"); return got == "@user:hs.test" })
	stop()
	wg.Wait()
	failures.Range(func(k, v any) bool {
		t.Errorf("lookup %s failed: %s", k, v)
		return true
	})
	lookups.Range(func(k, v any) bool { t.Logf("%s answered %d lookups across the outage", k, v); return true })
	c.waitReady(a)
	c.waitReady(b)
	waitFor(t, "a leader after the outage", func() bool { return c.leader() != nil })
}
