package main

import (
	"bytes"
	"context"
	"fmt"
	neturl "net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pgtest"
)

// withPassword is a pgtest URL with a password in it, which the test
// server's trust authentication ignores: a test can then check that no
// message shows it.
func withPassword(t *testing.T, url string) string {
	t.Helper()
	with := strings.Replace(url, "postgres://mxid@", "postgres://mxid:secret@", 1)
	if with == url {
		t.Fatalf("no user to give a password to in %s", url)
	}
	return with
}

// The commands that touch the database, on PostgreSQL: import stores into
// it, check-db counts what it holds, backup explains pg_dump instead of
// copying (and leaves no file). None shows the URL's password, nor does
// check-db's error when the database cannot be reached.
func TestCommandsOnPostgres(t *testing.T) {
	url := withPassword(t, pgtest.New(t))
	dir := t.TempDir()
	cfg := writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl = %q\n", filepath.Join(dir, "data"), url))
	lines := writeFile(t, dir, "bindings.jsonl", `{"medium":"email","address":"Alice@Example.org","mxid":"@alice:hs.test"}
{"medium":"msisdn","address":"447700900001","mxid":"@bob:hs.test"}
`)
	run1 := func(args ...string) (string, string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		return out.String(), errOut.String(), err
	}
	if out, errOut, err := run1("import", "-config", cfg, lines); err != nil || !strings.Contains(out, "2 bindings imported") {
		t.Fatalf("import: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err := run1("check-db", "-config", cfg)
	if err != nil || !strings.Contains(out, "OK") || !strings.Contains(out, "bindings           2") {
		t.Errorf("check-db: %v\n%s%s", err, out, errOut)
	}
	if strings.Contains(out+errOut, "secret") {
		t.Errorf("check-db printed the URL's password:\n%s%s", out, errOut)
	}
	out, errOut, err = run1("backup", "-config", cfg, filepath.Join(dir, "copy.db"))
	if err == nil || !strings.Contains(err.Error(), "pg_dump -Fc") || !strings.Contains(err.Error(), "-h 127.0.0.1") {
		t.Errorf("backup on PostgreSQL: %v", err)
	} else if strings.Contains(out+errOut+err.Error(), "secret") {
		t.Errorf("backup printed the URL's password: %v\n%s%s", err, out, errOut)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "copy.db*")); len(matches) != 0 {
		t.Errorf("backup on PostgreSQL left files: %v", matches)
	}
	away := writeFile(t, dir, "away.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl = \"postgres://mxid:secret@127.0.0.1:1/mxid\"\n", filepath.Join(dir, "data")))
	out, errOut, err = run1("check-db", "-config", away)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("check-db of a database that cannot be reached: %v\n%s%s", err, out, errOut)
	} else if strings.Contains(out+errOut+err.Error(), "secret") {
		t.Errorf("check-db of a database that cannot be reached printed the password: %v\n%s%s", err, out, errOut)
	}
}

// [database] url_file: the URL (with its password) read from a file.
func TestDatabaseURLFile(t *testing.T) {
	dir := t.TempDir()
	urlFile := writeFile(t, dir, "db-url", pgtest.New(t)+"\n")
	cfg := writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl_file = %q\n", filepath.Join(dir, "data"), urlFile))
	lines := writeFile(t, dir, "bindings.jsonl", `{"medium":"email","address":"a@example.org","mxid":"@a:hs.test"}`+"\n")
	if out, err := runOut("import", "-config", cfg, lines); err != nil {
		t.Fatalf("import with url_file: %v\n%s", err, out)
	}
	if out, err := runOut("check-db", "-config", cfg); err != nil || !strings.Contains(out, "postgres://") || !strings.Contains(out, "bindings           1") {
		t.Errorf("check-db with url_file: %v\n%s", err, out)
	}
}

// [database] url is read as serve reads it (pgx): what pgx refuses is a
// problem for check-config as for serve, said without the password; what
// pgx accepts (a socket directory in the query, key=value pairs) passes,
// and a key=value string reaches the database.
func TestDatabaseURLAsPostgreSQLReadsIt(t *testing.T) {
	t.Setenv("PGPORT", "") // the default port, 5432
	dir := t.TempDir()
	config := func(url string) string {
		return writeFile(t, t.TempDir(), "mxid.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl = %q\n", filepath.Join(dir, "data"), url))
	}
	for url, reason := range map[string]string{
		"postgres://mxid:secret@db.example.org/mxid?sslmode=bogus":        "sslmode is invalid",
		"postgres://mxid:secret@db.example.org/mxid?pool_max_conns=abc":   "cannot parse pool_max_conns",
		"host=db.example.org dbname=mxid password=secret connect_timeout": "invalid keyword/value",
	} {
		cfg := config(url)
		for _, cmd := range []string{"check-config", "serve"} {
			out, err := runOut(cmd, "-config", cfg)
			msg := out
			if err != nil {
				msg += err.Error()
			}
			if err == nil || !strings.Contains(msg, "database.url is not a PostgreSQL connection string: ") || !strings.Contains(msg, reason) {
				t.Errorf("%s with url %q: %v\n%s", cmd, url, err, out)
			}
			if strings.Contains(msg, "secret") {
				t.Errorf("%s with url %q printed the password:\n%s", cmd, url, msg)
			}
		}
	}
	for _, url := range []string{"postgres://mxid:secret@/mxid?host=/var/run/postgresql", "host=/var/run/postgresql dbname=mxid user=mxid password=secret"} {
		cfg := config(url)
		if out, err := runOut("check-config", "-config", cfg); err != nil {
			t.Errorf("check-config with url %q: %v\n%s", url, err, out)
		}
		// backup names pg_dump's arguments, never the password.
		out, err := runOut("backup", "-config", cfg, filepath.Join(dir, "copy.db"))
		if err == nil || !strings.Contains(err.Error(), "pg_dump -Fc -f mxid-$(date +%F).dump -h /var/run/postgresql -p 5432 -U mxid mxid") ||
			strings.Contains(out+err.Error(), "secret") {
			t.Errorf("backup with url %q: %v\n%s", url, err, out)
		}
	}
	u, err := neturl.Parse(pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	pairs := fmt.Sprintf("host=%s port=%s dbname=%s user=%s sslmode=disable", u.Hostname(), u.Port(), strings.TrimPrefix(u.Path, "/"), u.User.Username())
	if out, err := runOut("import", "-config", config(pairs), writeFile(t, dir, "b.jsonl", `{"medium":"email","address":"a@example.org","mxid":"@a:hs.test"}`+"\n")); err != nil {
		t.Fatalf("import with url %q: %v\n%s", pairs, err, out)
	}
	if out, err := runOut("check-db", "-config", config(pairs)); err != nil || !strings.Contains(out, "bindings           1") {
		t.Errorf("check-db with url %q: %v\n%s", pairs, err, out)
	}
}

// check-db and mxid admin never create or upgrade what replicas share: on
// an empty database they say it holds no mxid schema and leave it empty
// (no table, no signing key), so migrate-db into it still works.
func TestToolsLeaveAnEmptyDatabaseEmpty(t *testing.T) {
	url := pgtest.New(t)
	dir := t.TempDir()
	pgCfg := writeFile(t, dir, "pg.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl = %q\n", filepath.Join(dir, "replica"), url))
	for _, args := range [][]string{{"check-db", "-config", pgCfg}, {"admin", "-config", pgCfg, "stats"}, {"admin", "-config", pgCfg, "unbind", "a@example.org"}} {
		out, err := runOut(args...)
		if err == nil || !strings.Contains(err.Error(), "the database holds no mxid schema: start mxid serve once (it creates the schema), or check [database] url") {
			t.Errorf("%v on an empty database: %v\n%s", args, err, out)
		}
	}
	if dump := pgtest.Dump(t, url); strings.Contains(dump, "COPY ") {
		t.Fatalf("the tools wrote to the empty database:\n%s", dump)
	}
	boltDir := filepath.Join(dir, "data")
	s, err := db.Open(boltDir)
	must(t, err)
	_, err = s.PutBinding(db.Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs.test", TS: 1, NotBefore: 1, NotAfter: 2})
	must(t, err)
	must(t, s.Close())
	boltCfg := writeFile(t, dir, "bbolt.toml", fmt.Sprintf("data_dir = %q\n", boltDir))
	if out, err := runOut("migrate-db", "-config", boltCfg, "-to", url); err != nil {
		t.Fatalf("migrate-db into the database the tools were refused: %v\n%s", err, out)
	}
	if out, err := runOut("check-db", "-config", pgCfg); err != nil || !strings.Contains(out, "bindings           1") {
		t.Errorf("check-db after migrate-db: %v\n%s", err, out)
	}
}

// A database that cannot be reached is named once in the error, without
// its password, whichever command opened it.
func TestDatabaseErrorNamesTheDatabaseOnce(t *testing.T) {
	dir := t.TempDir()
	const away = "postgres://mxid:secret@127.0.0.1:1/mxid"
	pgCfg := writeFile(t, dir, "pg.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl = %q\n", filepath.Join(dir, "replica"), away))
	boltDir := filepath.Join(dir, "data")
	s, err := db.Open(boltDir)
	must(t, err)
	must(t, s.Close())
	boltCfg := writeFile(t, dir, "bbolt.toml", fmt.Sprintf("data_dir = %q\n", boltDir))
	for _, args := range [][]string{
		{"serve", "-config", pgCfg},
		{"check-db", "-config", pgCfg},
		{"admin", "-config", pgCfg, "stats"},
		{"import", "-config", pgCfg, writeFile(t, dir, "b.jsonl", "")},
		{"migrate-db", "-config", pgCfg, "-to", filepath.Join(dir, "back")},
		{"migrate-db", "-config", boltCfg, "-to", away},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var out bytes.Buffer
		err := run(ctx, args, &out, &out)
		cancel()
		if err == nil {
			t.Errorf("%v with the database away succeeded\n%s", args, out.String())
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "postgres://mxid@127.0.0.1:1/mxid: database unavailable: cannot connect:") ||
			strings.Count(msg, "postgres://") != 1 || strings.Contains(msg, "database=mxid") || strings.Contains(msg+out.String(), "secret") || strings.Contains(msg, "xxxxx") {
			t.Errorf("%v with the database away: %s", args, msg)
		}
	}
}
