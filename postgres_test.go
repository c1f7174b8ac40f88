package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"mxid/db/pgtest"
)

// The commands that touch the database, on PostgreSQL: import stores into
// it, check-db counts what it holds, backup explains pg_dump instead of
// copying (and leaves no file).
func TestCommandsOnPostgres(t *testing.T) {
	url := pgtest.New(t)
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
		t.Errorf("check-db printed the URL's password")
	}
	_, _, err = run1("backup", "-config", cfg, filepath.Join(dir, "copy.db"))
	if err == nil || !strings.Contains(err.Error(), "pg_dump -Fc") || !strings.Contains(err.Error(), "-h 127.0.0.1") {
		t.Errorf("backup on PostgreSQL: %v", err)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "copy.db*")); len(matches) != 0 {
		t.Errorf("backup on PostgreSQL left files: %v", matches)
	}
}

// [database] url_file: the URL (with its password) read from a file.
func TestDatabaseURLFile(t *testing.T) {
	dir := t.TempDir()
	urlFile := writeFile(t, dir, "db-url", pgtest.New(t)+"\n")
	cfg := writeFile(t, dir, "mxid.toml", fmt.Sprintf("data_dir = %q\n[database]\nurl_file = %q\n", filepath.Join(dir, "data"), urlFile))
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"check-db", "-config", cfg}, &out, &errOut); err != nil || !strings.Contains(out.String(), "postgres://") {
		t.Errorf("check-db with url_file: %v\n%s%s", err, out.String(), errOut.String())
	}
}
