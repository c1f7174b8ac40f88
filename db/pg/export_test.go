package pg

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"mxid/db"
	"mxid/db/pgtest"
	"mxid/db/storetest"
)

func openBolt(t *testing.T) storetest.Store {
	s, err := db.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPG(t *testing.T) storetest.Store { return openURL(t, pgtest.New(t), Options{}) }

// TestCopyBetweenBackends copies every kind of record from bbolt to
// PostgreSQL and back (mxid migrate-db's two directions).
func TestCopyBetweenBackends(t *testing.T) {
	t.Run("bbolt to PostgreSQL", func(t *testing.T) {
		t.Parallel()
		storetest.RunCopy(t, openBolt, openPG)
	})
	t.Run("PostgreSQL to bbolt", func(t *testing.T) {
		t.Parallel()
		storetest.RunCopy(t, openPG, openBolt)
	})
}

// The signing key is one of PostgreSQL's records: exported first, imported
// in the same transaction (the copy signs with the same key), counted when
// the database is judged empty; the bbolt store refuses it (its key is a
// file beside it).
func TestSigningKeyMoves(t *testing.T) {
	src := openURL(t, pgtest.New(t), Options{})
	seed := bytes.Repeat([]byte{7}, 32)
	if _, created, err := src.SigningKey(func() ([]byte, error) { return seed, nil }); err != nil || !created {
		t.Fatalf("SigningKey: %v %v", created, err)
	}
	recs := storetest.Records(t, src)
	if len(recs) != 1 || !bytes.Equal(recs[0].(db.SigningKey).Seed, seed) {
		t.Fatalf("export of a database holding only its key: %#v", recs)
	}
	dst := openURL(t, pgtest.New(t), Options{})
	if c, err := dst.Import(func(put func(db.Record) error) error { return src.Export(put) }); err != nil || c[db.KindSigningKey] != 1 {
		t.Fatalf("import: %v %v", c, err)
	}
	noNewKey := errors.New("a new key was made")
	if got, created, err := dst.SigningKey(func() ([]byte, error) { return nil, noNewKey }); err != nil || created || !bytes.Equal(got, seed) {
		t.Errorf("the copy's key: %x %v %v", got, created, err)
	}
	// Any mxid that started on a database made its key: it is not empty.
	_, err := src.Import(func(func(db.Record) error) error { return nil })
	var ne *db.NotEmptyError
	if !errors.As(err, &ne) || !strings.Contains(err.Error(), "it holds the signing key") || strings.Contains(err.Error(), "secret") {
		t.Errorf("import into a database holding a key: %v", err)
	}
	bolt := openBolt(t)
	if _, err := bolt.Import(func(put func(db.Record) error) error { return src.Export(put) }); err == nil || !strings.Contains(err.Error(), "signing.key") {
		t.Errorf("a signing key into bbolt: %v", err)
	}
	if _, err := dst.Import(func(put func(db.Record) error) error { return put(db.SigningKey{Seed: []byte("short")}) }); err == nil {
		t.Error("a short seed was imported")
	}
}
