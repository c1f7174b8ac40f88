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
	"maps"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"mxid/db/pg"
	"mxid/lookup"
	"mxid/mail"
	"mxid/server"
	"mxid/server/outbound"
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

// command is one `mxid NAME`.
type command struct {
	name     string
	synopsis string // what follows "mxid" in the usage line
	about    string // one line: what it does
	run      func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands are mxid's subcommands in the order help lists them: the usage
// text, each subcommand's -h and README's "Commands" block (a test
// compares them) come from this table.
func commands() []command { return commandsWith(opSignals{}) }

// commandsWith is commands() with serve acting on sig.
func commandsWith(sig opSignals) []command {
	return []command{
		{"serve", "[serve] [-config PATH]", "run the server (the default command)",
			func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
				return cmdServe(ctx, args, sig, stdout, stderr)
			}},
		{"check-config", "check-config [-config PATH]", "validate the configuration, list every problem and warning", cmdCheckConfig},
		{"check", "check WHAT [ARGS]", "self-tests with the configured settings, step by step:", cmdCheck},
		{"backup", "backup [-config PATH] [-force] FILE", "write a checked copy of the database (also while serving)", cmdBackup},
		{"check-db", "check-db [-config PATH]", "check every page of the database, count what it holds (also while serving)", cmdCheckDB},
		{"admin", "admin [-config PATH] [-json] COMMAND", "the operator's tools: show, unbind, erase, invites, queue, stats, audit (admin -h)", cmdAdmin},
		{"migrate-db", "migrate-db [-config PATH] -to URL|DIR", "copy the store into an empty PostgreSQL database (from bbolt), or into a new mxid.db in DIR (from PostgreSQL)", cmdMigrateDB},
		{"import", "import [-config PATH] [-n] FILE", `load bindings from JSON lines {"medium","address","mxid"[,"ts"]} (FILE - reads stdin)`, cmdImport},
		{"install", "install --domain NAME ...", "install as a systemd service (user, config, unit); --dry-run shows the plan", cmdInstall},
		{"bench-lookup", "bench-lookup [flags]", "load benchmark of POST /v2/lookup (-h lists its flags)", cmdBenchLookup},
		{"bench-replicas", "bench-replicas -urls URLS [flags]", "binds/s, propagation between replicas, leader failover, of running servers (-h)", cmdBenchReplicas},
		{"version", "version", "print the version", cmdVersion},
		{"help", "help [COMMAND]", "print this help, or a command's", cmdHelp},
	}
}

// usageLines are the command lines of `mxid help`, aligned: every
// command from commands(), the checks from checkCommands() after check.
func usageLines() []string {
	type row struct{ synopsis, about string }
	var rows []row
	for _, c := range commands() {
		rows = append(rows, row{c.synopsis, c.about})
		if c.name == "check" {
			checks := checkCommands()
			for _, name := range slices.Sorted(maps.Keys(checks)) {
				rows = append(rows, row{"check " + name + " " + checks[name].Args, "  " + checks[name].Short})
			}
		}
	}
	width := 0
	for _, r := range rows {
		width = max(width, len(r.synopsis))
	}
	lines := make([]string, len(rows))
	for i, r := range rows {
		lines[i] = fmt.Sprintf("mxid %-*s  %s", width, r.synopsis, r.about)
	}
	return lines
}

// usage is `mxid help`.
func usage() string {
	var b strings.Builder
	b.WriteString("mxid: a Matrix identity server\n\nUsage:\n")
	for _, l := range usageLines() {
		b.WriteString("  " + l + "\n")
	}
	b.WriteString(`
Without -config, mxid reads ./mxid.toml if it exists and otherwise runs the
embedded default: plain HTTP on 127.0.0.1:8090, server name "127.0.0.1:8090", data
in ./mxid-data, validation emails and SMS written to the log.
See mxid.toml.example for every setting. mxid COMMAND -h describes a command.
`)
	return b.String()
}

// run is the whole program; main only wires signals and the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runWith(ctx, args, opSignals{}, stdout, stderr)
}

// runWith is the whole program; main only wires signals and the exit code.
// serve acts on SIGHUP and SIGUSR1; any other command stops on SIGHUP as on
// SIGINT (its terminal went away), cleaning up as it does.
func runWith(ctx context.Context, args []string, sig opSignals, stdout, stderr io.Writer) error {
	name := "serve"
	if len(args) > 0 && isHelpFlag(args[0]) {
		fmt.Fprint(stdout, usage())
		return nil
	}
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if name != "serve" {
		var cancel context.CancelFunc
		ctx, cancel = cancelOn(ctx, sig.hup)
		defer cancel()
	}
	for _, c := range commandsWith(sig) {
		if c.name == name {
			err := c.run(ctx, args, stdout, stderr)
			if errors.Is(err, errHelp) {
				return nil // -h: the usage was asked for and printed
			}
			return err
		}
	}
	fmt.Fprintf(stderr, "mxid: unknown command %q\n\n%s", name, usage())
	return usageError{fmt.Errorf("unknown command %q", name)}
}

func isHelpFlag(arg string) bool { return arg == "-h" || arg == "--help" || arg == "-help" }

// cmdHelp is `mxid help [COMMAND]`.
func cmdHelp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelpFlag(args[0]) || args[0] == "help" {
		fmt.Fprint(stdout, usage())
		return nil
	}
	return run(ctx, []string{args[0], "-h"}, stdout, stderr)
}

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if err := parseFlags(newFlagSet("version"), args, stdout, stderr); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "mxid", buildVersion())
	return nil
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

// newFlagSet is the flag set of the subcommand name; its usage (-h) is
// the command's line in commands() and its flags.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		for _, c := range commands() {
			if c.name == name {
				fmt.Fprintf(fs.Output(), "usage: mxid %s\n  %s\n", c.synopsis, c.about)
			}
		}
		fs.PrintDefaults()
	}
	return fs
}

// errHelp says -h or --help was given and the usage printed: run makes it
// a success.
var errHelp = errors.New("help requested")

// parseArgs parses the flags in args. -h/--help prints the usage to stdout
// and returns errHelp; a bad flag prints the problem and the usage to
// stderr and returns a usageError.
func parseArgs(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	printUsage := fs.Usage
	fs.Usage = func() {} // printed below, where it belongs
	fs.SetOutput(stderr)
	err := fs.Parse(args)
	fs.Usage = printUsage
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		fs.SetOutput(stderr)
		return errHelp
	case err != nil:
		fs.Usage()
		return usageError{err}
	}
	return nil
}

// parseFlags is parseArgs for commands that take no positional argument.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := parseArgs(fs, args, stdout, stderr); err != nil {
		return err
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

func cmdCheckConfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check-config")
	path := configFlag(fs)
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
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
	if problem := probeStore(cfg); problem != nil { // one more problem
		if ce == nil {
			ce = &ConfigError{Path: source}
		}
		ce.Problems = append(ce.Problems, problem)
	}
	if ce != nil {
		fmt.Fprintln(stderr, ce.Error())
		return usageError{ce}
	}
	// Warnings are printed but do not fail the check: the configuration
	// is valid, it just will not work with some callers.
	warnings := cfg.Warnings()
	for _, w := range warnings {
		fmt.Fprintf(stdout, "%s: warning: %s\n", source, w)
	}
	if len(warnings) > 0 {
		fmt.Fprintf(stdout, "%s: configuration OK, with %d warning(s)\n", source, len(warnings))
		return nil
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
	fs := newFlagSet("serve")
	path := configFlag(fs)
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
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
	for _, w := range cfg.Warnings() {
		log.Warn(w)
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
		if app.replica != nil && !app.replica.leader.leading.Load() {
			log.Info("SIGUSR1: this replica does not lead, so it does not rotate the pepper; send SIGUSR1 to the leader (mxid_replica_leader 1, or its log line \"replica: this replica leads\")")
			return
		}
		log.Info("SIGUSR1: rotating the lookup pepper")
		if err := app.lookup.Index.Rotate(ctx); err != nil {
			log.Error("pepper rotation failed", "err", err)
		}
	})
	// The TLS mode decides the listeners: plain HTTP on http.listen (off),
	// or HTTPS on tls.listen plus challenges/redirect on tls.http_listen.
	tlsm, err := server.NewTLS(cfg.Config, cfg.DataDir, sharedTLSStore(app.store), log)
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
	logRetention(log, cfg)
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
	store   appStore
	srv     *server.Server
	log     *slog.Logger
	metrics *server.Metrics
	lookup  *lookup.Service
	replica *replica           // nil with bbolt (one process)
	stop    context.CancelFunc // ends the lookup service's and the replica's background work
}

// newApp opens the store, loads (or creates) the signing key and builds the
// server. The caller closes it.
func newApp(cfg Config, log *slog.Logger) (*app, error) {
	started := time.Now()
	store, key, err := openBackend(context.Background(), cfg, log)
	if err != nil {
		return nil, err
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
	// With PostgreSQL this process is one of several replicas: the jobs
	// that run once go to the leader's runner, and the index follows the
	// change log from the last change before it is built.
	var rep *replica
	var runOnce func(name string, job func(context.Context))
	var from int64
	if ps, ok := store.(*pg.Store); ok {
		rep = newReplica(cfg.Database, ps, log)
		runOnce = rep.leader.runOnce
		if from, err = ps.LatestChange(); err != nil {
			store.Close()
			return nil, fmt.Errorf("database: reading the change log: %w", err)
		}
	}
	lk, err := newLookup(cfg, store, policy, log, metrics.Lookup, runOnce)
	if err != nil {
		store.Close()
		return nil, err
	}
	metrics.SetIndexSize(lk.Index.Size)
	if lk.Search != nil {
		metrics.SetDirectoryEntries(lk.Search.Len)
	}
	metrics.SetPepperAge(func() time.Duration { return lk.Index.Stats().PepperAge })
	deps := server.Deps{Store: store, Key: key, Policy: policy, Logger: log,
		Mail: sender, InviteMail: sender, Metrics: metrics, Lookup: lk, Bindings: lk.Index}
	if rep != nil {
		f := rep.follow(lk, from)
		deps.Bindings, deps.Ready, deps.RunOnce = f, f.ready(cfg.Database.MaxLag), runOnce
		metrics.SetReplica(rep.name, os.Getpid())
		metrics.SetLeader(rep.leader.leading.Load)
		metrics.SetChangeLag(f.lagChanges, f.lagSeconds)
	}
	srv, err := server.New(cfg.Config, deps)
	if err != nil {
		lk.Close()
		store.Close()
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	lk.Start(ctx)
	if rep != nil {
		rep.follower.tokens = srv
		rep.start(ctx)
	}
	log.Info("ready", "data_dir", cfg.DataDir, "key_id", key.ID, "startup_ms", time.Since(started).Milliseconds())
	return &app{store: store, srv: srv, log: log, metrics: metrics, lookup: lk, replica: rep, stop: stop}, nil
}

// newLookup builds the lookup service: the hash index over the local
// bindings (built here, before serving), the cascade and its sources.
func newLookup(cfg Config, store lookup.Store, policy *outbound.Policy, log *slog.Logger, observe func(source, outcome string, d time.Duration), runOnce func(string, func(context.Context))) (*lookup.Service, error) {
	start := time.Now()
	lk, err := lookup.New(cfg.Lookup, cfg.LDAP, cfg.DNS, cfg.Forwarders, lookup.Deps{
		Store:      store,
		HTTPClient: policy.Client(outbound.ClientOptions{MaxResponseBytes: 4 << 20}),
		DNSServer:  cfg.Outbound.DNSServer,
		Self:       selfNames(cfg),
		Logger:     log,
		Observe:    observe, // metrics.Lookup: nil-safe when metrics are off
		Directory:  cfg.Directory,
		RunOnce:    runOnce, // the leader's runner with several replicas; nil: one process
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
		if a.replica != nil {
			a.replica.wait() // the leader's jobs among it
		}
		a.lookup.Close()
	}
	if err := a.store.Close(); err != nil {
		a.log.Error("closing the store", "err", err)
	}
}
