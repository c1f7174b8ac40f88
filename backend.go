package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/lookup"
	"mxid/server"
	"mxid/server/signing"
)

// DatabaseConfig is the [database] section: where mxid keeps its state.
// Without a URL, in one bbolt file in data_dir (one process); with a
// postgres:// URL, in PostgreSQL, which several replicas share.
type DatabaseConfig struct {
	// URL is "" for bbolt, or postgres://user:password@host:port/db?… (the
	// password may come from url_file instead: the whole URL is read from
	// that file).
	URL string `toml:"url"`
	// URLFile names a file holding the URL (a password kept out of the
	// configuration).
	URLFile string `toml:"url_file"`
	// MaxConns bounds each replica's connection pool for requests; a
	// replica opens up to MaxConns + 4 connections in all (pg.Options).
	MaxConns int32 `toml:"max_conns"`
	// StatementTimeout bounds every database call: a write that cannot
	// complete within it answers 503 instead of hanging.
	StatementTimeout time.Duration `toml:"statement_timeout"`
	// ReplicaName names this replica in logs, metrics and
	// pg_stat_activity; "" is the host name and process id.
	ReplicaName string `toml:"replica_name"`
	// MaxLag: a replica whose lookup index has not read the change log to
	// its end for longer than this answers /health/ready with 503.
	MaxLag time.Duration `toml:"max_lag"`
	// ClaimLease is how long an onbind delivery claimed by one replica is
	// left to it; a replica that dies mid-delivery leaves the job to another
	// after it.
	ClaimLease time.Duration `toml:"claim_lease"`
}

// DefaultDatabaseConfig is bbolt, with PostgreSQL's settings ready.
func DefaultDatabaseConfig() DatabaseConfig {
	return DatabaseConfig{MaxConns: 10, StatementTimeout: 5 * time.Second, MaxLag: 10 * time.Second, ClaimLease: 2 * time.Minute}
}

// Postgres reports whether the state lives in PostgreSQL.
func (c DatabaseConfig) Postgres() bool { return c.URL != "" }

// Validate reports every problem with the section.
func (c *DatabaseConfig) Validate() []error {
	var errs []error
	if c.URL != "" {
		if _, err := pg.ParseURL(c.URL); err != nil {
			errs = append(errs, fmt.Errorf(`database.url %w; "" is the bbolt file in data_dir`, err))
		}
	}
	if c.MaxConns < 2 || c.MaxConns > 1000 {
		errs = append(errs, fmt.Errorf("database.max_conns must be between 2 and 1000, not %d", c.MaxConns))
	}
	if c.StatementTimeout < 100*time.Millisecond || c.StatementTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("database.statement_timeout must be between 100ms and 10m, not %v", c.StatementTimeout))
	}
	if !replicaNameRE.MatchString(c.ReplicaName) {
		errs = append(errs, fmt.Errorf("database.replica_name: %q must be 1 to 64 letters, digits, '.', '_' or '-' (or \"\" for host-pid)", c.ReplicaName))
	}
	if c.MaxLag < 2*time.Second || c.MaxLag > time.Hour {
		errs = append(errs, fmt.Errorf("database.max_lag must be between 2s and 1h (replicas read the change log at least every second), not %v", c.MaxLag))
	}
	if c.ClaimLease < time.Second || c.ClaimLease > time.Hour {
		errs = append(errs, fmt.Errorf("database.claim_lease must be between 1s and 1h, not %v", c.ClaimLease))
	}
	return errs
}

// replicaNameRE is what [database] replica_name may be.
var replicaNameRE = regexp.MustCompile(`^([A-Za-z0-9._-]{1,64})?$`)

// redactedURL is where a database URL points, fit for a message: no
// password.
func redactedURL(raw string) string {
	where, err := pg.ParseURL(raw)
	if err != nil {
		return "(an unreadable URL)"
	}
	return where.String()
}

// appStore is what serve needs from either backend.
type appStore interface {
	server.Store
	lookup.Store
	Close() error
	QueueDepth() (int, error)
	CountSessions() (int, error)
	PutBinding(b db.Binding) (previous *db.Binding, err error)
	PutBindings(bs []db.Binding, chunk int) (stored int, err error)
	Check() (db.Report, error)
}

// openBackend opens the configured store and loads the long-term signing
// key: with bbolt, mxid.db and signing.key in data_dir (the key created on
// first start); with PostgreSQL, the database (migrated under an advisory
// lock) and the key kept in it, created in one transaction by whichever
// replica starts first, so that every replica signs with the same key.
func openBackend(ctx context.Context, cfg Config, log *slog.Logger) (appStore, *signing.Key, error) {
	if !cfg.Database.Postgres() {
		store, err := openStore(cfg.DataDir, log)
		if err != nil {
			return nil, nil, err
		}
		keyPath := filepath.Join(cfg.DataDir, signingKeyName)
		key, created, err := signing.LoadOrCreateKey(keyPath)
		if err != nil {
			store.Close()
			return nil, nil, err
		}
		log.Info("database", "backend", "bbolt", "path", store.Path())
		if created {
			log.Info("created a new long-term signing key", "path", keyPath, "key_id", key.ID)
		}
		return store, key, nil
	}
	// data_dir still holds the admin socket (and, in acme mode without
	// the database's storage, certificates): a new replica box has none.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create data directory: %w", err)
	}
	store, err := openPostgres(ctx, cfg, log, true)
	if err != nil {
		return nil, nil, err
	}
	seed, created, err := store.SigningKey(func() ([]byte, error) {
		seed := make([]byte, ed25519.SeedSize)
		_, err := rand.Read(seed)
		return seed, err
	})
	if err != nil || len(seed) != ed25519.SeedSize {
		store.Close()
		return nil, nil, fmt.Errorf("%s: the long-term signing key: %w", store.Path(), cmpErr(err, errors.New("malformed key seed")))
	}
	key := &signing.Key{ID: signing.LongTermKeyID, Private: ed25519.NewKeyFromSeed(seed)}
	v, _ := store.SchemaVersion()
	log.Info("database", "backend", "postgres", "url", store.Path(), "schema", v,
		"max_conns", cfg.Database.MaxConns, "statement_timeout", cfg.Database.StatementTimeout.String(),
		"rate_limits", "mail, SMS and invite budgets counted in the database (shared); per-IP limits per replica",
		"replica", replicaName(cfg.Database), "max_lag", cfg.Database.MaxLag.String(), "claim_lease", cfg.Database.ClaimLease.String())
	if created {
		log.Info("created a new long-term signing key in the database", "key_id", key.ID)
	} else {
		log.Info("long-term signing key loaded from the database", "key_id", key.ID)
	}
	return store, key, nil
}

// openPostgres opens the database of [database] url. With migrate (serve,
// import) its schema is created or upgraded to this build's; without
// (check-db, mxid admin: tools that read or act on data, never on what the
// replicas' schema is) a database without this build's schema is refused
// as it is.
func openPostgres(ctx context.Context, cfg Config, log *slog.Logger, migrate bool) (*pg.Store, error) {
	// Migrations wait for another replica's; bounded so a stuck database
	// fails the start-up with a message rather than hanging it.
	octx, cancel := context.WithTimeout(ctx, max(time.Minute, 4*cfg.Database.StatementTimeout))
	defer cancel()
	store, err := pg.Open(octx, cfg.Database.URL, pg.Options{
		MaxConns: cfg.Database.MaxConns, StatementTimeout: cfg.Database.StatementTimeout, Logger: log,
		ClaimLease: cfg.Database.ClaimLease, ApplicationName: "mxid " + replicaName(cfg.Database),
		NoMigrate: !migrate,
	})
	var se *pg.SchemaError
	switch {
	case errors.As(err, &se) && se.Have == 0:
		err = fmt.Errorf("%w: start mxid serve once (it creates the schema), or check [database] url", err)
	case errors.As(err, &se) && se.Have < se.Want:
		err = fmt.Errorf("%w: run the mxid the replicas run, or upgrade them (this mxid's serve upgrades the schema when it starts)", err)
	}
	return store, err
}

// What replicas share besides the server.Store: the budgets that protect
// other people (server.New finds them on the store) and the ACME storage.
var (
	_ server.Budgets  = (*pg.Store)(nil)
	_ server.TLSStore = (*pg.Store)(nil)
)

// sharedTLSStore is where tls.mode = "acme" keeps the account and the
// certificates: in the database on PostgreSQL, so that replicas share one
// certificate; nil (data_dir/certmagic) on bbolt.
func sharedTLSStore(store appStore) server.TLSStore {
	if s, ok := store.(*pg.Store); ok {
		return s
	}
	return nil
}

func cmpErr(err, fallback error) error {
	if err != nil {
		return err
	}
	return fallback
}

// pgDumpCommand is what mxid backup says to run on PostgreSQL: where the
// URL points (pg.ParseURL), never its password.
func pgDumpCommand(rawURL string) string {
	l, err := pg.ParseURL(rawURL)
	if err != nil {
		return "pg_dump -Fc -f mxid.dump DATABASE_URL"
	}
	return strings.Join([]string{"pg_dump", "-Fc", "-f", "mxid-$(date +%F).dump", "-h", l.Host, "-p", strconv.Itoa(int(l.Port)), "-U", l.User, l.Database}, " ")
}
