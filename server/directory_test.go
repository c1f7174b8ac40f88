package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/db/storetest"
	"mxid/lookup"
	"mxid/lookup/slapdtest"
	"mxid/server/matrixid"
)

const dirColleagues = 3000

// dirSeed is the company directory: Alice from accounting (never on
// Matrix), people with accented, several-word and shared names, entries
// with addresses planted in display-name attributes and in others.
func dirSeed() string {
	var b strings.Builder
	b.WriteString(slapdtest.Person("alice.martin", "displayName", "Alice Martin (Accounting)", "mail", "alice.martin@mail.example.com",
		"mobile", "+44 7700 900123", "description", "alice.private@mail.example.com", "title", "Call +44 20 7946 0101"))
	b.WriteString(slapdtest.Person("elodie", "displayName", "Élodie Dupont-Müller", "mail", "elodie@mail.example.com"))
	b.WriteString(slapdtest.Person("xq1", "displayName", "Xavier Quintal", "mail", "xq1@mail.example.com"))
	b.WriteString(slapdtest.Person("xq2", "displayName", "Xavier Quintal", "mail", "xq2@mail.example.com"))
	b.WriteString(slapdtest.Person("leaky", "displayName", "leaky.person@mail.example.com", "cn", "Leaky Person", "mail", "leaky@mail.example.com"))
	b.WriteString(slapdtest.Person("phoney", "displayName", "+44 20 7946 0999", "mail", "phoney@mail.example.com"))
	b.WriteString(slapdtest.Colleagues(dirColleagues))
	return b.String()
}

// clientHomeserver stands in for the homeserver's client API over real HTTP: whoami for
// three tokens, and a user directory of its own that matches every word
// of the term anywhere in a user's name or ID.
type clientHomeserver struct {
	*httptest.Server
	whoami, searches atomic.Int64
	mode             atomic.Value // of its search: "ok", "500", "garbage", "hang", "401"
	whoamiDown       atomic.Bool
	mu               sync.Mutex
	paths            []string
}

// The homeserver's users (it knows Xavier Quintal 1 by another name).
var hsUsers = []map[string]string{
	{"user_id": "@alicia:example.org", "display_name": "Alicia Accardo", "avatar_url": "mxc://example.org/alicia"},
	{"user_id": "@xq1:example.org", "display_name": "Xavier Q. (on Matrix)", "avatar_url": "mxc://example.org/xq1"},
	{"user_id": "@searcher:example.org", "display_name": "Sam Searcher"},
}

// The homeserver's refusal of a wrong token, as Synapse words it.
// goodToken is the searcher's token at the homeserver.
const goodToken = "syt_c2VhcmNoZXI_Zq8Fv1pQ"

const hsUnknownToken = `{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}`

func newClientHomeserver(t testing.TB) *clientHomeserver {
	hs := &clientHomeserver{}
	hs.mode.Store("ok")
	tokens := map[string]string{goodToken: `{"user_id":"@searcher:example.org","device_id":"D","is_guest":false}`,
		"other": `{"user_id":"@other:example.org"}`, "guest": `{"user_id":"@guest1:example.org","is_guest":true}`}
	hs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case r.Header.Get("Authorization") == "":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errcode":"M_MISSING_TOKEN","error":"Missing access token"}`)
			return
		case tokens[tok] == "":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, hsUnknownToken)
			return
		}
		if r.Method == http.MethodGet && r.URL.Path == "/_matrix/client/v3/account/whoami" {
			hs.whoami.Add(1)
			if hs.whoamiDown.Load() {
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, `{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
				return
			}
			io.WriteString(w, tokens[tok])
			return
		}
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/user_directory/search") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		hs.searches.Add(1)
		hs.mu.Lock()
		hs.paths = append(hs.paths, r.URL.Path)
		hs.mu.Unlock()
		var req struct {
			SearchTerm string `json:"search_term"`
			Limit      int    `json:"limit"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		switch hs.mode.Load() {
		case "500":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, `{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
			return
		case "garbage":
			io.WriteString(w, `<html>Bad gateway</html>`)
			return
		case "hang":
			<-r.Context().Done() // until mxid gives up
			return
		case "401":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, hsUnknownToken)
			return
		}
		var results []map[string]string
		for _, u := range hsUsers {
			hay := strings.ToLower(u["display_name"] + " " + u["user_id"])
			if !slices.ContainsFunc(strings.Fields(strings.ToLower(req.SearchTerm)), func(w string) bool { return !strings.Contains(hay, w) }) {
				results = append(results, u)
			}
		}
		limited := len(results) > req.Limit
		results = results[:min(len(results), req.Limit)]
		json.NewEncoder(w).Encode(map[string]any{"results": results, "limited": limited})
	}))
	t.Cleanup(hs.Close)
	return hs
}

func (hs *clientHomeserver) lastPath() string {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.paths[len(hs.paths)-1]
}

// dirEnv is mxid with [directory] enabled in front of a fake homeserver,
// over a real slapd, on a backend's store.
type dirEnv struct {
	*testEnv
	hs      *clientHomeserver
	lookup  *lookup.Service
	metrics *Metrics
}

func newDirEnv(t *testing.T, d *slapdtest.Server, b backend, mutate func(*lookup.DirectoryConfig)) *dirEnv {
	t.Helper()
	e := newDirEnvOn(t, d, b.open(t), newClientHomeserver(t), mutate)
	e.sync(t)
	return e
}

// sync reads the directory, as the background loop does.
func (e *dirEnv) sync(t testing.TB) {
	t.Helper()
	if err := e.lookup.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// newDirEnvOn is newDirEnv on store, in front of hs, before any sync.
func newDirEnvOn(t testing.TB, d *slapdtest.Server, store storetest.Store, hs *clientHomeserver, mutate func(*lookup.DirectoryConfig)) *dirEnv {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Outbound.AllowCIDRs = []string{"127.0.0.0/8"} // the homeserver next door
	ldapCfg := lookup.DefaultLDAPConfig()
	ldapCfg.URLs, ldapCfg.BindDN, ldapCfg.BindPassword = []string{d.URL}, slapdtest.Reader, slapdtest.ReaderPW
	ldapCfg.BaseDNs, ldapCfg.Preset, ldapCfg.UIDDomain = []string{slapdtest.Base}, "openldap", "example.org"
	dirCfg := lookup.DefaultDirectoryConfig()
	dirCfg.Enabled, dirCfg.HomeserverURL, dirCfg.HomeserverTimeout = true, hs.URL, 500*time.Millisecond
	if mutate != nil {
		mutate(&dirCfg)
	}
	if errs := dirCfg.Validate(&ldapCfg, cfg.Outbound); len(errs) > 0 {
		t.Fatalf("[directory]: %v", errs)
	}
	e := &dirEnv{hs: hs, metrics: NewMetrics(nil)}
	e.testEnv = startTestEnv(t, cfg, store, func(deps *Deps) {
		svc, err := lookup.New(lookup.DefaultConfig(), ldapCfg, lookup.DefaultDNSConfig(), nil,
			lookup.Deps{Store: store, Logger: deps.Logger, Now: deps.Now, Directory: dirCfg})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
		e.lookup = svc
		e.metrics.SetDirectoryEntries(svc.Search.Len)
		deps.Lookup, deps.Bindings, deps.Metrics = svc, svc.Index, e.metrics
	})
	return e
}

const searchPath = "/_matrix/client/v3/user_directory/search"

// search asks the user directory search with token.
func (e *dirEnv) search(t *testing.T, body any, token string) *response {
	t.Helper()
	e.t = t
	return e.request(http.MethodPost, searchPath, body, token)
}

// searchResults is a search's answer, decoded strictly.
type searchResults struct {
	Results []map[string]any `json:"results"`
	Limited bool             `json:"limited"`
}

func decodeResults(t *testing.T, r *response) searchResults {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("search: %d %s", r.status, r.raw)
	}
	var out searchResults
	if err := json.Unmarshal(r.raw, &out); err != nil {
		t.Fatalf("search answer %s: %v", r.raw, err)
	}
	return out
}

// userIDs lists the results' user IDs, with (avatar) after the
// homeserver's.
func (s searchResults) userIDs() string {
	var out []string
	for _, r := range s.Results {
		id := fmt.Sprint(r["user_id"])
		if _, ok := r["avatar_url"]; ok {
			id += "(avatar)"
		}
		out = append(out, id)
	}
	return strings.Join(out, " ")
}

// Searching "ali acc" finds Alice from accounting, who has never talked to
// anyone on Matrix, after the homeserver's own results; one entry per user
// ID (the homeserver's winning); limit and limited across both; the r0
// path too.
func TestDirectorySearch(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	onEachBackend(t, func(t *testing.T, b backend) {
		e := newDirEnv(t, d, b, nil)
		got := decodeResults(t, e.search(t, map[string]any{"search_term": "ali acc"}, goodToken))
		if got.userIDs() != "@alicia:example.org(avatar) @alice.martin:example.org" || got.Limited {
			t.Errorf(`"ali acc": %s limited=%v`, got.userIDs(), got.Limited)
		}
		if alice := got.Results[len(got.Results)-1]; alice["display_name"] != "Alice Martin (Accounting)" || len(alice) != 2 {
			t.Errorf("Alice: %v, want her user ID and display name only", alice)
		}
		got = decodeResults(t, e.search(t, map[string]any{"search_term": "xavier"}, goodToken))
		if got.userIDs() != "@xq1:example.org(avatar) @xq2:example.org" || got.Results[0]["display_name"] != "Xavier Q. (on Matrix)" {
			t.Errorf(`"xavier": the homeserver's entry wins: %v`, got.Results)
		}
		got = decodeResults(t, e.search(t, map[string]any{"search_term": "ÉLO dupont-mull"}, goodToken))
		if got.userIDs() != "@elodie:example.org" {
			t.Errorf("accents and case aside: %s", got.userIDs())
		}
		for _, c := range []struct {
			body    map[string]any
			n       int
			limited bool
		}{
			{map[string]any{"search_term": "łukasz"}, 10, true},
			{map[string]any{"search_term": "łukasz", "limit": 3}, 3, true},
			{map[string]any{"search_term": "łukasz", "limit": 500}, 50, true},
			{map[string]any{"search_term": "łukasz", "limit": 0}, 0, true},
			{map[string]any{"search_term": "xavier", "limit": 1}, 1, true},
			{map[string]any{"search_term": "xavier", "limit": 2}, 2, false},
			{map[string]any{"search_term": "nobody-at-all"}, 0, false},
		} {
			got := decodeResults(t, e.search(t, c.body, goodToken))
			if len(got.Results) != c.n || got.Limited != c.limited {
				t.Errorf("%v: %d results, limited %v; want %d, %v", c.body, len(got.Results), got.Limited, c.n, c.limited)
			}
		}
		r0 := decodeResults(t, e.request(http.MethodPost, "/_matrix/client/r0/user_directory/search", map[string]any{"search_term": "ali acc"}, goodToken))
		if r0.userIDs() != "@alicia:example.org(avatar) @alice.martin:example.org" || e.hs.lastPath() != "/_matrix/client/r0/user_directory/search" {
			t.Errorf("r0: %s, the homeserver was asked at %s", r0.userIDs(), e.hs.lastPath())
		}
		// Bad requests, with a good token.
		e.search(t, map[string]any{"limit": 3}, goodToken).expect(t, "no search_term", 400, "M_MISSING_PARAMS")
		e.search(t, map[string]any{"search_term": 7}, goodToken).expect(t, "a number as search_term", 400, "M_INVALID_PARAM")
		e.search(t, map[string]any{"search_term": "a", "limit": -1}, goodToken).expect(t, "a negative limit", 400, "M_INVALID_PARAM")
		e.search(t, map[string]any{"search_term": "a", "limit": "5"}, goodToken).expect(t, "a string limit", 400, "M_INVALID_PARAM")
		e.search(t, map[string]any{"search_term": "a", "limit": 2.5}, goodToken).expect(t, "a fractional limit", 400, "M_INVALID_PARAM")
		e.search(t, map[string]any{"search_term": strings.Repeat("a", 1001)}, goodToken).expect(t, "a huge term", 400, "M_INVALID_PARAM")
		e.search(t, "not json", goodToken).expect(t, "not JSON", 400, "M_NOT_JSON")
		e.search(t, `{"search_term":"a","search_term":"b"}`, goodToken).expect(t, "a duplicate key", 400, "M_BAD_JSON")
		e.request(http.MethodGet, searchPath, nil, goodToken).expect(t, "GET", 405, "M_UNRECOGNIZED")
	})
}

// Only the homeserver's users may search: its 401 and 403 are passed back
// unchanged, for a wrong token, no token, or a token revoked since whoami
// accepted it; a guest may not search; a homeserver that cannot check the
// token is 502 and nothing is searched. Accepted tokens are remembered for
// whoami_cache, by hash.
func TestDirectorySearchAuth(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	e := newDirEnv(t, d, backends[0], nil)
	direct := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, e.hs.URL+"/_matrix/client/v3/account/whoami", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, token := range []string{"wrong", ""} {
		r := e.search(t, map[string]any{"search_term": "ali acc"}, token)
		status, body := direct(token)
		if r.status != status || string(r.raw) != body || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("token %q: %d %s; the homeserver says %d %s", token, r.status, r.raw, status, body)
		}
	}
	// The deprecated query parameter is a token too.
	r := e.request(http.MethodPost, searchPath+"?access_token=wrong", map[string]any{"search_term": "ali"}, "")
	if r.status != 401 || string(r.raw) != hsUnknownToken {
		t.Errorf("?access_token=wrong: %d %s", r.status, r.raw)
	}
	e.search(t, map[string]any{"search_term": "ali"}, "guest").expect(t, "a guest", 403, "M_GUEST_ACCESS_FORBIDDEN")
	e.search(t, map[string]any{"search_term": "ali"}, strings.Repeat("x", 9000)).expect(t, "an absurd token", 401, "M_UNKNOWN_TOKEN")
	if e.hs.searches.Load() != 0 {
		t.Errorf("the homeserver was searched %d times for refused tokens", e.hs.searches.Load())
	}

	// whoami once per token per whoami_cache.
	before := e.hs.whoami.Load()
	for range 3 {
		decodeResults(t, e.search(t, map[string]any{"search_term": "ali"}, goodToken))
	}
	if n := e.hs.whoami.Load() - before; n != 1 {
		t.Errorf("whoami asked %d times for three searches, want once", n)
	}
	e.clock.Advance(61 * time.Second)
	decodeResults(t, e.search(t, map[string]any{"search_term": "ali"}, goodToken))
	if n := e.hs.whoami.Load() - before; n != 2 {
		t.Errorf("whoami asked %d times after the cache expired, want 2", n)
	}
	// Revoked since: the homeserver's search refuses it, and so does mxid.
	e.hs.mode.Store("401")
	if r := e.search(t, map[string]any{"search_term": "ali acc"}, goodToken); r.status != 401 || string(r.raw) != hsUnknownToken {
		t.Errorf("a token the homeserver's search refuses: %d %s", r.status, r.raw)
	}
	e.hs.mode.Store("ok")
	// The homeserver cannot say: no search.
	e.hs.whoamiDown.Store(true)
	e.search(t, map[string]any{"search_term": "ali acc"}, "other").expect(t, "whoami failing", 502, "M_UNKNOWN")
	if strings.Contains(e.logs(), goodToken) {
		t.Error("a token was logged")
	}
}

// A homeserver whose search fails after its whoami accepted the token (an
// error, an answer that is no search result, no answer in time): the
// directory's results alone, and the log says why.
func TestDirectorySearchHomeserverFails(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	e := newDirEnv(t, d, backends[0], nil)
	for _, mode := range []string{"500", "garbage", "hang"} {
		e.hs.mode.Store(mode)
		got := decodeResults(t, e.search(t, map[string]any{"search_term": "ali acc"}, goodToken))
		if got.userIDs() != "@alice.martin:example.org" || got.Limited {
			t.Errorf("homeserver %s: %s limited=%v", mode, got.userIDs(), got.Limited)
		}
	}
	if n := strings.Count(e.logs(), "the homeserver's own search failed after it accepted the token; answering from the directory alone"); n != 3 {
		t.Errorf("logged %d times, want 3:\n%s", n, e.logs())
	}
	for _, why := range []string{"HTTP status 500", "not a search result", "deadline exceeded"} {
		if !strings.Contains(e.logs(), why) {
			t.Errorf("the log does not say %q", why)
		}
	}
}

// No response ever carries an attribute other than the Matrix ID and the
// display name: not the addresses in mail and mobile, not those planted in
// displayName, description and title, not a local binding.
func TestDirectorySearchRevealsNoAddress(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	onEachBackend(t, func(t *testing.T, b backend) {
		store := b.open(t)
		e := newDirEnvOn(t, d, store, newClientHomeserver(t), func(c *lookup.DirectoryConfig) {
			c.RatePerUser.Burst, c.RatePerIP.Burst = 0, 0 // many searches
		})
		e.sync(t)
		if _, err := store.PutBinding(db.Binding{Medium: "email", Address: "hidden@mail.example.com", MXID: "@hidden.binding:example.org", TS: 1}); err != nil {
			t.Fatal(err)
		}
		terms := []string{"hidden", "binding", "mail", "example", "com", "private", "home", "phone", "call", "44", "7946", "0101",
			"7700", "900123", "leaky", "leaky person", "phoney", "alice", "ali acc", "martin", "colleague0001", "@", ".", "+44"}
		for c := 'a'; c <= 'z'; c++ {
			terms = append(terms, string(c))
		}
		leak := regexp.MustCompile(`mail\.example\.com|private|home|[Pp]hone [+]|7946|7700|900123|hidden`)
		seen := 0
		for _, term := range terms {
			for _, limit := range []int{10, 50} {
				r := e.search(t, map[string]any{"search_term": term, "limit": limit}, goodToken)
				if m := leak.Find(r.raw); m != nil {
					t.Errorf("search %q: the answer holds %q: %s", term, m, r.raw)
				}
				for _, res := range decodeResults(t, r).Results {
					seen++
					for k := range res {
						if k != "user_id" && k != "display_name" && k != "avatar_url" {
							t.Errorf("search %q: a result with %q: %v", term, k, res)
						}
					}
					if _, ok := res["avatar_url"]; !ok && len(res) > 2 {
						t.Errorf("search %q: a directory result with more than a user ID and a name: %v", term, res)
					}
				}
			}
		}
		if seen < 500 {
			t.Errorf("only %d results seen: the check saw too little", seen)
		}
		got := decodeResults(t, e.search(t, map[string]any{"search_term": "leaky"}, goodToken))
		if len(got.Results) != 1 || got.Results[0]["display_name"] != "leaky" {
			t.Errorf("an address in displayName: %v, want cn's first value", got.Results)
		}
	})
}

// Searches are rate-limited per user (from whoami) and per client IP.
func TestDirectorySearchRateLimits(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	e := newDirEnv(t, d, backends[0], func(c *lookup.DirectoryConfig) {
		c.RatePerUser = lookup.Rate{Burst: 2, Every: time.Minute}
		c.RatePerIP = lookup.Rate{Burst: 4, Every: time.Minute} // the refused third search counts too
	})
	body := map[string]any{"search_term": "ali"}
	decodeResults(t, e.search(t, body, goodToken))
	decodeResults(t, e.search(t, body, goodToken))
	r := e.search(t, body, goodToken)
	r.expect(t, "the user's third search", 429, "M_LIMIT_EXCEEDED")
	if !strings.Contains(fmt.Sprint(r.body["error"]), "directory.rate_per_user") {
		t.Errorf("the refusal names no setting: %s", r.raw)
	}
	decodeResults(t, e.search(t, body, "other")) // the IP's fourth
	r = e.search(t, body, "other")
	r.expect(t, "the IP's fifth search", 429, "M_LIMIT_EXCEEDED")
	if !strings.Contains(fmt.Sprint(r.body["error"]), "directory.rate_per_ip") {
		t.Errorf("the refusal names no setting: %s", r.raw)
	}
	e.clock.Advance(2 * time.Minute)
	decodeResults(t, e.search(t, body, goodToken))
}

// Metrics count searches by outcome and their results by source.
func TestDirectorySearchMetrics(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	e := newDirEnv(t, d, backends[0], nil)
	decodeResults(t, e.search(t, map[string]any{"search_term": "ali acc"}, goodToken))
	decodeResults(t, e.search(t, map[string]any{"search_term": "xavier"}, goodToken))
	e.search(t, map[string]any{"search_term": "ali acc"}, "wrong")
	e.hs.mode.Store("500")
	decodeResults(t, e.search(t, map[string]any{"search_term": "ali acc"}, goodToken))
	rec := httptest.NewRecorder()
	e.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`mxid_directory_searches_total{outcome="merged"} 2`,
		`mxid_directory_searches_total{outcome="directory_only"} 1`,
		`mxid_directory_searches_total{outcome="refused"} 1`,
		`mxid_directory_results_total{source="homeserver"} 2`,
		`mxid_directory_results_total{source="directory"} 3`,
		fmt.Sprintf("mxid_directory_entries %d", 6+dirColleagues),
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Without [directory] enabled the path is unknown.
func TestDirectorySearchOff(t *testing.T) {
	e := newTestEnv(t, nil)
	e.request(http.MethodPost, searchPath, map[string]any{"search_term": "ali"}, goodToken).expect(t, "directory off", 404, "M_UNRECOGNIZED")
}

// Replicas on one PostgreSQL database: the snapshot one of them stores is
// searched by the other once it reloads it (as its change-log follower
// does on a change of kind "directory").
func TestDirectorySearchReplicas(t *testing.T) {
	d := slapdtest.Start(t, dirSeed())
	url := pgtest.New(t)
	open := func() storetest.Store {
		s, err := pg.Open(context.Background(), url, pg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	hs := newClientHomeserver(t)
	first, second := newDirEnvOn(t, d, open(), hs, nil), newDirEnvOn(t, d, open(), hs, nil)
	body := map[string]any{"search_term": "ali acc"}
	if got := decodeResults(t, second.search(t, body, goodToken)); got.userIDs() != "@alicia:example.org(avatar)" {
		t.Errorf("before any sync: %s", got.userIDs())
	}
	first.sync(t)
	if got := decodeResults(t, second.search(t, body, goodToken)); got.userIDs() != "@alicia:example.org(avatar)" {
		t.Errorf("the other replica's sync, not reloaded yet: %s", got.userIDs())
	}
	if err := second.lookup.DirectoryChanged(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*dirEnv{first, second} {
		if got := decodeResults(t, e.search(t, body, goodToken)); got.userIDs() != "@alicia:example.org(avatar) @alice.martin:example.org" {
			t.Errorf("after the reload: %s", got.userIDs())
		}
	}
}

// The homeserver's search answer (outside input): no panic; only results
// with a valid user ID, and only the spec's fields, are kept.
func FuzzHomeserverResults(f *testing.F) {
	for _, s := range []string{
		`{"results":[{"user_id":"@a:example.org","display_name":"A","avatar_url":"mxc://x/y","email":"a@b.c"}],"limited":true}`,
		`{"results":[{"user_id":"not an id"},{"user_id":7},null,{"user_id":"@b:example.org","display_name":null}]}`,
		`{"results":{}}`, `[]`, `null`, `<html>`, `{"results":[],"limited":"yes"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := parseHomeserverResults(body)
		if err != nil {
			return
		}
		for _, r := range res.Results {
			if !matrixid.ValidUserID(r.UserID) {
				t.Fatalf("kept %q", r.UserID)
			}
		}
		raw, _ := json.Marshal(res)
		again, err := parseHomeserverResults(raw)
		if err != nil || !slices.Equal(again.Results, res.Results) || again.Limited != res.Limited {
			t.Fatalf("round trip: %+v, then %+v (%v)", res, again, err)
		}
	})
}
