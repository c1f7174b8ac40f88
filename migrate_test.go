package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mxid/db"
	"mxid/db/pg"
	"mxid/db/pgtest"
	"mxid/db/storetest"
	"mxid/server/signing"
)

// TestMigrateDB moves one box's bbolt data (100,000 bindings and every other
// kind of record, the signing key, the pepper state of a server that has
// served) into PostgreSQL and back with `mxid migrate-db`, as an operator
// would: refused while a server holds the file and into a target that is
// not empty; each copy holds exactly what the source held; a server on each
// copy answers a signed lookup that verifies with the public key of the
// original, with the same pepper, for a token issued before the move.
func TestMigrateDB(t *testing.T) {
	if testing.Short() {
		t.Skip("copies 100,000 bindings four times")
	}
	dir := t.TempDir()
	boltDir, backDir := filepath.Join(dir, "data"), filepath.Join(dir, "back")
	dbURL := pgtest.New(t)
	config := func(name, dataDir, database string) string {
		return writeFile(t, dir, name, fmt.Sprintf("data_dir = %q\n", dataDir)+`server_name = "id.test"
public_base_url = "https://id.test"
v1 = true
[http]
listen = "127.0.0.1:0"
`+database)
	}
	boltCfg := config("bbolt.toml", boltDir, "")
	// A replica's data_dir holds no store, only its admin socket.
	replicaDir := filepath.Join(dir, "replica")
	must(t, os.Mkdir(replicaDir, 0o700))
	pgCfg := config("pg.toml", replicaDir, fmt.Sprintf("[database]\nurl = %q\n", dbURL))
	backCfg := config("back.toml", backDir, "")

	// One box that has served (its key, its pepper, an account), then
	// stopped; 100,000 bindings and every other kind of record.
	key, _, err := signing.LoadOrCreateKey(filepath.Join(boltDir, signingKeyName))
	if err != nil {
		t.Fatal(err)
	}
	s, err := db.Open(boltDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccountToken("token-from-before", "@alice:hs.test", time.Now()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	base, stop, done := serve(t, boltCfg)
	pepper := checkServed(t, base, key.Public(), "", false)
	// While it serves, the file is refused, and nothing is written.
	out, err := runOut("migrate-db", "-config", boltCfg, "-to", dbURL)
	if err == nil || !strings.Contains(err.Error(), "an mxid server is running on data_dir "+boltDir) || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("migrate-db while serving: %v\n%s", err, out)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	pgStore, err := pg.Open(context.Background(), dbURL, pg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pgStore.Close()
	if c, err := pgStore.Counts(); err != nil || c.Total() != 0 {
		t.Fatalf("the refused migration wrote %v %v", c, err)
	}
	if s, err = db.Open(boltDir); err != nil {
		t.Fatal(err)
	}
	storetest.FillEveryKind(t, s, time.Now().UnixMilli())
	const n = 100000
	bs := make([]db.Binding, n)
	for i := range bs {
		ts := int64(1_600_000_000_000 + i)
		bs[i] = db.Binding{Medium: "email", Address: fmt.Sprintf("user%06d@example.org", i), MXID: fmt.Sprintf("@user%06d:hs.test", i), TS: ts, NotBefore: ts, NotAfter: ts + 1e12}
	}
	if _, err := s.PutBindings(bs, 0); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// The box's acme certificate goes along (certmagic's file storage).
	certKey := "certificates/acme-v02.api.letsencrypt.org-directory/id.test/id.test.crt"
	must(t, os.MkdirAll(filepath.Join(boltDir, certmagicDir, filepath.Dir(certKey)), 0o700))
	must(t, os.WriteFile(filepath.Join(boltDir, certmagicDir, certKey), []byte("-----BEGIN CERTIFICATE-----\n"), 0o600))

	// bbolt -> PostgreSQL.
	out, err = runOut("migrate-db", "-config", boltCfg, "-to", dbURL)
	if err != nil {
		t.Fatalf("migrate-db to PostgreSQL: %v\n%s", err, out)
	}
	if got, err := pgStore.CertLoad(context.Background(), certKey); err != nil || string(got) != "-----BEGIN CERTIFICATE-----\n" {
		t.Errorf("the acme certificate in PostgreSQL: %q %v", got, err)
	}
	t.Logf("bbolt -> PostgreSQL:\n%s", out)
	for _, want := range []string{"... 100000 of ", "the signing key copied", "4 invites copied", "2 queued deliveries copied", "3 directory entries copied", "verified in", "set [database] url in the configuration to the URL given to -to"} {
		if !strings.Contains(out, want) {
			t.Errorf("migrate-db's output lacks %q", want)
		}
	}
	boltRecords := recordsOf(t, func() storetest.Store { s, err := db.Open(boltDir); must(t, err); return s })
	pgRecords := storetest.Records(t, pgStore)
	if k, ok := pgRecords[0].(db.SigningKey); !ok || !bytes.Equal(k.Seed, key.Private.Seed()) {
		t.Fatalf("the key in PostgreSQL is not the key of data_dir: %#v", pgRecords[0])
	}
	storetest.SameRecords(t, boltRecords, pgRecords[1:])
	c, _ := pgStore.Counts()
	if c[db.KindBindings] != n+12349 || c[db.KindAccounts] != 3 || c[db.KindInvites] != 4 || c[db.KindQueue] != 2 || c[db.KindSessions] != 2 ||
		c[db.KindTerms] != 2 || c[db.KindDirectory] != 3 || c[db.KindSigningKey] != 1 || c[db.KindMeta] < 4 {
		t.Errorf("PostgreSQL holds %v", c)
	}

	// Once more: the database is not empty any more.
	out, err = runOut("migrate-db", "-config", boltCfg, "-to", dbURL)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("is not empty: it holds the signing key, %d meta documents, 3 accounts", c[db.KindMeta])) ||
		!strings.Contains(err.Error(), fmt.Sprintf("%d bindings", n+12349)) || !strings.Contains(err.Error(), "create a new database") {
		t.Errorf("migrate-db into a database that is not empty: %v\n%s", err, out)
	}

	// PostgreSQL -> bbolt, into a new directory.
	out, err = runOut("migrate-db", "-config", pgCfg, "-to", backDir)
	if err != nil {
		t.Fatalf("migrate-db to bbolt: %v\n%s", err, out)
	}
	t.Logf("PostgreSQL -> bbolt:\n%s", out)
	if !strings.Contains(out, "verified in") || !strings.Contains(out, fmt.Sprintf("data_dir = %q", backDir)) {
		t.Errorf("migrate-db's output:\n%s", out)
	}
	if got, err := os.ReadFile(filepath.Join(backDir, certmagicDir, certKey)); err != nil || string(got) != "-----BEGIN CERTIFICATE-----\n" {
		t.Errorf("the acme certificate back in data_dir: %q %v", got, err)
	}
	back, err := signing.LoadKey(filepath.Join(backDir, signingKeyName))
	if err != nil || !back.Private.Equal(key.Private) || back.ID != key.ID {
		t.Fatalf("the key written back: %v %v", back, err)
	}
	storetest.SameRecords(t, pgRecords[1:], recordsOf(t, func() storetest.Store { s, err := db.Open(backDir); must(t, err); return s }))
	if leftovers, _ := filepath.Glob(filepath.Join(backDir, ".migrate-db-*")); len(leftovers) > 0 {
		t.Errorf("left behind: %v", leftovers)
	}
	out, err = runOut("migrate-db", "-config", pgCfg, "-to", backDir)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(backDir, db.FileName)+fmt.Sprintf(" exists and holds 3 accounts, %d bindings, 2 validation sessions, 4 invites and 2 queued deliveries", n+12349)) {
		t.Errorf("migrate-db into a directory with a database: %v\n%s", err, out)
	}

	// A replica on the PostgreSQL copy, then a server on the bbolt copy,
	// each signs with the same key, uses the same pepper and knows the
	// token.
	base, stop, done = serve(t, pgCfg)
	checkServed(t, base, key.Public(), pepper, true)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	base, stop, done = serve(t, backCfg)
	checkServed(t, base, key.Public(), pepper, true)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// runOut runs one mxid command and returns what it printed.
func runOut(args ...string) (string, error) {
	var out bytes.Buffer
	err := run(context.Background(), args, &out, &out)
	return out.String(), err
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// recordsOf opens a store, reads everything it holds and closes it.
func recordsOf(t *testing.T, open func() storetest.Store) []db.Record {
	t.Helper()
	s := open()
	defer s.Close()
	return storetest.Records(t, s)
}

// checkServed checks what a client sees of the moved data on the server at
// base: the public key is pub, the pepper is pepper (any when ""), the
// token issued before the move works and, with the bindings there, finds
// one by hash, and a v1 lookup answers an association signed with pub,
// with the binding's own times. It returns the pepper.
func checkServed(t *testing.T, base string, pub ed25519.PublicKey, pepper string, bound bool) string {
	t.Helper()
	if st, body := getJSON(t, base+"/_matrix/identity/v2/pubkey/ed25519:0", ""); st != 200 || body["public_key"] != signing.EncodeBase64(pub) {
		t.Fatalf("public key: %d %v", st, body)
	}
	st, details := getJSON(t, base+"/_matrix/identity/v2/hash_details", "token-from-before")
	if st != 200 || details["lookup_pepper"] == nil || (pepper != "" && details["lookup_pepper"] != pepper) {
		t.Fatalf("hash_details with the token from before: %d %v (pepper before: %q)", st, details, pepper)
	}
	got := details["lookup_pepper"].(string)
	if !bound {
		return got
	}
	sum := sha256.Sum256([]byte("user042424@example.org email " + got))
	hash := base64.RawURLEncoding.EncodeToString(sum[:])
	st, body := postJSON(t, base+"/_matrix/identity/v2/lookup", "token-from-before", map[string]any{"algorithm": "sha256", "pepper": got, "addresses": []string{hash}})
	if st != 200 || body["mappings"].(map[string]any)[hash] != "@user042424:hs.test" {
		t.Errorf("hashed lookup: %d %v", st, body)
	}
	st, assoc := getJSON(t, base+"/_matrix/identity/api/v1/lookup?medium=email&address="+url.QueryEscape("user042424@example.org"), "")
	if st != 200 || assoc["mxid"] != "@user042424:hs.test" || assoc["ts"] != float64(1_600_000_042_424) || assoc["not_after"] != float64(1_600_000_042_424+1e12) {
		t.Fatalf("v1 lookup: %d %v", st, assoc)
	}
	if err := signing.Verify(assoc, "id.test", "ed25519:0", pub); err != nil {
		t.Errorf("the association does not verify with the original key: %v", err)
	}
	return got
}

// Nonsense is refused before anything is opened: a target of the same
// backend, a -to that is neither, a missing database.
func TestMigrateDBRefusals(t *testing.T) {
	dir := t.TempDir()
	boltCfg := writeFile(t, dir, "bbolt.toml", fmt.Sprintf("data_dir = %q\n", filepath.Join(dir, "data")))
	pgCfg := writeFile(t, dir, "pg.toml", "[database]\nurl = \"postgres://mxid@127.0.0.1:1/mxid\"\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-config", boltCfg}, "migrate-db needs -to"},
		{[]string{"-config", boltCfg, "-to", filepath.Join(dir, "elsewhere")}, "-to must be the postgres:// URL of an empty database (to copy the bbolt file itself, use mxid backup)"},
		{[]string{"-config", boltCfg, "-to", "postgres://mxid:secret@127.0.0.1:1/mxid?sslmode=bogus"}, "-to is not a PostgreSQL connection string: failed to configure TLS (sslmode is invalid)"},
		{[]string{"-config", boltCfg, "-to", "postgres://mxid:secret@127.0.0.1:1/mxid?pool_max_conns=abc"}, "-to is not a PostgreSQL connection string: cannot parse pool_max_conns"},
		{[]string{"-config", boltCfg, "-to", "postgres://mxid@127.0.0.1:1/mxid"}, "there is no database at " + filepath.Join(dir, "data", db.FileName) + ": nothing to copy"},
		{[]string{"-config", pgCfg, "-to", "postgres://mxid@127.0.0.1:2/other"}, "use pg_dump and pg_restore"},
	} {
		out, err := runOut(append([]string{"migrate-db"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("migrate-db %v: %v\n%s", c.args, err, out)
		} else if strings.Contains(out+err.Error(), "secret") {
			t.Errorf("migrate-db %v printed the password: %v\n%s", c.args, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Error("a refused migrate-db created data_dir")
	}
	// A directory with a signing key of its own is not a new one.
	taken := t.TempDir()
	if _, _, err := signing.LoadOrCreateKey(filepath.Join(taken, signingKeyName)); err != nil {
		t.Fatal(err)
	}
	if err := refuseExisting(filepath.Join(taken, db.FileName), filepath.Join(taken, signingKeyName)); err == nil || !strings.Contains(err.Error(), "signing.key exists") {
		t.Errorf("a directory with a key: %v", err)
	}
}

// cancelOnWrite cancels a context when a line containing word is written:
// an interrupt at a known point of a copy.
type cancelOnWrite struct {
	word   string
	cancel context.CancelFunc
	out    bytes.Buffer
}

func (c *cancelOnWrite) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(c.word)) {
		c.cancel()
	}
	return c.out.Write(p)
}

// An interrupted migrate-db (Ctrl-C, SIGTERM, a closed terminal) leaves no
// copy behind: PostgreSQL's transaction is rolled back, the new bbolt file
// is never moved into place.
func TestMigrateDBInterrupted(t *testing.T) {
	dir := t.TempDir()
	boltDir, backDir := filepath.Join(dir, "data"), filepath.Join(dir, "back")
	s, err := db.Open(boltDir)
	must(t, err)
	storetest.FillEveryKind(t, s, time.Now().UnixMilli())
	s.Close()
	dbURL := pgtest.New(t)
	cfg := DefaultConfig()
	cfg.DataDir = boltDir

	// Interrupted after the meta documents, with bindings still to come.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &cancelOnWrite{word: "meta documents copied", cancel: cancel}
	err = migrateToPostgres(ctx, cfg, dbURL, w)
	if err == nil || !strings.Contains(err.Error(), "interrupted") || !strings.Contains(err.Error(), "nothing was kept") {
		t.Fatalf("interrupted migration to PostgreSQL: %v\n%s", err, w.out.String())
	}
	pgStore, err := pg.Open(context.Background(), dbURL, pg.Options{})
	must(t, err)
	defer pgStore.Close()
	if c, err := pgStore.Counts(); err != nil || c.Total() != 0 {
		t.Fatalf("an interrupted migration left %v %v", c, err)
	}

	// The whole copy, then an interrupted copy back.
	if err := migrateToPostgres(context.Background(), cfg, dbURL, io.Discard); err != nil {
		t.Fatal(err)
	}
	cfg.Database.URL = dbURL
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	w = &cancelOnWrite{word: "bindings copied", cancel: cancel}
	err = migrateToBolt(ctx, cfg, backDir, w)
	if err == nil || !strings.Contains(err.Error(), "interrupted") || !strings.Contains(err.Error(), "nothing was written to "+backDir) {
		t.Fatalf("interrupted migration to bbolt: %v\n%s", err, w.out.String())
	}
	if left, _ := os.ReadDir(backDir); len(left) != 0 {
		t.Errorf("an interrupted migration left %v in %s", left, backDir)
	}
}
