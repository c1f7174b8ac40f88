// Package pg is mxid's PostgreSQL store, for several replicas sharing one
// database (DESIGN.md §6). *Store has the method set and the semantics of
// package db's bbolt *db.Store, with db's types and sentinel errors
// (db.ErrNotFound, db.ErrExists, ...), so a caller cannot tell the backends
// apart; one behavioural suite (db/storetest) runs against both. It adds
// what replicas need: a change log (ChangesSince, LatestChange,
// PruneChanges) with a feed of its notifications (FollowChanges), claims on
// queued jobs (DueJobs), the leader's lock (Leadership, replica.go), the
// rate-limit budgets that protect other people (ChargeBudgets, SweepBudgets:
// budgets.go), and the TLS storage of tls.mode = "acme" with its locks
// (Cert*: certs.go).
//
// It imports package db and github.com/jackc/pgx/v5 (pgxpool, pure Go), and
// is the only package that imports pgx. The schema is in migrations/*.sql
// (embedded, applied by Open: see migrate.go).
//
// # Transactions and concurrency
//
// Transactions run at READ COMMITTED and serialize conflicting writers with
// locks, never by retrying: RequestSession, UpdateSession and Bind run
// caller callbacks that have side effects outside the database (charging a
// send budget, signing an onbind body), so each callback runs exactly once
// per call, as it does on bbolt. A row that exists is locked with SELECT …
// FOR UPDATE; a row that may not exist yet (the binding of a 3PID bound for
// the first time, the session of a new (3PID, client_secret)) is guarded by
// a transaction-scoped advisory lock on a hash of its key
// (pg_advisory_xact_lock), taken first, so a second writer waits and then
// reads what the first committed. SERIALIZABLE with retry on 40001 was the
// alternative; it would re-run the callbacks. Every transaction takes at
// most one such key lock and then row locks in key order, so writers do not
// deadlock; the one exception, an erasure (erase.go), takes the key locks of
// a user's 3PIDs in key order before anything else.
//
// # Change log
//
// Every write that changes what lookups see (Bind, PutBinding, PutBindings,
// DeleteBinding, ReplaceDirectory, and PutMeta: the lookup pepper) appends
// to the changes table in its own transaction and calls
// pg_notify('mxid_changes', seq) there, so the notification is sent at
// commit. Appends take one advisory lock held to commit, so sequence
// numbers are assigned in commit order and a reader that has seen seq N has
// seen every change before it. (PostgreSQL already serializes the commits
// of notifying transactions, so this costs little more.)
//
// # Replicas
//
// FollowChanges LISTENs for those notifications on a connection of its
// own, reconnecting after a loss. Leadership is a session advisory lock held
// on another connection of its own: the replica holding it runs the jobs
// that must run once. Both connections send TCP keepalives both ways, so a
// peer that vanished without closing is noticed within seconds.
//
// # Queue claims
//
// DueJobs claims the jobs it returns (FOR UPDATE SKIP LOCKED, then
// claimed_until = now + Options.ClaimLease): another replica's DueJobs does
// not return them until the lease has passed, so a replica that dies
// mid-delivery leaves its jobs to another. CompleteJob, RetryJob and DropJob
// end the claim. Leases use the callers' clocks (the nowMS arguments), so
// replicas' clocks must agree to well within the lease (NTP).
//
// # Errors
//
// Each method runs under a context with Options.StatementTimeout (also set
// as the server's statement_timeout). A database that cannot be reached, a
// lost connection and a timeout come back wrapped in db.ErrUnavailable.
//
// # Where a caller could tell the difference
//
// Text columns hold valid UTF-8 without NUL: a write of anything else is
// refused with a plain error (bbolt keeps any bytes; mxid's canonical 3PIDs
// and Matrix IDs are never affected), and a lookup of such a key finds
// nothing, as on bbolt. NextJobDue reports a claimed job as due when its
// claim ends. RetryJob of a job that is no longer queued (completed by
// another replica after this one's claim lapsed) leaves it gone. The
// deadline of RequestSession, UpdateSession and Bind includes their
// callbacks.
//
// # What replaces the bbolt-only methods
//
// WriteBackup, BackupOffline and VerifyBackup: pg_dump. ReleaseMapped:
// nothing (no file is mapped). Path: the connection URL without its
// password.
package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"mxid/db"
)

// Options tune a Store. Zero values take the defaults.
type Options struct {
	// MaxConns is the connection pool's size (default 10). A Store opens
	// up to MaxConns + 2 (the budget charges' pool, budgetConns), and one
	// more for each of FollowChanges, a held Leadership and a held
	// CertLock.
	MaxConns int32
	// StatementTimeout bounds each call (default 5s).
	StatementTimeout time.Duration
	// ClaimLease is how long a job returned by DueJobs stays hidden from
	// other replicas unless it is completed, retried or dropped first
	// (default 2 minutes).
	ClaimLease time.Duration
	// ChangeRetention is how old a change must be before PruneChanges
	// deletes it (default 24 hours).
	ChangeRetention time.Duration
	// Logger receives the migration log (default: discarded).
	Logger *slog.Logger
	// ApplicationName names this replica's connections in
	// pg_stat_activity (default "mxid").
	ApplicationName string
	// NoMigrate opens the database as it is: Open refuses one whose schema
	// is missing or not this build's (a *SchemaError) instead of creating
	// or upgrading it, for tools that must not change what replicas share.
	NoMigrate bool
}

func (o Options) withDefaults() Options {
	if o.MaxConns <= 0 {
		o.MaxConns = 10
	}
	if o.StatementTimeout <= 0 {
		o.StatementTimeout = 5 * time.Second
	}
	if o.ClaimLease <= 0 {
		o.ClaimLease = 2 * time.Minute
	}
	if o.ChangeRetention <= 0 {
		o.ChangeRetention = 24 * time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ApplicationName == "" {
		o.ApplicationName = "mxid"
	}
	return o
}

// Store is the handle on the database: a connection pool. It is safe for
// concurrent use, and any number of Stores (in one process or in several)
// may share one database.
type Store struct {
	pool       *pgxpool.Pool
	budgetPool *pgxpool.Pool // budget charges' own (budgets.go)
	certLocks  certLocks     // TLS storage locks held (certs.go)
	opts       Options
	path       string
	conn       *pgx.ConnConfig // for the connections of its own a replica keeps (replica.go)
}

// Open connects to the database at url (postgres://…, or key=value pairs),
// checks that it answers, and migrates its schema to this build's version
// (with Options.NoMigrate, checks that it has it).
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	cfg, err := parseURL(url)
	if err != nil {
		return nil, fmt.Errorf("database url %w", err)
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.ConnConfig.ConnectTimeout <= 0 || cfg.ConnConfig.ConnectTimeout > opts.StatementTimeout {
		cfg.ConnConfig.ConnectTimeout = opts.StatementTimeout
	}
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = fmt.Sprint(opts.StatementTimeout.Milliseconds())
	cfg.ConnConfig.RuntimeParams["application_name"] = opts.ApplicationName
	s := &Store{opts: opts, path: locationOf(cfg.ConnConfig.Config).String(), conn: cfg.ConnConfig.Copy()}
	if opts.NoMigrate {
		err = checkSchema(ctx, cfg.ConnConfig.Copy())
	} else {
		err = migrate(ctx, cfg.ConnConfig.Copy(), opts.Logger)
	}
	if err != nil {
		return nil, &openError{s.path, classify(err)}
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, &openError{s.path, classify(err)}
	}
	if s.budgetPool, err = openBudgetPool(ctx, cfg); err != nil {
		s.pool.Close()
		return nil, &openError{s.path, classify(err)}
	}
	return s, nil
}

// openError is Open's failure: where the database is, said once (pgx's
// connection error names its user and database again), then why.
type openError struct {
	where string
	err   error
}

func (e *openError) Error() string {
	msg := e.err.Error()
	var ce *pgconn.ConnectError
	if errors.As(e.err, &ce) && ce.Config != nil {
		msg = strings.Replace(msg, fmt.Sprintf("failed to connect to `user=%s database=%s`:", ce.Config.User, ce.Config.Database), "cannot connect:", 1)
	}
	return e.where + ": " + msg
}

func (e *openError) Unwrap() error { return e.err }

// Location is where a connection string points: the first host it names
// (a name, an address or a Unix socket directory), the port, the user and
// the database; never the password.
type Location struct {
	Host           string
	Port           uint16
	User, Database string
}

func locationOf(c pgconn.Config) Location {
	return Location{Host: c.Host, Port: c.Port, User: c.User, Database: c.Database}
}

// String is the location as a URL, for messages:
// postgres://user@host:port/database, a socket directory in brackets.
func (l Location) String() string {
	host := l.Host
	if strings.HasPrefix(host, "/") {
		host = "[" + host + "]" // a Unix socket directory
	}
	return fmt.Sprintf("postgres://%s@%s/%s", l.User, net.JoinHostPort(host, fmt.Sprint(l.Port)), l.Database)
}

// ParseURL reads a connection string as Open does (a postgres:// URL or
// key=value pairs, completed by PostgreSQL's PG* environment variables),
// without connecting, and returns where it points. Its error says what is
// wrong and never quotes the string, which may hold a password.
func ParseURL(url string) (Location, error) {
	cfg, err := parseURL(url)
	if err != nil {
		return Location{}, err
	}
	return locationOf(cfg.ConnConfig.Config), nil
}

// parseURL is pgxpool.ParseConfig with an error fit for people: pgx's
// quotes the string with the password masked as best it can; this one
// gives only the reason.
func parseURL(url string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err == nil {
		return cfg, nil
	}
	reason := "it cannot be parsed"
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		bare := *pe
		bare.ConnString = ""
		reason = strings.TrimPrefix(bare.Error(), "cannot parse ``: ")
	}
	return nil, fmt.Errorf("is not a PostgreSQL connection string: %s; PostgreSQL takes a URL (postgres://user@host:5432/dbname?sslmode=…) or host=… dbname=… pairs", reason)
}

// Close closes the pool, waiting for connections in use to be returned.
func (s *Store) Close() error {
	s.closeCertLocks()
	s.pool.Close()
	s.budgetPool.Close()
	return nil
}

// Path is where the database is: its URL without the password.
func (s *Store) Path() string { return s.path }

// Ping checks that PostgreSQL answers a query within the statement timeout
// (the readiness check of a replica).
func (s *Store) Ping() error {
	ctx, cancel := s.call()
	defer cancel()
	var one int
	return classify(s.pool.QueryRow(ctx, "SELECT 1").Scan(&one))
}

// call gives one method its deadline.
func (s *Store) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.opts.StatementTimeout)
}

// classify wraps the errors that mean "the database is not there or did not
// answer in time" in db.ErrUnavailable, and returns others as they are.
func classify(err error) error {
	if err == nil || !unavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", db.ErrUnavailable, err)
}

func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57014", // query_canceled: the statement timeout
			"57P01", "57P02", "57P03", // admin shutdown, crash shutdown, cannot connect now
			"53300", // too many connections
			"55P03": // lock not available
			return true
		}
		return strings.HasPrefix(pgErr.Code, "08") // connection exception
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) ||
		errors.As(err, &connectErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgconn.ErrConnClosed)
}
