// Package server is mxid's HTTP API: every route (routes.go), the handlers by
// area, the one Matrix error type, the strict JSON body decoder,
// authentication and terms, CORS, rate limits and the request log, TLS
// termination (tls.go, the only user of certmagic), Prometheus metrics
// (metrics.go, the only user of prometheus), the admin socket (admin.go)
// with the operator's tools behind it (admin_actions.go: mxid admin), the
// audit log and the retention sweeps (audit.go), and the client-server
// API's user directory search (directory.go), which
// the homeserver's reverse proxy routes to mxid.
// Its sub-packages hold the signing keys and canonical JSON (signing), the
// outbound request policy (outbound) and the client side of federation
// (federation).
//
// It may import db, lookup, mail and web; nothing imports server except main.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"mxid/db"
	"mxid/lookup"
	"mxid/mail"
	"mxid/server/federation"
	"mxid/server/outbound"
	"mxid/server/signing"
)

// Deps are the server's collaborators, built by main.
type Deps struct {
	Store  Store
	Key    *signing.Key
	Policy *outbound.Policy
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Tests inject one.
	Now func() time.Time
	// Bindings, when set, is told about every change to the local
	// bindings after it is committed (the lookup hash index keeps up
	// through it).
	Bindings BindingListener
	// InviteMail sends invite emails; without it store-invite answers
	// M_EMAIL_SEND_ERROR.
	InviteMail InviteMailer
	// Metrics, when set, counts requests (and is what the metrics
	// listener serves).
	Metrics *Metrics
	// Mail delivers verification emails and SMS and renders the
	// submitToken pages; nil means the embedded default (log mode).
	Mail *mail.Sender
	// Lookup answers lookups (hash index, cascade). nil builds a
	// local-only one over Store (tests of other areas).
	Lookup *lookup.Service
	// Ready, when set, is asked by GET /health/ready besides the store: an
	// error (saying why) makes this replica not ready.
	Ready func() error
	// Budgets keeps the limits that protect other people (mails, SMS,
	// invites). nil: the Store's when it keeps them (PostgreSQL, shared
	// by the replicas), else this process's memory.
	Budgets Budgets
	// RunOnce, when set (several replicas share the store), is handed the
	// background jobs only one replica may run, the sweeps of expired
	// sessions and invites, by Start, which then runs only the onbind
	// deliveries (every replica delivers; the store's claims give each job
	// to one). The caller runs each job while this replica leads and waits
	// for them before closing the store. nil: Start runs them itself.
	RunOnce func(name string, job func(ctx context.Context))
}

// BindingListener follows changes to the local bindings. Addresses are
// canonical.
type BindingListener interface {
	Bound(medium, address, mxid string)
	Unbound(medium, address string)
}

// bindingListeners tells each of its listeners, in order.
type bindingListeners []BindingListener

func (ls bindingListeners) Bound(medium, address, mxid string) {
	for _, l := range ls {
		l.Bound(medium, address, mxid)
	}
}

func (ls bindingListeners) Unbound(medium, address string) {
	for _, l := range ls {
		l.Unbound(medium, address)
	}
}

// Server is the identity server's HTTP side.
type Server struct {
	cfg     Config
	store   Store
	key     *signing.Key
	policy  *outbound.Policy
	fed     *federation.Resolver
	log     *slog.Logger
	now     func() time.Time
	proxies []netip.Prefix
	binds   BindingListener

	inviteMail      InviteMailer
	inviteLimit     budget
	inviteAddrLimit budget
	budgets         Budgets
	onbind          delivery
	metrics         *Metrics
	mail            *mail.Sender
	limits          *limits
	keys            *federation.KeyCache
	lk              *lookupAPI
	dir             *directoryAPI // nil unless [directory] is enabled
	ready           func() error
	runOnce         func(name string, job func(ctx context.Context))
	// authMemory remembers the accounts of tokens that recently passed
	// authentication with the terms. For authCacheTTL it answers instead
	// of the database, so that lookups never wait for it; when the
	// database does not answer, for authMemoryTTL, so that during an outage
	// a replica goes on answering what it can from memory (hashed lookups,
	// hash_details) for users active in the last hour (anything that
	// writes fails with 503 anyway). Removed tokens are forgotten: by
	// logout here, through the change log on other replicas.
	authMemory *tokenCache[db.Account]
	admin      *Admin
	mux        *http.ServeMux
	handler    http.Handler
}

// New builds the server from a validated configuration.
func New(cfg Config, d Deps) (*Server, error) {
	if d.Store == nil || d.Key == nil || d.Policy == nil {
		return nil, errors.New("server: store, key and policy are required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Budgets == nil {
		d.Budgets, _ = d.Store.(Budgets)
	}
	if d.Budgets == nil {
		d.Budgets = newMemoryBudgets()
	}
	if d.Mail == nil {
		m, err := mail.New(mail.DefaultEmailConfig(), mail.DefaultSMSConfig(), mail.Options{Logger: d.Logger, Now: d.Now})
		if err != nil {
			return nil, err
		}
		d.Mail = m
	}
	s := &Server{
		cfg:    cfg,
		store:  d.Store,
		key:    d.Key,
		policy: d.Policy,
		fed:    federation.NewResolver(d.Policy, d.Now),
		log:    d.Logger,
		now:    d.Now,
		mux:    http.NewServeMux(),
		binds:  d.Bindings,

		inviteMail:      d.InviteMail,
		inviteLimit:     budget{cfg.Invites.RateLimit, budgetInvites, "invites from this sender"},
		inviteAddrLimit: budget{cfg.Invites.AddressRateLimit, budgetInviteAddress, "invites to this address"},
		budgets:         d.Budgets,
		onbind:          delivery{kick: make(chan struct{}, 1)},
		metrics:         d.Metrics,
		mail:            d.Mail,
		limits:          newLimits(cfg.RateLimit, d.Now),
		ready:           d.Ready,
		runOnce:         d.RunOnce,
		authMemory:      newTokenCache[db.Account](d.Now, authMemoryTTL),
	}
	s.keys = federation.NewKeyCache(s.fed, d.Now)
	lk, listener, err := newLookupAPI(d.Lookup, d)
	if err != nil {
		return nil, err
	}
	s.lk = lk
	if s.dir, err = newDirectoryAPI(lk.svc, d.Policy, d.Now); err != nil {
		return nil, err
	}
	switch {
	case listener == nil: // main's lookup service: Deps.Bindings keeps its index in step
	case s.binds == nil:
		s.binds = listener
	default: // a local-only index and a caller's listener both follow
		s.binds = bindingListeners{s.binds, listener}
	}
	s.admin = NewAdmin(AdminDeps{Store: d.Store, Now: d.Now, Logger: d.Logger, Metrics: d.Metrics, Bindings: s.binds, Budgets: s.budgets})
	s.admin.forgetUser = func(mxid string) {
		s.authMemory.forgetIf(func(a db.Account) bool { return a.UserID == mxid })
	}
	s.admin.index = func() lookupIndexStats {
		st := s.lk.svc.Index.Stats()
		return lookupIndexStats{entries: st.Entries, pepperAge: st.PepperAge}
	}
	for _, p := range cfg.HTTP.TrustedProxies {
		pfx, err := parsePrefixOrAddr(p)
		if err != nil {
			return nil, fmt.Errorf("http.trusted_proxies: %w", err)
		}
		s.proxies = append(s.proxies, pfx)
	}
	s.routes()
	s.handler = s.recoverPanics(s.logRequests(s.observe(s.cors(http.HandlerFunc(s.dispatch)))))
	return s, nil
}

// Handler is the whole HTTP API with its middleware.
func (s *Server) Handler() http.Handler { return s.handler }

// HTTPServer returns an http.Server for the API with mxid's timeouts.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.HTTP.ReadTimeout,
		WriteTimeout:      s.cfg.HTTP.WriteTimeout,
		IdleTimeout:       s.cfg.HTTP.IdleTimeout,
		// Large enough that an absurd access token (security.md row 32)
		// reaches authentication and gets a JSON 401, small enough to bound
		// each connection's header memory.
		MaxHeaderBytes: 128 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Serve serves the API on ln until ctx ends, then shuts down gracefully
// within the configured shutdown timeout.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.ServeAll(ctx, Listeners{API: ln})
}

// ServeAll serves every listener that is set until ctx ends or one of them
// fails, then shuts all of them down gracefully together, within the
// configured shutdown timeout. It returns the first failure, if any.
func (s *Server) ServeAll(ctx context.Context, l Listeners) error {
	type unit struct {
		name string
		srv  *http.Server
		ln   net.Listener
	}
	units := []unit{{"api", s.HTTPServer(), l.API}}
	if l.HTTP != nil {
		units = append(units, unit{"http", s.sideServer(l.HTTPHandler), l.HTTP})
	}
	if l.Metrics != nil {
		units = append(units, unit{"metrics", s.sideServer(s.metrics.Handler()), l.Metrics})
	}
	if l.Admin != nil {
		units = append(units, unit{"admin", s.adminServer(), l.Admin})
	}
	errc := make(chan error, len(units))
	for _, u := range units {
		go func() {
			err := u.srv.Serve(u.ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			} else if err != nil {
				err = fmt.Errorf("%s listener %s: %w", u.name, u.ln.Addr(), err)
			}
			errc <- err
		}()
	}
	var first error
	pending := len(units)
	select {
	case first = <-errc:
		pending--
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.HTTP.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, u := range units {
		wg.Go(func() {
			if err := u.srv.Shutdown(sctx); err != nil {
				s.log.Warn("shutdown: closing connections still open", "listener", u.name, "err", err)
				u.srv.Close()
			}
		})
	}
	wg.Wait()
	for ; pending > 0; pending-- {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// sideServer is an http.Server for a listener beside the API (the
// plain-HTTP redirect, metrics): mxid's timeouts, its own handler.
func (s *Server) sideServer(h http.Handler) *http.Server {
	srv := s.HTTPServer()
	srv.Handler = h
	return srv
}

// apiFunc is a handler that returns its error for the adapter to write.
type apiFunc func(w http.ResponseWriter, r *http.Request) error

// authMode says what a route needs from the caller.
type authMode int

const (
	public        authMode = iota // no token
	authed                        // token and every current policy accepted
	authedNoTerms                 // token only (POST /terms, logout)
	// optionalAuth checks a token (and terms) when one is sent and lets
	// requests without one through: unbind, which homeservers call signed
	// with X-Matrix and no identity-server token.
	optionalAuth
)

type ctxKey int

const (
	ctxAccount ctxKey = iota
	ctxRequestID
)

// handle registers pattern (a Go 1.22 ServeMux pattern with its method).
func (s *Server) handle(pattern string, mode authMode, fn apiFunc) {
	s.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mode != public && (mode != optionalAuth || accessToken(r) != "") {
			acct, err := s.authenticate(r, mode != authedNoTerms)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), ctxAccount, acct))
		}
		if err := fn(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}))
}

// account is the authenticated caller of an authed route.
func account(r *http.Request) db.Account {
	a, _ := r.Context().Value(ctxAccount).(db.Account)
	return a
}

// dispatch answers unknown paths with 404 and known paths with a wrong method
// with 405, both M_UNRECOGNIZED in JSON, and hands the rest to the mux.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) {
	if h, pattern := s.mux.Handler(r); pattern == "" {
		probe := &statusProbe{header: http.Header{}}
		h.ServeHTTP(probe, r)
		if probe.status == http.StatusMethodNotAllowed {
			if allow := probe.header.Get("Allow"); allow != "" {
				w.Header().Set("Allow", allow)
			}
			s.writeError(w, r, errMethod())
			return
		}
		s.writeError(w, r, errUnrecognized())
		return
	}
	s.mux.ServeHTTP(w, r)
}

// statusProbe records what ServeMux's own 404/405 handler would write.
type statusProbe struct {
	header http.Header
	status int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(code int)        { p.status = code }

// writeJSON writes v as a JSON response.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

// writeError writes err as a Matrix error and logs it once.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := asError(err)
	s.logError(r, e)
	if e.Code == "M_LIMIT_EXCEEDED" || e.Status == http.StatusServiceUnavailable {
		if ms, ok := e.Extra["retry_after_ms"].(int64); ok {
			w.Header().Set("Retry-After", fmt.Sprint((ms+999)/1000))
		}
	}
	writeJSON(w, e.Status, e.body())
}

// logError logs an error answer with why it was given: a 5xx at error
// level; a refusal (4xx) with its errcode and message at debug level, or at
// info level when it has a cause worth an operator's eye or comes from a
// trusted caller (a homeserver, whose own log only says that the identity
// server refused). Messages name fields, never their values.
func (s *Server) logError(r *http.Request, e *Error) {
	attrs := []any{"request_id", requestID(r), "method", r.Method, "path", r.URL.Path, "status", e.Status, "errcode", e.Code, "error", e.Message}
	if e.Cause != nil {
		attrs = append(attrs, "cause", e.Cause)
	}
	if errors.Is(e.Cause, db.ErrUnavailable) {
		s.log.Warn("request failed: the database is not available", attrs...)
		return
	}
	if e.Status >= 500 {
		s.log.Error("request failed", attrs...)
		return
	}
	level := slog.LevelDebug
	if trusted := s.trustedCaller(r); trusted || e.Cause != nil {
		level = slog.LevelInfo
		attrs = append(attrs, "client", s.clientIP(r).String(), "trusted_caller", trusted)
	}
	s.log.Log(r.Context(), level, "request refused", attrs...)
}

// cors adds the spec's CORS headers to every response and answers
// pre-flight requests.
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Origin, X-Requested-With, Content-Type, Accept, Authorization")
		if r.Method == http.MethodOptions {
			writeJSON(w, http.StatusOK, struct{}{})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// recoverPanics turns a panic into 500 M_UNKNOWN without internals.
func (s *Server) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "request_id", requestID(r), "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, map[string]string{"errcode": "M_UNKNOWN", "error": "Internal server error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// statusWriter remembers the status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests gives every request an id (X-Request-Id) and logs one line per
// request: never the query string, which may hold tokens and secrets.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var b [8]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		w.Header().Set("X-Request-Id", id)
		r = r.WithContext(context.WithValue(r.Context(), ctxRequestID, id))
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		s.log.Info("request", "request_id", id, "method", r.Method, "path", r.URL.Path, "status", status,
			"bytes", sw.bytes, "duration_ms", float64(time.Since(start).Microseconds())/1000, "client", s.clientIP(r).String())
	})
}

func requestID(r *http.Request) string {
	id, _ := r.Context().Value(ctxRequestID).(string)
	return id
}

// clientIP is the peer address, or, when the peer is a trusted proxy, the
// right-most address in X-Forwarded-For that is not itself a trusted proxy.
func (s *Server) clientIP(r *http.Request) netip.Addr {
	peer := remoteAddr(r)
	if !s.trustedProxy(peer) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return peer // a malformed hop: trust nothing beyond the proxy
		}
		a = a.Unmap()
		if !s.trustedProxy(a) {
			return a
		}
	}
	return peer
}

func (s *Server) trustedProxy(a netip.Addr) bool {
	for _, p := range s.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
