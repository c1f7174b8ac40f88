package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"

	"mxid/db"
	"mxid/server"
)

// signingKeyName is the long-term signing key's file in data_dir.
const signingKeyName = "signing.key"

// refuseEmptyStore refuses an empty (0-byte) mxid.db in a data directory
// that has been used (it holds the signing key): bbolt would silently make
// it a new database, every binding and account gone. A new data directory,
// or an empty file with no signing key beside it (a first start that died
// while creating the file), starts fresh.
func refuseEmptyStore(dataDir string) error {
	path := filepath.Join(dataDir, db.FileName)
	fi, err := os.Stat(path)
	if err != nil || fi.Size() != 0 || !fi.Mode().IsRegular() {
		return nil // missing, or for the database check to judge
	}
	key := filepath.Join(dataDir, signingKeyName)
	if _, err := os.Stat(key); err != nil {
		return nil
	}
	return fmt.Errorf("%s is empty (0 bytes), but %s shows this data directory has been used: every binding and account is gone from the file, and mxid does not start over with an empty database on its own. "+
		"Restore mxid.db from a backup, or remove the empty file to start with an empty database", path, key)
}

// openStore opens the store for serve and import: it refuses an emptied
// database; db.Open checks every page before anything is served or
// written (a damaged page otherwise shows up as failed requests, at the
// first bind that touches it).
func openStore(dataDir string, log *slog.Logger) (*db.Store, error) {
	if err := refuseEmptyStore(dataDir); err != nil {
		return nil, err
	}
	store, err := db.Open(dataDir)
	if err != nil {
		return nil, err
	}
	if store.RewroteMeta() {
		log.Warn("one of the two meta pages of the database was unreadable (a write cut short by a crash, or damage): it was rewritten from the other one, so the last write before it may be missing", "path", store.Path())
	}
	r := store.Opened()
	log.Info("database checked", "path", r.Path, "bytes", r.Size, "duration_ms", r.DurationMS)
	return store, nil
}

// probeStore is check-config's look at the bbolt database: nil when the
// store is PostgreSQL, when data_dir holds none yet, or when serve would
// accept it (db.Probe).
func probeStore(cfg Config) error {
	dataDir := cfg.DataDir
	if dataDir == "" || cfg.Database.Postgres() {
		return nil
	}
	if err := refuseEmptyStore(dataDir); err != nil {
		return err
	}
	if _, err := db.Probe(dataDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// cmdCheckDB implements `mxid check-db`: bbolt's consistency check over
// every page and the counts of what the database holds, done by the running
// server (GET /check on the admin socket) or, with none, on the file
// read-only.
func cmdCheckDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check-db")
	path := configFlag(fs)
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	cfg, _, err := resolveConfig(*path)
	if err != nil {
		return err
	}
	if cfg.Database.Postgres() {
		return checkPostgres(ctx, cfg, stdout)
	}
	if err := refuseEmptyStore(cfg.DataDir); err != nil {
		return err
	}
	socket := filepath.Join(cfg.DataDir, server.AdminSocketName)
	by := "the running server"
	var r db.Report
	resp, err := adminDo(ctx, socket, http.MethodGet, "/check", nil)
	switch {
	case errors.Is(err, errNoServer):
		by = "this command (no server running)"
		r, err = db.CheckFile(filepath.Join(cfg.DataDir, db.FileName))
		if errors.Is(err, db.ErrInUse) {
			err = fmt.Errorf("%w: an mxid holds the database but its admin socket %s does not answer; is data_dir too long for a socket path?", err, socket)
		}
	case err == nil:
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil {
			err = fmt.Errorf("admin socket %s: reading the check report: %w", socket, err)
		} else {
			err = r.Err()
		}
	}
	if r.ProblemCount > 1 { // one is in the error
		fmt.Fprintf(stdout, "%s: %d bytes, every page read by %s in %d ms: %d problem(s):\n", r.Path, r.Size, by, r.DurationMS, r.ProblemCount)
		for _, p := range r.Problems {
			fmt.Fprintf(stdout, "  %s\n", p)
		}
		if r.ProblemCount > len(r.Problems) {
			fmt.Fprintf(stdout, "  (%d more)\n", r.ProblemCount-len(r.Problems))
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: OK: %d bytes, schema %d, every page checked by %s in %d ms\n", r.Path, r.Size, r.Schema, by, r.DurationMS)
	printCounts(stdout, r)
	return nil
}

// printCounts lists what a check found the database holds.
func printCounts(w io.Writer, r db.Report) {
	fmt.Fprintf(w, "  bindings           %d\n  sessions           %d\n  accounts           %d\n  invites            %d\n  queued deliveries  %d\n",
		r.Bindings, r.Sessions, r.Accounts, r.Invites, r.Queued)
}

// checkPostgres is check-db on PostgreSQL: the cross-table rules and counts
// (db/pg Check); pages and checksums are PostgreSQL's own (amcheck).
func checkPostgres(ctx context.Context, cfg Config, stdout io.Writer) error {
	store, err := openPostgres(ctx, cfg, slog.New(slog.DiscardHandler), false)
	if err != nil {
		return err
	}
	defer store.Close()
	r, err := store.Check()
	if err != nil {
		return err
	}
	if r.ProblemCount > 0 {
		fmt.Fprintf(stdout, "%s: %d problem(s):\n", r.Path, r.ProblemCount)
		for _, p := range r.Problems {
			fmt.Fprintf(stdout, "  %s\n", p)
		}
		return usageError{fmt.Errorf("check-db found %d problem(s)", r.ProblemCount)}
	}
	fmt.Fprintf(stdout, "%s: OK: %d bytes, schema %d, checked in %d ms (pages and checksums: PostgreSQL's own amcheck)\n", r.Path, r.Size, r.Schema, r.DurationMS)
	printCounts(stdout, r)
	return nil
}
