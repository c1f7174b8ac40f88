// Command mxid is a Matrix identity server in one binary.
//
// Package main owns the command line (flags and subcommands), loading and
// validating the configuration, wiring the packages together and signal
// handling. It may import every mxid package; nothing imports it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"mxid/db"
	"mxid/lookup"
	"mxid/mail"
	"mxid/server"
	"mxid/server/outbound"
	"mxid/server/signing"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	sig := catchOpSignals() // first: SIGHUP's default action ends the process
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runWith(ctx, os.Args[1:], sig, os.Stdout, os.Stderr); err != nil {
		var ue usageError
		if !errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "mxid:", err)
		}
		os.Exit(1)
	}
}

// usageError has already been explained to the user.
type usageError struct{ error }

const usage = `mxid: a Matrix identity server

Usage:
  mxid [serve] [-config PATH]           run the server (the default command)
  mxid check-config [-config PATH]      validate the configuration, list every problem
  mxid check WHAT [ARGS]                self-tests with the configured settings (mxid check help lists them)
  mxid backup [-config PATH] FILE       write a checked copy of the database (also while serving)
  mxid check-db [-config PATH]          check every page of the database, count what it holds (also while serving)
  mxid import [-config PATH] [-n] FILE  load bindings from JSON lines {"medium","address","mxid"[,"ts"]}
  mxid install --domain NAME ...        install as a systemd service (user, config, unit); --dry-run shows the plan
  mxid bench-lookup [flags]             load benchmark of POST /v2/lookup (see -h)
  mxid version                          print the version
  mxid help                             print this help

Without -config, mxid reads ./mxid.toml if it exists and otherwise runs the
embedded default: plain HTTP on 127.0.0.1:8090, server name "localhost", data
in ./mxid-data, validation emails and SMS written to the log.
See mxid.toml.example for every setting.
`

// run is the whole program without SIGHUP and SIGUSR1 (tests).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runWith(ctx, args, opSignals{}, stdout, stderr)
}

// runWith is the whole program; main only wires signals and the exit code.
// serve acts on SIGHUP and SIGUSR1; any other command stops on SIGHUP as on
// SIGINT (its terminal went away), cleaning up as it does.
func runWith(ctx context.Context, args []string, sig opSignals, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	if cmd != "serve" {
		var cancel context.CancelFunc
		ctx, cancel = cancelOn(ctx, sig.hup)
		defer cancel()
	}
	switch cmd {
	case "serve":
		return cmdServe(ctx, args, sig, stdout, stderr)
	case "check-db":
		return cmdCheckDB(ctx, args, stdout, stderr)
	case "check-config":
		return cmdCheckConfig(args, stdout, stderr)
	case "backup":
		return cmdBackup(ctx, args, stdout, stderr)
	case "install":
		return cmdInstall(ctx, args, stdout, stderr)
	case "check":
		return cmdCheck(ctx, args, stdout, stderr)
	case "import":
		return cmdImport(args, stdout, stderr)
	case "bench-lookup":
		return cmdBenchLookup(ctx, args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "mxid", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprintf(stderr, "mxid: unknown command %q\n\n%s", cmd, usage)
		return usageError{fmt.Errorf("unknown command %q", cmd)}
	}
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

// configFlag registers -config on fs.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "path to the TOML configuration (default: ./mxid.toml if present, else the embedded default)")
}

func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mxid %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// resolveConfig loads the configuration named by -config, else ./mxid.toml,
// else returns the embedded default; source says which.
func resolveConfig(path string) (cfg Config, source string, err error) {
	if path == "" {
		if _, err := os.Stat("mxid.toml"); err == nil {
			path = "mxid.toml"
		}
	}
	if path == "" {
		cfg = DefaultConfig()
		if problems := cfg.Validate(); len(problems) > 0 {
			return cfg, "", &ConfigError{Path: "embedded default", Problems: problems}
		}
		return cfg, "", nil
	}
	cfg, err = loadConfig(path)
	return cfg, path, err
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	path := configFlag(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	cfg, source, err := resolveConfig(*path)
	var ce *ConfigError
	if err != nil && !errors.As(err, &ce) {
		return err
	}
	if source == "" {
		source = "embedded default"
	}
	if problem := probeStore(cfg.DataDir); problem != nil { // one more problem
		if ce == nil {
			ce = &ConfigError{Path: source}
		}
		ce.Problems = append(ce.Problems, problem)
	}
	if ce != nil {
		fmt.Fprintln(stderr, ce.Error())
		return usageError{ce}
	}
	fmt.Fprintf(stdout, "%s: configuration OK\n", source)
	return nil
}

func newLogger(cfg LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdServe(ctx context.Context, args []string, sig opSignals, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := configFlag(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	cfg, source, err := resolveConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if source == "" {
		log.Warn("no config file: running the embedded default",
			"listen", "http://"+cfg.HTTP.Listen, "server_name", cfg.ServerName, "data_dir", cfg.DataDir,
			"email", "written to the log, not sent", "sms", "written to the log, not sent",
			"hint", "copy mxid.toml.example to mxid.toml to configure")
	} else {
		log.Info("configuration loaded", "path", source)
	}
	signals := startSignalLoop(ctx, sig, log)
	defer signals.stop()

	if os.Getenv("GOGC") == "" {
		// Most of mxid's heap is the lookup index: large and pointer-free,
		// so a collection costs little to mark, and collecting at +25%
		// rather than +100% keeps the resident size near the live size.
		debug.SetGCPercent(25)
	}
	app, err := newApp(cfg, log)
	if err != nil {
		return err
	}
	defer app.close()
	defer signals.stop() // before the store closes
	bgCtx, stopBackground := context.WithCancel(ctx)
	waitBackground := app.srv.Start(bgCtx)
	defer func() { stopBackground(); waitBackground() }()

	signals.ready(rotatePepper, func(ctx context.Context) {
		log.Info("SIGUSR1: rotating the lookup pepper")
		if err := app.lookup.Index.Rotate(ctx); err != nil {
			log.Error("pepper rotation failed", "err", err)
		}
	})
	// The TLS mode decides the listeners: plain HTTP on http.listen (off),
	// or HTTPS on tls.listen plus challenges/redirect on tls.http_listen.
	tlsm, err := server.NewTLS(cfg.Config, cfg.DataDir, log)
	if err != nil {
		return err
	}
	defer tlsm.Stop() // runs before app.close: certmagic's cache, then the store
	signals.ready(reloadTLS, func(context.Context) {
		log.Info("SIGHUP: reloading the TLS certificate")
		tlsm.Reload()
	})
	lns, err := tlsm.Listen()
	if err != nil {
		return err
	}
	if lns.Metrics, err = server.ListenMetrics(cfg.Metrics, log); err != nil {
		lns.Close()
		return err
	}
	if lns.Admin, err = server.ListenAdmin(cfg.DataDir, log); err != nil {
		lns.Close()
		return err
	}
	// Start-up decisions of the other features (sources enabled, pepper
	// age) are logged as they are wired, here, before serving.
	logLookupDecisions(log, cfg, app.lookup)
	if err := tlsm.Start(ctx); err != nil {
		lns.Close()
		return err
	}
	log.Info("serving", "tls_mode", tlsm.Mode(), "public_base_url", cfg.PublicBaseURL, "version", buildVersion())
	// Shutdown order: every listener (graceful, bounded), background loops,
	// certmagic's cache (tlsm.Stop), the store (app.close).
	err = app.srv.ServeAll(ctx, lns)
	log.Info("stopped")
	return err
}

// app is a wired mxid: what serve (and tests) run.
type app struct {
	store   *db.Store
	srv     *server.Server
	log     *slog.Logger
	metrics *server.Metrics
	lookup  *lookup.Service
	stop    context.CancelFunc // ends the lookup service's background work
}

// newApp opens the store, loads (or creates) the signing key and builds the
// server. The caller closes it.
func newApp(cfg Config, log *slog.Logger) (*app, error) {
	started := time.Now()
	store, err := openStore(cfg.DataDir, log)
	if err != nil {
		return nil, err
	}
	keyPath := filepath.Join(cfg.DataDir, "signing.key")
	key, created, err := signing.LoadOrCreateKey(keyPath)
	if err != nil {
		store.Close()
		return nil, err
	}
	if created {
		log.Info("created a new long-term signing key", "path", keyPath, "key_id", key.ID)
	}
	policy, err := outbound.New(cfg.Outbound)
	if err != nil {
		store.Close()
		return nil, err
	}
	var metrics *server.Metrics // nil (every hook a no-op) unless [metrics] enabled
	if cfg.Metrics.Enabled {
		metrics = server.NewMetrics(store)
	}
	templates, err := mail.LoadTemplates(cfg.TemplatesDir)
	if err != nil {
		store.Close()
		return nil, err
	}
	// SMS gateways are reached through the outbound policy like any other
	// server (allow_cidrs lets a gateway on a private network through).
	sender, err := mail.New(cfg.Email, cfg.SMS, mail.Options{
		Templates:  templates,
		HTTPClient: policy.Client(outbound.ClientOptions{MaxResponseBytes: 64 << 10}),
		Logger:     log,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	email, sms := sender.Describe()
	log.Info("delivery of verification messages", "email", email, "sms", sms)
	emailLog, smsLog := sender.LogMode()
	if emailLog {
		log.Warn("emails are not delivered: they are written to this log, tokens included (set [email] mode to deliver them)")
	}
	if smsLog {
		log.Warn("SMS are not delivered: they are written to this log, codes included (set [sms] provider to deliver them)")
	}
	metrics.SetQueueDepth(func() int { n, _ := store.QueueDepth(); return n })
	lk, err := newLookup(cfg, store, policy, log, metrics.Lookup)
	if err != nil {
		store.Close()
		return nil, err
	}
	metrics.SetIndexSize(lk.Index.Size)
	metrics.SetPepperAge(func() time.Duration { return lk.Index.Stats().PepperAge })
	srv, err := server.New(cfg.Config, server.Deps{Store: store, Key: key, Policy: policy, Logger: log,
		Mail: sender, InviteMail: sender, Metrics: metrics, Lookup: lk, Bindings: lk.Index})
	if err != nil {
		lk.Close()
		store.Close()
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	lk.Start(ctx)
	log.Info("ready", "data_dir", cfg.DataDir, "key_id", key.ID, "startup_ms", time.Since(started).Milliseconds())
	return &app{store: store, srv: srv, log: log, metrics: metrics, lookup: lk, stop: stop}, nil
}

// newLookup builds the lookup service: the hash index over the local
// bindings (built here, before serving), the cascade and its sources.
func newLookup(cfg Config, store *db.Store, policy *outbound.Policy, log *slog.Logger, observe func(source, outcome string, d time.Duration)) (*lookup.Service, error) {
	start := time.Now()
	lk, err := lookup.New(cfg.Lookup, cfg.LDAP, cfg.DNS, cfg.Forwarders, lookup.Deps{
		Store:      store,
		HTTPClient: policy.Client(outbound.ClientOptions{MaxResponseBytes: 4 << 20}),
		DNSServer:  cfg.Outbound.DNSServer,
		Self:       selfNames(cfg),
		Logger:     log,
		Observe:    observe, // metrics.Lookup: nil-safe when metrics are off
	})
	if err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	log.Info("lookup index built", "entries", lk.Index.Size(), "duration_ms", time.Since(start).Milliseconds())
	return lk, nil
}

// selfNames are the names this server is reached by: DNS discovery never
// asks them.
func selfNames(cfg Config) []string {
	self := []string{cfg.ServerName}
	if u, err := url.Parse(cfg.PublicBaseURL); err == nil {
		self = append(self, u.Host, u.Hostname())
	}
	return self
}

func (a *app) close() {
	if a.stop != nil {
		a.stop()
		a.lookup.Wait()
		a.lookup.Close()
	}
	if err := a.store.Close(); err != nil {
		a.log.Error("closing the store", "err", err)
	}
}
