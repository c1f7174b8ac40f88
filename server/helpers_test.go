package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/db/storetest"
	"mxid/server/outbound"
	"mxid/server/signing"
)

// A backend opens a fresh, empty store for a test, closed when it ends.
type backend struct {
	name string
	open func(t testing.TB) storetest.Store
}

// backends are the storage backends server flows run on: bbolt (a file in
// t.TempDir()) and PostgreSQL (a new database on pgtest's server; skipped
// when PostgreSQL is not installed, failed under CI=true).
var backends = []backend{{"bbolt", openBolt}, {"postgres", openPostgres}}

func openBolt(t testing.TB) storetest.Store {
	t.Helper()
	store, err := db.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

func openPostgres(t testing.TB) storetest.Store {
	t.Helper()
	return openPG(t, pgtest.New(t), pg.Options{})
}

// onEachBackend runs a flow test once per backend, as subtests.
func onEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

func TestMain(m *testing.M) { pgtest.Main(m) }

// testEnv is a real mxid server over real HTTP, with its own store.
type testEnv struct {
	t     *testing.T
	srv   *Server
	http  *httptest.Server
	store storetest.Store
	key   *signing.Key
	clock *manualClock
	log   *syncBuffer
}

// logs is what the server logged so far.
func (e *testEnv) logs() string { return e.log.String() }

// newTestEnv starts a server with the default configuration changed by
// mutate (may be nil).
func newTestEnv(t *testing.T, mutate func(*Config)) *testEnv {
	t.Helper()
	return newTestEnvOn(t, backends[0], mutate)
}

// newTestEnvOn is newTestEnv on the store of backend b.
func newTestEnvOn(t *testing.T, b backend, mutate func(*Config)) *testEnv {
	t.Helper()
	cfg := DefaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("test config invalid: %v", errs)
	}
	return startTestEnv(t, cfg, b.open(t), nil)
}

// startTestEnv starts a server with cfg on store over real HTTP, with a
// manual clock and a debug log; more, when set, adds to its Deps (Now and
// Logger are set when it runs).
func startTestEnv(t testing.TB, cfg Config, store storetest.Store, more func(*Deps)) *testEnv {
	t.Helper()
	key, err := signing.NewKey(signing.LongTermKeyID)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := outbound.New(cfg.Outbound)
	if err != nil {
		t.Fatal(err)
	}
	clock := &manualClock{t: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	logBuf := &syncBuffer{}
	deps := Deps{Store: store, Key: key, Policy: policy, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if more != nil {
		more(&deps)
	}
	srv, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = srv.HTTPServer() // mxid's own limits and timeouts
	hs.Start()
	t.Cleanup(hs.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", logBuf.String())
		}
	})
	env := &testEnv{srv: srv, http: hs, store: store, key: key, clock: clock, log: logBuf}
	if tt, ok := t.(*testing.T); ok {
		env.t = tt
	}
	return env
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r *response) errcode() string {
	s, _ := r.body["errcode"].(string)
	return s
}

// request sends method path with body (a string sent as is, or a value
// marshalled to JSON; nil for none) and the bearer token if not empty.
func (e *testEnv) request(method, path string, body any, token string) *response {
	e.t.Helper()
	rd := requestBody(e.t, body)
	req, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return e.send(req)
}

func (e *testEnv) send(req *http.Request) *response {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	r := &response{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			e.t.Fatalf("%s %s: response is not a JSON object: %s", req.Method, req.URL.Path, raw)
		}
	}
	return r
}

// expect checks status and errcode ("" for a success without one).
func (r *response) expect(t *testing.T, what string, status int, errcode string) {
	t.Helper()
	if r.status != status || r.errcode() != errcode {
		t.Errorf("%s: got %d %q (%s), want %d %q", what, r.status, r.errcode(), truncate(string(r.raw), 300), status, errcode)
	}
	if r.status >= 400 {
		if _, ok := r.body["error"].(string); !ok {
			t.Errorf("%s: error response without an \"error\" string: %s", what, r.raw)
		}
	}
	if ct := r.header.Get("Content-Type"); r.status != http.StatusFound && !strings.HasPrefix(ct, "application/json") && !strings.HasPrefix(ct, "text/html") {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
}

// register makes an account for userID directly in the store and returns
// its token (for tests of other endpoints; register itself is tested
// against a fake homeserver).
func (e *testEnv) register(userID string) string {
	e.t.Helper()
	tok := randomString(accessTokenLen, alphanumeric)
	if err := e.store.CreateAccountToken(tok, userID, e.clock.Now()); err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func ioPipe() (*io.PipeReader, *io.PipeWriter) { return io.Pipe() }

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// requestBody is a test request's body: nil for none, a string or []byte
// sent as is, anything else encoded as JSON.
func requestBody(t testing.TB, body any) io.Reader {
	t.Helper()
	switch b := body.(type) {
	case nil:
		return nil
	case string:
		return strings.NewReader(b)
	case []byte:
		return bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.NewReader(raw)
	}
}
