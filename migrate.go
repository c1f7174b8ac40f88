package main

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/server/signing"
)

// migrateProgressEvery is how many records go by between progress lines.
const migrateProgressEvery = 100000

// cmdMigrateDB implements `mxid migrate-db [-config PATH] -to TARGET`: it
// copies the configured store into the other backend. From bbolt (data_dir)
// TARGET is a postgres:// URL of an empty database; from PostgreSQL
// ([database] url) it is a directory that gets a new mxid.db and
// signing.key. The copy is verified before the command says it is done.
func cmdMigrateDB(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate-db")
	path := configFlag(fs)
	to := fs.String("to", "", "where to copy the store: a postgres:// URL of an empty database (from bbolt), or a directory for a new mxid.db (from PostgreSQL)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *to == "" {
		fmt.Fprintln(stderr, "mxid migrate-db: -to is required")
		fs.SetOutput(stderr)
		fs.Usage()
		return usageError{errors.New("migrate-db needs -to")}
	}
	cfg, _, err := resolveConfig(*path)
	if err != nil {
		return err
	}
	toPostgres := strings.HasPrefix(*to, "postgres://") || strings.HasPrefix(*to, "postgresql://")
	switch {
	case cfg.Database.Postgres() && toPostgres:
		return fmt.Errorf("the configured store is PostgreSQL already (%s): to copy one PostgreSQL database into another, use pg_dump and pg_restore", redactedURL(cfg.Database.URL))
	case !cfg.Database.Postgres() && !toPostgres:
		return fmt.Errorf("the configured store is the bbolt file in data_dir %s, so -to must be the postgres:// URL of an empty database (to copy the bbolt file itself, use mxid backup)", cfg.DataDir)
	case toPostgres:
		if _, err := pg.ParseURL(*to); err != nil {
			return fmt.Errorf("-to %w", err)
		}
		return migrateToPostgres(ctx, cfg, *to, stdout)
	}
	return migrateToBolt(ctx, cfg, *to, stdout)
}

// migratePGOptions are the PostgreSQL store's settings for migrate-db: one
// reader or writer, and statements that may take longer than a request's.
func migratePGOptions(cfg Config) pg.Options {
	return pg.Options{MaxConns: 4, StatementTimeout: max(cfg.Database.StatementTimeout, time.Minute)}
}

// migrateToPostgres copies data_dir's mxid.db and signing.key into the
// empty database at url.
func migrateToPostgres(ctx context.Context, cfg Config, url string, out io.Writer) error {
	dbPath := filepath.Join(cfg.DataDir, db.FileName)
	if _, err := os.Stat(dbPath); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("there is no database at %s: nothing to copy (is -config the configuration mxid serves with?)", dbPath)
	}
	src, err := openStore(cfg.DataDir, slog.New(slog.DiscardHandler))
	if errors.Is(err, db.ErrInUse) {
		return fmt.Errorf("an mxid server is running on data_dir %s (it holds %s): stop it first (for instance systemctl stop mxid), then run migrate-db again; "+
			"a copy made while mxid serves would miss what it writes during and after the copy", cfg.DataDir, dbPath)
	}
	if err != nil {
		return err
	}
	defer src.Close()
	keyPath := filepath.Join(cfg.DataDir, signingKeyName)
	var head []db.Record
	key, err := signing.LoadKey(keyPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		fmt.Fprintf(out, "note: %s does not exist (this data_dir has never served): the first replica will create a signing key\n", keyPath)
	case err != nil:
		return err
	case key.ID != signing.LongTermKeyID:
		return fmt.Errorf("%s holds key %s; PostgreSQL keeps the long-term key as %s only", keyPath, key.ID, signing.LongTermKeyID)
	default:
		head = append(head, db.SigningKey{Seed: key.Private.Seed()})
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	dst, err := pg.Open(octx, url, migratePGOptions(cfg))
	cancel()
	if err != nil {
		return err
	}
	defer dst.Close()
	fmt.Fprintf(out, "copying the bbolt store %s (and %s) into the PostgreSQL database %s\n", dbPath, keyPath, dst.Path())
	c, err := copyStore(ctx, src, dst, head, nil, out)
	if err == nil {
		err = c.verify(dst, nil, out)
	}
	var ne *db.NotEmptyError
	if errors.As(err, &ne) {
		return fmt.Errorf("%w.\nmigrate-db copies only into an empty database, so that nothing is merged or overwritten: create a new database for mxid, "+
			"or drop and create this one again if what it holds is not needed (nothing was written)", err)
	}
	if err != nil {
		return fmt.Errorf("%w\n(the copy is one transaction: nothing was kept in %s)", err, dst.Path())
	}
	if err := copyCertificates(ctx, filepath.Join(cfg.DataDir, certmagicDir), dst, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "done. Next: set [database] url in the configuration to the URL given to -to (its password in url_file or ~/.pgpass), then start mxid: its replicas share this database. "+
		"%s and %s are left as they were: keep them as a backup, and do not serve from them again (they do not see what the replicas write).\n",
		dbPath, keyPath)
	return nil
}

// migrateToBolt copies the configured PostgreSQL database into a new
// mxid.db and signing.key in dir. They are made in a temporary directory
// inside dir and moved into place once verified: a failed copy leaves
// nothing behind.
func migrateToBolt(ctx context.Context, cfg Config, dir string, out io.Writer) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	dbPath, keyPath := filepath.Join(dir, db.FileName), filepath.Join(dir, signingKeyName)
	if err := refuseExisting(dbPath, keyPath); err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	src, err := pg.Open(octx, cfg.Database.URL, migratePGOptions(cfg))
	cancel()
	if err != nil {
		return err
	}
	defer src.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".migrate-db-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dst, err := db.Open(tmp)
	if err != nil {
		return err
	}
	defer dst.Close()
	tmpKey := filepath.Join(tmp, signingKeyName)
	writeKey := func(r db.Record) (bool, error) {
		k, ok := r.(db.SigningKey)
		if !ok {
			return false, nil
		}
		return true, signing.WriteKey(tmpKey, &signing.Key{ID: signing.LongTermKeyID, Private: ed25519.NewKeyFromSeed(k.Seed)})
	}
	fmt.Fprintf(out, "copying the PostgreSQL database %s into a new bbolt store %s (and %s)\n", src.Path(), dbPath, keyPath)
	c, err := copyStore(ctx, src, dst, nil, writeKey, out)
	if err == nil {
		// The key file, read back, is the target's signing key.
		var kept []db.Record
		if k, err := signing.LoadKey(tmpKey); err == nil {
			kept = append(kept, db.SigningKey{Seed: k.Private.Seed()})
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		err = c.verify(dst, kept, out)
	}
	if err != nil {
		return fmt.Errorf("%w\n(nothing was written to %s)", err, dir)
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := refuseExisting(dbPath, keyPath); err != nil { // made meanwhile
		return err
	}
	if _, err := os.Stat(tmpKey); err == nil {
		if err := os.Rename(tmpKey, keyPath); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(out, "note: the database holds no signing key (no mxid has started on it): the first start on the new data_dir will create one")
	}
	if err := os.Rename(filepath.Join(tmp, db.FileName), dbPath); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil { // the renames are durable
		d.Sync()
		d.Close()
	}
	if err := exportCertificates(ctx, src, filepath.Join(dir, certmagicDir), out); err != nil {
		return err
	}
	fmt.Fprintf(out, "done. Next: set data_dir = %q and remove [database] url (and url_file) from the configuration, then start one mxid (bbolt: one process). "+
		"The PostgreSQL database is left as it was.\n", dir)
	return nil
}

// refuseExisting refuses to write a new store where one is: migrate-db
// never overwrites or merges.
func refuseExisting(dbPath, keyPath string) error {
	if _, err := os.Stat(dbPath); err == nil {
		holds := "an mxid database"
		r, err := db.CheckFile(dbPath)
		switch {
		case errors.Is(err, db.ErrInUse):
			holds = "the database of a running mxid"
		case r.Schema > 0:
			holds = (db.Counts{db.KindBindings: r.Bindings, db.KindSessions: r.Sessions, db.KindAccounts: r.Accounts,
				db.KindInvites: r.Invites, db.KindQueue: r.Queued}).String()
		}
		return fmt.Errorf("%s exists and holds %s: migrate-db writes a new database and never overwrites one; choose an empty directory, or move the file away", dbPath, holds)
	}
	if _, err := os.Stat(keyPath); err == nil {
		return fmt.Errorf("%s exists: migrate-db writes the database's own signing key and never overwrites one; choose an empty directory, or move the file away", keyPath)
	}
	return nil
}

// exportStore is a store migrate-db copies from; importStore one it copies
// into (db.Store and pg.Store are both).
type exportStore interface {
	Counts() (db.Counts, error)
	Export(fn func(db.Record) error) error
}

type importStore interface {
	exportStore
	Path() string
	Import(fill func(put func(db.Record) error) error) (db.Counts, error)
}

// copied is what copyStore did.
type copied struct {
	stream   *tally    // every record read (head, the source's, diverted)
	imported db.Counts // what the target counted after the import
}

// copyStore imports head and then every record of src into dst (which
// refuses unless it is empty), with a progress line every
// migrateProgressEvery records and one per kind. divert, when not nil, is
// offered each record first and takes those dst does not keep. ctx ends
// the copy (an interrupt).
func copyStore(ctx context.Context, src exportStore, dst importStore, head []db.Record, divert func(db.Record) (bool, error), out io.Writer) (*copied, error) {
	total := len(head)
	if n, err := src.Counts(); err == nil {
		total += n.Total()
	}
	c := &copied{stream: newTally()}
	start := time.Now()
	var current db.Kind
	kindCount := 0
	endKind := func() {
		if current != "" {
			fmt.Fprintf(out, "  %s copied\n", db.CountOf(current, kindCount))
		}
	}
	imported, err := dst.Import(func(put func(db.Record) error) error {
		each := func(r db.Record) error {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("interrupted: %w", err)
			}
			if k := r.Kind(); k != current {
				endKind()
				current, kindCount = k, 0
			}
			kindCount++
			c.stream.add(r)
			if n := c.stream.counts.Total(); n%migrateProgressEvery == 0 {
				fmt.Fprintf(out, "  ... %d of %d records (%s), %.0f records/s\n", n, total, current, float64(n)/time.Since(start).Seconds())
			}
			if divert != nil {
				if taken, err := divert(r); taken || err != nil {
					return err
				}
			}
			return put(r)
		}
		for _, r := range head {
			if err := each(r); err != nil {
				return err
			}
		}
		return src.Export(each)
	})
	if err != nil {
		return nil, err
	}
	endKind()
	c.imported = imported
	d := time.Since(start)
	n := c.stream.counts.Total()
	fmt.Fprintf(out, "copied %d records in %v (%.0f records/s); verifying\n", n, d.Round(time.Millisecond), float64(n)/d.Seconds())
	return c, nil
}

// verify reads the whole target back (dst's export and kept, the records
// kept beside it) and compares it with what was read from the source,
// kind by kind: the number of records and a SHA-256 of their contents, in
// key order (both backends export in the same order).
func (c *copied) verify(dst exportStore, kept []db.Record, out io.Writer) error {
	start := time.Now()
	back := newTally()
	for _, r := range kept {
		back.add(r)
	}
	if err := dst.Export(func(r db.Record) error { back.add(r); return nil }); err != nil {
		return fmt.Errorf("reading the copy back: %w", err)
	}
	fmt.Fprintf(out, "  %-20s %10s %10s\n", "", "source", "copy")
	var wrong []string
	for _, k := range db.Kinds() {
		same := c.stream.counts[k] == back.counts[k] && c.stream.sum(k) == back.sum(k)
		mark := ""
		if !same {
			mark = "  DIFFERENT"
			wrong = append(wrong, string(k))
		}
		fmt.Fprintf(out, "  %-20s %10d %10d%s\n", strings.ReplaceAll(string(k), "_", " "), c.stream.counts[k], back.counts[k], mark)
	}
	for _, k := range db.Kinds() {
		if k != db.KindSigningKey && c.imported[k] != back.counts[k] {
			wrong = append(wrong, fmt.Sprintf("%s (imported %d, read back %d)", k, c.imported[k], back.counts[k]))
		}
	}
	if len(wrong) > 0 {
		return fmt.Errorf("the copy differs from the source in: %s", strings.Join(wrong, ", "))
	}
	fmt.Fprintf(out, "verified in %v: the copy holds the same records as the source, kind by kind (counts, and a SHA-256 of every record)\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// tally counts records by kind and hashes their contents (JSON, in the
// order seen).
type tally struct {
	counts db.Counts
	sums   map[db.Kind]hash.Hash
}

func newTally() *tally { return &tally{counts: db.Counts{}, sums: map[db.Kind]hash.Hash{}} }

func (t *tally) add(r db.Record) {
	k := r.Kind()
	t.counts[k]++
	h, ok := t.sums[k]
	if !ok {
		h = sha256.New()
		t.sums[k] = h
	}
	enc, err := json.Marshal(r)
	if err != nil { // no record type fails to encode; if one did, say so
		enc = []byte(err.Error())
	}
	h.Write(append(enc, '\n'))
}

func (t *tally) sum(k db.Kind) string {
	if h, ok := t.sums[k]; ok {
		return string(h.Sum(nil))
	}
	return ""
}

// certmagicDir is where acme mode keeps its certificates and ACME account
// in data_dir without PostgreSQL (certmagic's file storage).
const certmagicDir = "certmagic"

// copyCertificates puts the files of acme mode's file storage (dir, keyed
// by their slash-separated path under it, as certmagic's file storage keys
// them) into the database's storage, so replicas serve the certificate the
// box had instead of asking the CA for another (Let's Encrypt limits
// duplicate certificates). Nothing to do without the directory.
func copyCertificates(ctx context.Context, dir string, dst interface {
	CertPut(ctx context.Context, key string, value []byte) error
}, out io.Writer) error {
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && path == dir {
			return fs.SkipAll
		}
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		value, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := dst.CertPut(ctx, filepath.ToSlash(rel), value); err != nil {
			return fmt.Errorf("copying %s into the database's certificate storage: %w", path, err)
		}
		n++
		return nil
	})
	if err != nil {
		return err
	}
	if n > 0 {
		fmt.Fprintf(out, "%d files of the acme certificate storage (%s) copied: replicas serve the same certificate and ACME account\n", n, dir)
	}
	return nil
}

// exportCertificates writes the database's acme storage (certificates and
// the ACME account) into dir as certmagic's file storage keeps them: the
// way back of copyCertificates. Nothing to do when it holds none.
func exportCertificates(ctx context.Context, src *pg.Store, dir string, out io.Writer) error {
	keys, err := src.CertList(ctx, "", true)
	if errors.Is(err, db.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	n := 0
	for _, key := range keys {
		if _, _, terminal, err := src.CertStat(ctx, key); err != nil || !terminal {
			continue // a directory
		}
		value, err := src.CertLoad(ctx, key)
		if err != nil {
			return err
		}
		path := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(path, value, 0o600); err != nil {
			return err
		}
		n++
	}
	if n > 0 {
		fmt.Fprintf(out, "%d files of the acme certificate storage written to %s\n", n, dir)
	}
	return nil
}
