package server

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"mxid/db/pg"
	"mxid/db/pgtest"
)

// TestTLSStorageConformance runs the same checks on certmagic's own file
// storage (the reference: what certmagic is written against) and on the
// shared storage over PostgreSQL, each through two handles on one store, as
// two replicas have.
func TestTLSStorageConformance(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "certmagic")
		storageConformance(t, &certmagic.FileStorage{Path: dir}, &certmagic.FileStorage{Path: dir}, nil)
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.New(t)
		a, b := openPG(t, url, pg.Options{}), openPG(t, url, pg.Options{})
		storageConformance(t, sharedStorage{a}, sharedStorage{b}, func() { a.Close() })
	})
}

// storageConformance checks a and b, two handles on one storage. closeA,
// when set, ends a's handle: its locks must be released.
func storageConformance(t *testing.T, a, b certmagic.Storage, closeA func()) {
	ctx := t.Context()
	notExist := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want fs.ErrNotExist", what, err)
		}
	}
	_, err := a.Load(ctx, "certificates/ca/x.example/x.example.crt")
	notExist("Load of a missing key", err)
	_, err = a.Stat(ctx, "certificates")
	notExist("Stat of a missing key", err)
	_, err = a.List(ctx, "certificates", false)
	notExist("List of a missing prefix", err)
	if a.Exists(ctx, "certificates") {
		t.Error("Exists of a missing key")
	}
	if err := a.Delete(ctx, "certificates/nothing"); err != nil {
		t.Errorf("Delete of a missing key: %v", err)
	}

	for key, value := range map[string]string{
		"a/b/c.crt": "cert", "a/b/c.key": "key", "a/d.json": "{}", "ab/x": "sibling", "a/b-x": "dash",
	} {
		if err := a.Store(ctx, key, []byte(value)); err != nil {
			t.Fatalf("Store %s: %v", key, err)
		}
	}
	if err := b.Store(ctx, "a/b/c.crt", []byte("renewed")); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Load(ctx, "a/b/c.crt"); err != nil || string(v) != "renewed" {
		t.Errorf("Load after the other handle's Store: %q, %v", v, err)
	}
	for key, want := range map[string]bool{"a": true, "a/b": true, "a/b/c.crt": true, "a/b/c": false, "ab": true, "b": false} {
		if got := b.Exists(ctx, key); got != want {
			t.Errorf("Exists(%q) = %v, want %v", key, got, want)
		}
	}
	if info, err := b.Stat(ctx, "a/b/c.crt"); err != nil || !info.IsTerminal || info.Size != int64(len("renewed")) || info.Key != "a/b/c.crt" || info.Modified.IsZero() {
		t.Errorf("Stat of a file: %+v, %v", info, err)
	}
	if info, err := b.Stat(ctx, "a/b"); err != nil || info.IsTerminal || info.Key != "a/b" {
		t.Errorf("Stat of a directory: %+v, %v", info, err)
	}
	list := func(prefix string, recursive bool, want ...string) {
		t.Helper()
		got, err := b.List(ctx, prefix, recursive)
		slices.Sort(got)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("List(%q, %v) = %q, %v; want %q", prefix, recursive, got, err, want)
		}
	}
	list("a", false, "a/b", "a/b-x", "a/d.json")
	list("a", true, "a/b", "a/b-x", "a/b/c.crt", "a/b/c.key", "a/d.json")
	list("a/b", false, "a/b/c.crt", "a/b/c.key")
	list("a/d.json", false)

	if err := b.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	list("a", true, "a/b-x", "a/d.json")
	list("ab", false, "ab/x")
	if a.Exists(ctx, "a/b/c.key") {
		t.Error("a key under a deleted directory is still there")
	}

	// Locks: one holder of a name across handles; others wait for it.
	if err := a.Lock(ctx, "issue_cert_x.example"); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(ctx, "issue_cert_y.example"); err != nil {
		t.Fatalf("another name is not held: %v", err)
	}
	if err := b.Unlock(ctx, "issue_cert_y.example"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	err = b.Lock(wctx, "issue_cert_x.example")
	cancel()
	if err == nil {
		t.Fatal("the other handle took a lock that is held")
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "issue_cert_x.example") }()
	if closeA != nil {
		closeA() // the holder goes away without unlocking
	} else if err := a.Unlock(ctx, "issue_cert_x.example"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Lock after the holder let go: %v", err)
	}
	if err := b.Unlock(ctx, "issue_cert_x.example"); err != nil {
		t.Fatal(err)
	}
}
