package db

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBackupUnderWriteLoad takes a backup while a writer keeps binding: the
// copy passes bbolt's consistency check and holds every binding committed
// before the backup started.
func TestBackupUnderWriteLoad(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := func(i int64) string { return fmt.Sprintf("user%d@example.org", i) }
	// A head start, so the copy is not trivially small.
	bs := make([]Binding, 5000)
	for i := range bs {
		bs[i] = Binding{Medium: "email", Address: addr(int64(i)), MXID: "@u:example.org"}
	}
	if _, err := s.PutBindings(bs, 1000); err != nil {
		t.Fatal(err)
	}
	var acked atomic.Int64 // bindings 0..acked-1 are committed
	acked.Store(int64(len(bs)))
	stop := make(chan struct{})
	inSwing := make(chan struct{}) // closed once the writer has committed 200 (or has failed)
	var swing sync.Once
	var wg sync.WaitGroup
	wg.Go(func() {
		defer swing.Do(func() { close(inSwing) })
		for i := int64(len(bs)); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.PutBinding(Binding{Medium: "email", Address: addr(i), MXID: "@w:example.org"}); err != nil {
				t.Error(err)
				return
			}
			acked.Store(i + 1)
			if i+1 == int64(len(bs))+200 {
				swing.Do(func() { close(inSwing) })
			}
		}
	})
	<-inSwing
	before := acked.Load()
	var buf bytes.Buffer
	var announced int64
	n, err := s.WriteBackup(&buf, func(size int64) { announced = size })
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if n != announced || n != int64(buf.Len()) {
		t.Fatalf("wrote %d bytes, announced %d, buffer %d", n, announced, buf.Len())
	}
	if acked.Load() <= before {
		t.Fatal("the writer made no progress during the backup: not under load")
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	sum, err := VerifyBackup(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(sum.Bindings) < before || sum.Schema != SchemaVersion {
		t.Fatalf("backup holds %d bindings (schema %d); %d were committed before it started", sum.Bindings, sum.Schema, before)
	}
	// The copy opens as a store and holds every early binding.
	restored := filepath.Join(t.TempDir(), "r")
	os.MkdirAll(restored, 0o700)
	os.Rename(path, filepath.Join(restored, FileName))
	r, err := Open(restored)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := int64(0); i < before; i++ {
		if _, err := r.GetBinding("email", addr(i)); err != nil {
			t.Fatalf("binding %d (committed before the backup) is missing: %v", i, err)
		}
	}
	t.Logf("backup of %d bytes holds %d bindings; %d committed before it, %d by the end", n, sum.Bindings, before, acked.Load())
}

func TestBackupOffline(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutBinding(Binding{Medium: "email", Address: "a@example.org", MXID: "@a:example.org"}); err != nil {
		t.Fatal(err)
	}
	// While the store is open the file is locked: the offline copy says so.
	var buf bytes.Buffer
	if _, err := BackupOffline(dir, &buf); !errors.Is(err, ErrInUse) {
		t.Fatalf("offline backup of a locked database: %v, want ErrInUse", err)
	}
	s.Close()
	buf.Reset()
	if _, err := BackupOffline(dir, &buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	os.WriteFile(path, buf.Bytes(), 0o600)
	sum, err := VerifyBackup(path)
	if err != nil || sum.Bindings != 1 {
		t.Fatalf("verify: %+v %v", sum, err)
	}
	// Not a database, or no database at all.
	junk := filepath.Join(t.TempDir(), "junk.db")
	os.WriteFile(junk, bytes.Repeat([]byte("x"), 8192), 0o600)
	if _, err := VerifyBackup(junk); err == nil {
		t.Error("VerifyBackup accepted junk")
	}
	if _, err := BackupOffline(t.TempDir(), &buf); err == nil {
		t.Error("BackupOffline of an empty directory succeeded")
	}
}
