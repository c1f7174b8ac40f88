package server

// TLS termination: the [tls] section and its three modes. This is the only
// file that imports certmagic (and zap, which certmagic logs through).
//
//	off    plain HTTP on http.listen (behind a reverse proxy, or for tests)
//	acme   certificates from an ACME CA (Let's Encrypt by default), obtained
//	       and renewed by certmagic, stored under data_dir/certmagic, or in
//	       the database replicas share (TLSStore); HTTPS on tls.listen,
//	       HTTP-01 challenges and a redirect to HTTPS on tls.http_listen
//	files  a certificate and key from files, reloaded when they change on
//	       disk (polled) or on SIGHUP; HTTPS on tls.listen, an optional
//	       redirect on tls.http_listen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"mxid/db"
	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// TLS modes.
const (
	TLSOff   = "off"
	TLSACME  = "acme"
	TLSFiles = "files"
)

// ACME challenge types.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

// TLSConfig is the [tls] section: how mxid terminates TLS.
type TLSConfig struct {
	// Mode is off, acme or files.
	Mode string `toml:"mode"`
	// Listen is the HTTPS address (acme and files).
	Listen string `toml:"listen"`
	// HTTPListen is the plain-HTTP address that answers ACME HTTP-01
	// challenges and redirects everything else to public_base_url
	// (acme; optional in files mode, "" for none).
	HTTPListen string `toml:"http_listen"`

	// Domain is the name the certificate is for (acme); empty means
	// public_base_url's host.
	Domain string `toml:"domain"`
	// Email is the ACME account's contact address (acme, optional).
	Email string `toml:"email"`
	// CA is the ACME directory URL (acme).
	CA string `toml:"ca"`
	// CARootsFile is a PEM file of roots trusted for the connection to the
	// CA (a private or test CA) besides the system's (outbound.LoadRoots).
	CARootsFile string `toml:"ca_roots_file"`
	// Challenges are the ACME challenge types offered.
	Challenges []string `toml:"challenges"`

	// CertFile and KeyFile are the PEM certificate chain and key (files).
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// PollInterval is how often the files are checked for changes (files).
	PollInterval time.Duration `toml:"poll_interval"`
}

// DefaultTLSConfig is the [tls] section's defaults: TLS off.
func DefaultTLSConfig() TLSConfig {
	return TLSConfig{
		Mode:         TLSOff,
		Listen:       ":443",
		HTTPListen:   ":80",
		CA:           certmagic.LetsEncryptProductionCA,
		Challenges:   []string{ChallengeHTTP01, ChallengeTLSALPN01},
		PollInterval: 30 * time.Second,
	}
}

// Validate reports every problem in the [tls] section. publicBaseURL is the
// validated top-level public_base_url (acme needs https and its host).
func (c *TLSConfig) Validate(publicBaseURL string) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Mode {
	case TLSOff:
		return nil
	case TLSACME, TLSFiles:
	default:
		add("tls.mode: %q must be off, acme or files", c.Mode)
		return errs
	}
	if !validListen(c.Listen) {
		add("tls.listen: %q must be IP:port like \"0.0.0.0:443\" or \":443\"", c.Listen)
	}
	if c.HTTPListen != "" && !validListen(c.HTTPListen) {
		add("tls.http_listen: %q must be IP:port like \":80\", or empty", c.HTTPListen)
	}
	if c.Mode == TLSFiles {
		if c.CertFile == "" || c.KeyFile == "" {
			add("tls.cert_file and tls.key_file are required when tls.mode is \"files\"")
		} else if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			add("tls.cert_file/tls.key_file: cannot load the certificate and key: %v", err)
		}
		if c.PollInterval < time.Second || c.PollInterval > 24*time.Hour {
			add("tls.poll_interval must be between 1s and 24h, not %v", c.PollInterval)
		}
		return errs
	}
	// acme
	u, err := url.Parse(publicBaseURL)
	if err == nil && u.Scheme != "https" {
		add("public_base_url: %q must start with https:// when tls.mode is \"acme\"", publicBaseURL)
	}
	domain := c.Domain
	if domain == "" && u != nil {
		domain = u.Hostname()
	}
	switch {
	case domain == "":
		add("tls.domain: no domain to get a certificate for (set tls.domain or public_base_url)")
	case !matrixid.ValidDNSName(domain):
		add("tls.domain: %q must be a DNS name like \"id.example.org\" (ACME certificates are for names, not addresses)", domain)
	case c.CA == certmagic.LetsEncryptProductionCA && !certmagic.SubjectQualifiesForPublicCert(domain):
		add("tls.domain: %q cannot get a certificate from a public CA (localhost, .local, .internal and private names do not qualify); use a public name, or tls.ca for a private ACME CA", domain)
	}
	if ca, err := url.Parse(c.CA); err != nil || ca.Scheme != "https" || ca.Host == "" {
		add("tls.ca: %q must be an https:// ACME directory URL", c.CA)
	}
	if c.Email != "" && (!strings.Contains(c.Email, "@") || strings.ContainsAny(c.Email, " \t\r\n<>")) {
		add("tls.email: %q is not an email address", c.Email)
	}
	if c.CARootsFile != "" {
		if _, err := outbound.LoadRoots(c.CARootsFile); err != nil {
			add("tls.ca_roots_file: %v", err)
		}
	}
	if len(c.Challenges) == 0 {
		add("tls.challenges: at least one of %q, %q is required", ChallengeHTTP01, ChallengeTLSALPN01)
	}
	for _, ch := range c.Challenges {
		if ch != ChallengeHTTP01 && ch != ChallengeTLSALPN01 {
			add("tls.challenges: %q is not %q or %q", ch, ChallengeHTTP01, ChallengeTLSALPN01)
		}
	}
	if slices.Contains(c.Challenges, ChallengeHTTP01) && c.HTTPListen == "" {
		add("tls.http_listen is required for the %q challenge (or remove it from tls.challenges)", ChallengeHTTP01)
	}
	return errs
}

// validListen accepts "IP:port" and ":port".
func validListen(s string) bool {
	if _, err := netip.ParseAddrPort(s); err == nil {
		return true
	}
	p, ok := strings.CutPrefix(s, ":")
	if !ok {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}

// TLS is the running TLS mode: it opens the listeners the mode needs and
// keeps the certificate current.
type TLS struct {
	cfg     TLSConfig
	public  *url.URL
	apiAddr string // http.listen, used when the mode is off
	log     *slog.Logger

	// acme
	domain  string
	storage string // where the certificate and the account are kept, for the log
	cache   *certmagic.Cache
	magic   *certmagic.Config
	issuer  *certmagic.ACMEIssuer

	// files
	cert    atomic.Pointer[tls.Certificate]
	mu      sync.Mutex // serialises reloads
	stamps  [2]fileStamp
	stop    chan struct{}
	stopped sync.WaitGroup
	once    sync.Once
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// NewTLS prepares the TLS mode of a validated configuration. The ACME
// storage is shared when set (replicas on PostgreSQL), else dataDir/certmagic.
// In files mode it loads the certificate now, so a bad pair stops mxid at
// start.
func NewTLS(cfg Config, dataDir string, shared TLSStore, log *slog.Logger) (*TLS, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pub, err := url.Parse(cfg.PublicBaseURL)
	if err != nil {
		return nil, fmt.Errorf("public_base_url: %w", err)
	}
	t := &TLS{cfg: cfg.TLS, public: pub, apiAddr: cfg.HTTP.Listen, log: log.With("component", "tls"), stop: make(chan struct{})}
	switch cfg.TLS.Mode {
	case TLSOff:
	case TLSFiles:
		if _, err := t.reload(); err != nil {
			return nil, err
		}
	case TLSACME:
		if err := t.setupACME(dataDir, shared); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("tls.mode: unknown mode %q", cfg.TLS.Mode)
	}
	return t, nil
}

// Mode is the configured mode.
func (t *TLS) Mode() string { return t.cfg.Mode }

func (t *TLS) setupACME(dataDir string, shared TLSStore) error {
	t.domain = t.cfg.Domain
	if t.domain == "" {
		t.domain = t.public.Hostname()
	}
	roots, err := outbound.LoadRoots(t.cfg.CARootsFile)
	if err != nil {
		return fmt.Errorf("tls.ca_roots_file: %w", err)
	}
	zl := zap.New(slogCore{h: t.log.Handler()}).Named("certmagic")
	var magic *certmagic.Config
	t.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:           zl,
	})
	var storage certmagic.Storage = &certmagic.FileStorage{Path: filepath.Join(dataDir, "certmagic")}
	t.storage = filepath.Join(dataDir, "certmagic")
	if shared != nil {
		storage, t.storage = sharedStorage{shared}, "the database ("+shared.Path()+")"
	}
	magic = certmagic.New(t.cache, certmagic.Config{
		Storage:           storage,
		DefaultServerName: t.domain, // clients that send no SNI (by IP) still get the certificate
		Logger:            zl,
	})
	iss := certmagic.ACMEIssuer{
		CA:                      t.cfg.CA,
		TestCA:                  t.cfg.CA, // never fall back to Let's Encrypt staging on retries
		Email:                   t.cfg.Email,
		Agreed:                  true,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    !slices.Contains(t.cfg.Challenges, ChallengeHTTP01),
		DisableTLSALPNChallenge: !slices.Contains(t.cfg.Challenges, ChallengeTLSALPN01),
		Logger:                  zl,
	}
	// certmagic answers challenges on our own listeners: point its solvers
	// at the same addresses, so it finds them in use and never opens its own.
	if host, port, ok := splitListen(t.cfg.Listen); ok {
		iss.ListenHost, iss.AltTLSALPNPort = host, port
	}
	if host, port, ok := splitListen(t.cfg.HTTPListen); ok {
		iss.AltHTTPPort = port
		if iss.ListenHost == "" {
			iss.ListenHost = host
		}
	}
	t.issuer = certmagic.NewACMEIssuer(magic, iss)
	magic.Issuers = []certmagic.Issuer{t.issuer}
	t.magic = magic
	return nil
}

// TLSStore keeps certmagic's data (the ACME account, certificates and
// keys, challenge tokens) where replicas share it, so they get one
// certificate with one account and any of them answers a challenge another
// started (db/pg implements it). Keys are slash-separated paths; a missing
// key is db.ErrNotFound. CertLock and CertUnlock are certmagic's Locker:
// one holder of a name at a time, among all replicas.
type TLSStore interface {
	CertPut(ctx context.Context, key string, value []byte) error
	CertLoad(ctx context.Context, key string) ([]byte, error)
	CertDelete(ctx context.Context, key string) error
	CertList(ctx context.Context, prefix string, recursive bool) ([]string, error)
	CertStat(ctx context.Context, key string) (size, modifiedMS int64, terminal bool, err error)
	CertLock(ctx context.Context, name string) error
	CertUnlock(ctx context.Context, name string) error
	Path() string
}

// sharedStorage is certmagic's Storage over a TLSStore. certmagic expects
// fs.ErrNotExist for what is missing.
type sharedStorage struct{ s TLSStore }

var _ certmagic.Storage = sharedStorage{}

func notExist(key string, err error) error {
	if errors.Is(err, db.ErrNotFound) {
		return fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return err
}

func (a sharedStorage) Lock(ctx context.Context, name string) error { return a.s.CertLock(ctx, name) }

func (a sharedStorage) Unlock(ctx context.Context, name string) error {
	return a.s.CertUnlock(ctx, name)
}

func (a sharedStorage) Store(ctx context.Context, key string, value []byte) error {
	return a.s.CertPut(ctx, key, value)
}

func (a sharedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	v, err := a.s.CertLoad(ctx, key)
	return v, notExist(key, err)
}

func (a sharedStorage) Delete(ctx context.Context, key string) error { return a.s.CertDelete(ctx, key) }

func (a sharedStorage) Exists(ctx context.Context, key string) bool {
	_, _, _, err := a.s.CertStat(ctx, key)
	return err == nil
}

func (a sharedStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	keys, err := a.s.CertList(ctx, prefix, recursive)
	return keys, notExist(prefix, err)
}

func (a sharedStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	size, modified, terminal, err := a.s.CertStat(ctx, key)
	if err != nil {
		return certmagic.KeyInfo{}, notExist(key, err)
	}
	info := certmagic.KeyInfo{Key: key, Size: size, IsTerminal: terminal}
	if terminal {
		info.Modified = time.UnixMilli(modified)
	}
	return info, nil
}

// String names the storage in certmagic's log lines.
func (a sharedStorage) String() string { return "mxid database " + a.s.Path() }

// listen opens a TCP listener, explaining the usual failure on low ports.
func listen(key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, os.ErrPermission) {
		return nil, fmt.Errorf("%s %s: %w (ports below 1024 need root or CAP_NET_BIND_SERVICE; the unit mxid install writes grants it)", key, addr, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", key, addr, err)
	}
	return ln, nil
}

func splitListen(addr string) (host string, port int, ok bool) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, false
	}
	n, err := strconv.Atoi(p)
	return h, n, err == nil && n > 0
}

// Listen opens the sockets the mode needs and logs each decision.
func (t *TLS) Listen() (Listeners, error) {
	var l Listeners
	switch t.cfg.Mode {
	case TLSOff:
		ln, err := listen("http.listen", t.apiAddr)
		if err != nil {
			return l, err
		}
		l.API = ln
		t.log.Info("tls mode off: serving plain HTTP (put a TLS-terminating reverse proxy in front)", "listen", "http://"+ln.Addr().String())
		return l, nil
	case TLSACME:
		t.log.Info("tls mode acme", "domain", t.domain, "ca", t.cfg.CA, "storage", t.storage, "email_set", t.cfg.Email != "",
			"challenges", strings.Join(t.cfg.Challenges, ","), "ca_roots_file", t.cfg.CARootsFile)
	case TLSFiles:
		t.log.Info("tls mode files", "cert_file", t.cfg.CertFile, "key_file", t.cfg.KeyFile, "poll_interval", t.cfg.PollInterval.String())
	}
	ln, err := listen("tls.listen", t.cfg.Listen)
	if err != nil {
		return l, err
	}
	l.API = tls.NewListener(ln, t.serverTLSConfig())
	t.log.Info("serving HTTPS", "listen", ln.Addr().String(), "public_base_url", t.public.String())
	if t.cfg.HTTPListen != "" {
		hl, err := listen("tls.http_listen", t.cfg.HTTPListen)
		if err != nil {
			ln.Close()
			return Listeners{}, err
		}
		l.HTTP, l.HTTPHandler = hl, t.httpHandler()
		what := "redirect to HTTPS"
		if t.cfg.Mode == TLSACME && slices.Contains(t.cfg.Challenges, ChallengeHTTP01) {
			what = "ACME HTTP-01 challenges and redirect to HTTPS"
		}
		t.log.Info("serving plain HTTP", "listen", hl.Addr().String(), "serves", what)
	}
	if t.apiAddr != "" && t.apiAddr != DefaultConfig().HTTP.Listen {
		t.log.Warn("http.listen is not used when tls.mode is not off; the API is served on tls.listen", "http.listen", t.apiAddr)
	}
	return l, nil
}

func (t *TLS) serverTLSConfig() *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if t.cfg.Mode == TLSACME {
		mc := t.magic.TLSConfig()
		c.GetCertificate = mc.GetCertificate
		c.NextProtos = append(c.NextProtos, mc.NextProtos...) // acme-tls/1 for TLS-ALPN-01
		return c
	}
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return t.cert.Load(), nil }
	return c
}

// httpHandler answers ACME HTTP-01 challenges (acme) and redirects every
// other request to the same path under public_base_url: never to the
// request's Host, which the client controls.
func (t *TLS) httpHandler() http.Handler {
	base := strings.TrimSuffix(t.public.String(), "/")
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Redirect(w, r, base+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
	if t.cfg.Mode == TLSACME {
		h = t.issuer.HTTPChallengeHandler(h)
	}
	return h
}

// Start begins keeping the certificate current. acme: serve a stored
// certificate at once (even when the CA is unreachable) and obtain or renew
// in the background; certmagic's maintenance renews it from then on. files:
// poll the files for changes. It returns at once; Stop ends it.
func (t *TLS) Start(ctx context.Context) error {
	switch t.cfg.Mode {
	case TLSACME:
		// Load a stored certificate synchronously, so it is served from the
		// first connection even when the CA is unreachable.
		lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		cert, err := t.magic.CacheManagedCertificate(lctx, t.domain)
		cancel()
		switch {
		case err == nil:
			t.log.Info("serving the stored certificate; renewal is checked in the background", "domain", t.domain,
				"not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
			// A managed certificate is left to the maintenance loop; check
			// it once now rather than at its first tick.
			t.stopped.Go(func() {
				if err := t.cache.RenewManagedCertificates(ctx); err != nil && ctx.Err() == nil {
					t.log.Warn("renewal check at start failed; certmagic retries in the background", "err", err)
				}
			})
			return nil
		case errors.Is(err, fs.ErrNotExist):
			t.log.Info("no stored certificate: obtaining one in the background (HTTPS handshakes fail until it arrives)", "domain", t.domain, "ca", t.cfg.CA)
		default:
			t.log.Error("the stored certificate cannot be loaded: obtaining a new one in the background", "domain", t.domain, "err", err)
		}
		if err := t.magic.ManageAsync(ctx, []string{t.domain}); err != nil {
			return fmt.Errorf("tls: managing the certificate for %s: %w", t.domain, err)
		}
	case TLSFiles:
		t.stopped.Add(1)
		go t.poll()
	}
	return nil
}

func (t *TLS) poll() {
	defer t.stopped.Done()
	tick := time.NewTicker(t.cfg.PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			if changed, err := t.reloadIfChanged(); err != nil {
				t.log.Warn("certificate files changed but could not be loaded; still serving the previous certificate", "err", err)
			} else if changed {
				t.log.Info("certificate files changed on disk")
			}
		}
	}
}

// Reload re-reads the certificate files now (files mode; SIGHUP). On error
// the previous certificate stays in use.
func (t *TLS) Reload() error {
	if t.cfg.Mode != TLSFiles {
		t.log.Info("reload asked: nothing to reload in this tls mode", "mode", t.cfg.Mode)
		return nil
	}
	_, err := t.reload()
	if err != nil {
		t.log.Warn("certificate reload failed; still serving the previous certificate", "err", err)
	}
	return err
}

func (t *TLS) reloadIfChanged() (bool, error) {
	t.mu.Lock()
	same := t.stamps == t.statFiles()
	t.mu.Unlock()
	if same {
		return false, nil
	}
	return t.reload()
}

func (t *TLS) statFiles() [2]fileStamp {
	var s [2]fileStamp
	for i, p := range []string{t.cfg.CertFile, t.cfg.KeyFile} {
		if fi, err := os.Stat(p); err == nil {
			s[i] = fileStamp{fi.ModTime(), fi.Size()}
		}
	}
	return s
}

// reload loads the pair and swaps it in. The stamps are taken before
// reading, so a write racing with the read is seen again on the next poll.
func (t *TLS) reload() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	stamps := t.statFiles()
	pair, err := tls.LoadX509KeyPair(t.cfg.CertFile, t.cfg.KeyFile)
	if err != nil {
		return false, fmt.Errorf("tls: loading %s and %s: %w", t.cfg.CertFile, t.cfg.KeyFile, err)
	}
	leaf := pair.Leaf
	t.cert.Store(&pair)
	t.stamps = stamps
	attrs := []any{"subject", leaf.Subject.CommonName, "dns_names", strings.Join(leaf.DNSNames, ","),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "serial", leaf.SerialNumber.Text(16)}
	t.log.Info("certificate loaded", attrs...)
	if host := t.public.Hostname(); leaf.VerifyHostname(host) != nil {
		t.log.Warn("the certificate does not cover public_base_url's host; clients will refuse it", "host", host)
	}
	if until := time.Until(leaf.NotAfter); until < 14*24*time.Hour {
		t.log.Warn("the certificate expires soon", "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return true, nil
}

// Certificate is the certificate served now (files mode), for tests and
// status.
func (t *TLS) Certificate() *tls.Certificate { return t.cert.Load() }

// Stop ends the background work: the file poller, then certmagic's cache
// and its maintenance. Call it after the listeners are shut down.
func (t *TLS) Stop() {
	t.once.Do(func() {
		close(t.stop)
		t.stopped.Wait()
		if t.cache != nil {
			t.cache.Stop()
		}
	})
}

// slogCore is a zapcore.Core writing to a slog.Handler, so certmagic's logs
// follow [log] level and format.
type slogCore struct {
	h      slog.Handler
	fields []zapcore.Field
}

func zapLevel(l zapcore.Level) slog.Level {
	switch {
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l >= zapcore.WarnLevel:
		return slog.LevelWarn
	case l >= zapcore.InfoLevel:
		return slog.LevelInfo
	default:
		return slog.LevelDebug
	}
}

func (c slogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), zapLevel(l))
}

func (c slogCore) With(fields []zapcore.Field) zapcore.Core {
	return slogCore{h: c.h, fields: append(slices.Clip(c.fields), fields...)}
}

func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	r := slog.NewRecord(e.Time, zapLevel(e.Level), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		r.AddAttrs(slog.Any(k, enc.Fields[k]))
	}
	return c.h.Handle(context.Background(), r)
}

func (c slogCore) Sync() error { return nil }
