package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"mxid/db"
	"mxid/server"
)

// cmdBackup writes a consistent copy of the database to FILE: from the
// running server through its admin socket, or straight from the file when
// no server holds it. The copy is verified (bbolt's page check) before it
// takes the name FILE.
func cmdBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("backup")
	path := configFlag(fs)
	force := fs.Bool("force", false, "replace FILE if it exists")
	if err := parseArgs(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usageError{errors.New("backup needs exactly one FILE")}
	}
	dest := fs.Arg(0)
	cfg, _, err := resolveConfig(*path)
	if err != nil {
		return err
	}
	if cfg.Database.Postgres() {
		return fmt.Errorf("the database is PostgreSQL (%s), which mxid does not copy itself: back it up with pg_dump, for instance\n  %s\n"+
			"(or PostgreSQL's continuous archiving). Nothing else needs a backup: the signing key is in the database too",
			redactedURL(cfg.Database.URL), pgDumpCommand(cfg.Database.URL))
	}
	if err := refuseEmptyStore(cfg.DataDir); err != nil {
		return err
	}
	if _, err := os.Stat(dest); err == nil && !*force {
		return fmt.Errorf("%s exists; choose another name or pass -force", dest)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dest), filepath.Base(dest)+".partial-*")
	if err != nil {
		return err
	}
	// Removed on every way out but the rename: an error, an interrupt
	// (SIGINT, SIGTERM, SIGHUP cancel ctx, and the copy stops at its next
	// write). Only SIGKILL leaves it behind.
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}

	start := time.Now()
	source := "the running server (admin socket)"
	w := ctxWriter{ctx, tmp}
	n, err := backupFromServer(ctx, filepath.Join(cfg.DataDir, server.AdminSocketName), w)
	if errors.Is(err, errNoServer) {
		source = "the database file (no server running)"
		n, err = db.BackupOffline(cfg.DataDir, w)
		if errors.Is(err, db.ErrInUse) {
			err = fmt.Errorf("%w: an mxid holds the database but its admin socket %s does not answer; is data_dir too long for a socket path?",
				err, filepath.Join(cfg.DataDir, server.AdminSocketName))
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("backup failed: %w", err)
	}
	sum, err := db.VerifyBackup(tmp.Name())
	var de *db.DamagedError
	if errors.As(err, &de) {
		// The copy is the database page for page: the damage is there.
		de.Path = filepath.Join(cfg.DataDir, db.FileName)
		return fmt.Errorf("backup not kept, its check failed: %w", de)
	}
	if err != nil {
		return fmt.Errorf("backup failed its check, not kept: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("backup interrupted, not kept: %w", err)
	}
	if err := os.Rename(tmp.Name(), dest); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup written to %s from %s: %d bytes in %v, checked: schema %d, %d bindings, %d accounts, %d invites\n",
		dest, source, n, time.Since(start).Round(time.Millisecond), sum.Schema, sum.Bindings, sum.Accounts, sum.Invites)
	fmt.Fprintf(stdout, "also keep a copy of %s (the signing key); it is not in the database\n", filepath.Join(cfg.DataDir, "signing.key"))
	return nil
}

// errNoServer means no mxid answers on the admin socket.
var errNoServer = errors.New("no server on the admin socket")

// ctxWriter fails its writes once ctx is done, so a copy into it stops.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, fmt.Errorf("interrupted: %w", err)
	}
	return c.w.Write(p)
}

// backupFromServer streams GET /backup from the admin socket into w.
func backupFromServer(ctx context.Context, socket string, w io.Writer) (int64, error) {
	resp, err := adminDo(ctx, socket, http.MethodGet, "/backup", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("reading the backup stream: %w", err)
	}
	if want, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64); want <= 0 || n != want {
		return n, fmt.Errorf("backup stream cut short: %d of %s bytes", n, resp.Header.Get("Content-Length"))
	}
	return n, nil
}
