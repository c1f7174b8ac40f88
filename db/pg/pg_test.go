package pg

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"mxid/db"
	"mxid/db/pgtest"
)

// recorder is a slog handler that keeps the messages it is given.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func TestMigrationFilesMatchSchemaVersion(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if last := ms[len(ms)-1].version; last != SchemaVersion {
		t.Errorf("newest migration file is %d, SchemaVersion %d", last, SchemaVersion)
	}
}

// TestConcurrentOpenMigratesOnce: replicas starting together on an empty
// database all start, and the schema is migrated once.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	url := pgtest.New(t)
	rec := &recorder{}
	const n = 8
	var wg sync.WaitGroup
	stores := make([]*Store, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = Open(context.Background(), url, Options{MaxConns: 2, Logger: slog.New(rec)})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		defer stores[i].Close()
	}
	if got := rec.count("applied schema migration"); got != SchemaVersion {
		t.Errorf("%d migrations applied by %d replicas, want %d", got, n, SchemaVersion)
	}
	for _, s := range stores {
		if v, err := s.SchemaVersion(); err != nil || v != SchemaVersion {
			t.Errorf("SchemaVersion: %d %v", v, err)
		}
	}
	// Opening again migrates nothing.
	openURL(t, url, Options{Logger: slog.New(rec)})
	if got := rec.count("applied schema migration"); got != SchemaVersion {
		t.Errorf("a reopen migrated again: %d", got)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	url := pgtest.New(t)
	openURL(t, url, Options{}).Close()
	pgtest.Exec(t, url, "INSERT INTO schema_version (version, name) VALUES (3, '0003_future.sql')")
	_, err := Open(context.Background(), url, Options{})
	want := "the database was migrated by a newer mxid (schema 3, this binary knows 1): upgrade mxid"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open of a newer database: %v\nwant %q", err, want)
	}
	if errors.Is(err, db.ErrUnavailable) {
		t.Error("a newer schema reported as the database being unavailable")
	}
	var se *SchemaError
	if _, err := Open(context.Background(), url, Options{NoMigrate: true}); !errors.As(err, &se) || se.Have != 3 || !strings.Contains(err.Error(), want) {
		t.Errorf("Open without migrating a newer database: %v", err)
	}
}

// TestNoMigrate: Open with NoMigrate refuses an empty database, leaving it
// empty (no table, not even schema_version), and opens a migrated one.
func TestNoMigrate(t *testing.T) {
	url := pgtest.New(t)
	_, err := Open(context.Background(), url, Options{NoMigrate: true})
	var se *SchemaError
	if !errors.As(err, &se) || se.Have != 0 || se.Want != SchemaVersion || !strings.Contains(err.Error(), "the database holds no mxid schema") {
		t.Fatalf("Open without migrating an empty database: %v", err)
	}
	if errors.Is(err, db.ErrUnavailable) {
		t.Error("a missing schema reported as the database being unavailable")
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tables int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil || tables != 0 {
		t.Errorf("the refused database holds %d tables (%v), want none", tables, err)
	}
	openURL(t, url, Options{}).Close()
	s := openURL(t, url, Options{NoMigrate: true})
	if v, err := s.SchemaVersion(); err != nil || v != SchemaVersion {
		t.Errorf("opened without migrating: schema %d %v", v, err)
	}
}

func TestPathHasNoPassword(t *testing.T) {
	url := strings.Replace(pgtest.New(t), "mxid@", "mxid:s3cret@", 1) // trust auth ignores it
	s := openURL(t, url, Options{})
	if p := s.Path(); strings.Contains(p, "s3cret") || !strings.HasPrefix(p, "postgres://mxid@127.0.0.1:") {
		t.Errorf("Path() = %q", p)
	}
}

// TestParseURL: what pgx accepts (a URL, a socket directory in the query,
// key=value pairs) is accepted, with where it points and no password; what
// Open would refuse is refused with the reason, never the string itself.
func TestParseURL(t *testing.T) {
	t.Setenv("PGPORT", "") // the default port, 5432
	for _, c := range []struct{ url, where string }{
		{"postgres://mxid:s3cret@db.example.org/mxid?sslmode=verify-full", "postgres://mxid@db.example.org:5432/mxid"},
		{"postgresql://mxid:s3cret@db.example.org:5433/mxid", "postgres://mxid@db.example.org:5433/mxid"},
		{"postgres:///mxid?host=/var/run/postgresql&user=mxid", "postgres://mxid@[/var/run/postgresql]:5432/mxid"},
		{"host=/var/run/postgresql dbname=mxid user=mxid password=s3cret", "postgres://mxid@[/var/run/postgresql]:5432/mxid"},
	} {
		where, err := ParseURL(c.url)
		if err != nil || where.String() != c.where {
			t.Errorf("ParseURL(%q) = %q, %v; want %q", c.url, where, err, c.where)
		}
	}
	for _, c := range []struct{ url, reason string }{
		{"postgres://mxid:s3cret@db.example.org/mxid?sslmode=bogus", "sslmode is invalid"},
		{"postgres://mxid:s3cret@db.example.org/mxid?pool_max_conns=abc", "cannot parse pool_max_conns"},
		{"postgres://mxid:s3cret@db.example.org:99999/mxid", "invalid port"},
		{"postgres://mxid:s3c%zzret@db.example.org/mxid", "invalid percent-encoded token in password"},
		{"mysql://mxid:s3cret@db.example.org/mxid", "failed to parse as keyword/value"},
		{"host=db.example.org password=s3cret sslmode=bogus", "sslmode is invalid"},
	} {
		_, err := ParseURL(c.url)
		if err == nil || !strings.Contains(err.Error(), "is not a PostgreSQL connection string: ") || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("ParseURL(%q): %v; want the reason %q", c.url, err, c.reason)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "s3c") || strings.Contains(msg, "db.example.org") {
			t.Errorf("ParseURL(%q) quotes the string: %s", c.url, msg)
		}
	}
}

// TestUnavailable: with PostgreSQL down, calls fail with db.ErrUnavailable
// (decide is never run) instead of hanging; once it is back, the pool
// reconnects by itself and nothing acknowledged is lost.
func TestUnavailable(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	s := openURL(t, url, Options{StatementTimeout: 3 * time.Second})
	b := db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs", TS: 1}
	if _, err := s.PutBinding(b); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	decided := false
	calls := map[string]error{
		"PutBinding": func() error { _, err := s.PutBinding(b); return err }(),
		"GetBinding": func() error { _, err := s.GetBinding("email", "a@example.org"); return err }(),
		"BoundMXIDs": func() error { _, err := s.BoundMXIDs([][2]string{{"email", "a@example.org"}}); return err }(),
		"RequestSession": func() error {
			_, err := s.RequestSession("email", "a@example.org", "cs", func(*db.Session) (db.Session, bool, error) {
				decided = true
				return db.Session{}, false, nil
			})
			return err
		}(),
		"DueJobs":      func() error { _, err := s.DueJobs(1, 10); return err }(),
		"ScanBindings": s.ScanBindings(func(_, _, _ []byte) error { return nil }),
	}
	for name, err := range calls {
		if !errors.Is(err, db.ErrUnavailable) {
			t.Errorf("%s with the database down: %v, want ErrUnavailable", name, err)
		}
	}
	if decided {
		t.Error("decide ran with the database down")
	}
	if _, err := Open(context.Background(), url, Options{StatementTimeout: 3 * time.Second}); !errors.Is(err, db.ErrUnavailable) {
		t.Errorf("Open with the database down: %v", err)
	}
	srv.Start(t)
	if got, err := s.GetBinding("email", "a@example.org"); err != nil || got != b {
		t.Errorf("after restart: %+v %v", got, err)
	}
}

// TestStatementTimeout: a call stuck behind another session's lock gives up
// after the statement timeout with db.ErrUnavailable, and the store works
// once the lock is gone.
func TestStatementTimeout(t *testing.T) {
	url := pgtest.New(t)
	s := openURL(t, url, Options{StatementTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	blocker, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close(ctx)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE bindings IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBinding("email", "a@example.org"); !errors.Is(err, db.ErrUnavailable) {
		t.Errorf("a read behind a lock: %v, want ErrUnavailable", err)
	}
	if _, _, _, err := s.Bind(db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs"}, 0, nil); !errors.Is(err, db.ErrUnavailable) {
		t.Errorf("a bind behind a lock: %v, want ErrUnavailable", err)
	}
	tx.Rollback(ctx)
	if _, _, _, err := s.Bind(db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs"}, 0, nil); err != nil {
		t.Errorf("after the lock: %v", err)
	}
}

// TestChangeNotified: a write notifies mxid_changes with its seq.
func TestChangeNotified(t *testing.T) {
	url := pgtest.New(t)
	s := openURL(t, url, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	listener, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.Background())
	if _, err := listener.Exec(ctx, "LISTEN mxid_changes"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutBindings([]db.Binding{{Medium: "email", Address: "a@example.org", MXID: "@a:hs"}, {Medium: "email", Address: "b@example.org", MXID: "@b:hs"}}, 0); err != nil {
		t.Fatal(err)
	}
	n, err := listener.WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	latest, _ := s.LatestChange()
	if n.Channel != "mxid_changes" || n.Payload != strconv.FormatInt(latest, 10) {
		t.Errorf("notification %s %q, latest change %d", n.Channel, n.Payload, latest)
	}
}

// TestNotStorable: what PostgreSQL text cannot hold is refused with a plain
// message, not mistaken for an outage.
func TestNotStorable(t *testing.T) {
	s := openURL(t, pgtest.New(t), Options{})
	_, err := s.PutBinding(db.Binding{Medium: "email", Address: "\xff@example.org", MXID: "@a:hs"})
	if err == nil || errors.Is(err, db.ErrUnavailable) || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("invalid UTF-8: %v", err)
	}
	if err := s.PutInvite(db.Invite{Token: "t", Medium: "email", Address: "a@example.org", Ephemeral: "e", RoomID: "\x00"}); err == nil || errors.Is(err, db.ErrUnavailable) {
		t.Errorf("a NUL in an invite: %v", err)
	}
}

// TestSigningKeyCreatedOnce: replicas starting together (two pools, eight
// goroutines) agree on one key; exactly one of them made it.
func TestSigningKeyCreatedOnce(t *testing.T) {
	url := pgtest.New(t)
	a, b := openURL(t, url, Options{}), openURL(t, url, Options{})
	var mu sync.Mutex
	seeds := map[string]int{}
	created := 0
	var wg sync.WaitGroup
	for i := range 8 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			seed, made, err := s.SigningKey(func() ([]byte, error) {
				seed := make([]byte, 32)
				_, err := rand.Read(seed)
				return seed, err
			})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seeds[string(seed)]++
			if made {
				created++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(seeds) != 1 || created != 1 {
		t.Errorf("%d different keys, %d created; want one key created once", len(seeds), created)
	}
}
