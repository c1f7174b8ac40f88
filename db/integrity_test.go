package db

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// filledStore makes a database in a temporary directory holding n
// bindings, closed; it returns the directory.
func filledStore(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	bs := make([]Binding, n)
	for i := range bs {
		bs[i] = Binding{Medium: "email", Address: fmt.Sprintf("user%d@example.org", i), MXID: fmt.Sprintf("@user%d:hs.test", i), TS: 1, NotBefore: 1, NotAfter: 2}
	}
	if _, err := s.PutBindings(bs, 10000); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openFilled opens filledStore(t, n); the test's end closes it.
func openFilled(t *testing.T, n int) *Store {
	t.Helper()
	s, err := Open(filledStore(t, n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// wantDamaged fails unless err is a *DamagedError whose message contains
// want and ends with the advice.
func wantDamaged(t *testing.T, what string, err error, want string) {
	t.Helper()
	var de *DamagedError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), want) || !strings.HasSuffix(err.Error(), ": restore it from a backup") {
		t.Errorf("%s: %v (want a *DamagedError with %q)", what, err, want)
	}
}

// viewFile runs fn in a read transaction on the closed database at path.
func viewFile(t *testing.T, path string, fn func(*bolt.Tx)) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	bdb.View(func(tx *bolt.Tx) error { fn(tx); return nil })
}

// usedSize is what the meta page says the file needs: bbolt's tx.Size.
func usedSize(t *testing.T, path string) (n int64) {
	t.Helper()
	viewFile(t, path, func(tx *bolt.Tx) { n = tx.Size() })
	return n
}

// A file shorter than its meta page says is refused by every way in, with
// the sizes in the message; one byte longer than the pages in use is fine
// (a backup is exactly that long).
func TestTruncatedFileRefused(t *testing.T) {
	dir := filledStore(t, 20000)
	path := filepath.Join(dir, FileName)
	need := usedSize(t, path)
	fi, _ := os.Stat(path)
	if fi.Size() <= need {
		t.Fatalf("file %d bytes, %d in use: nothing to truncate", fi.Size(), need)
	}
	for _, size := range []int64{need, fi.Size() / 2, need - 1} {
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		if size >= need {
			s, err := Open(dir)
			if err != nil {
				t.Fatalf("open at %d bytes (%d in use): %v", size, need, err)
			}
			if n, _ := s.CountBindings(); n != 20000 {
				t.Errorf("%d bindings at %d bytes", n, size)
			}
			s.Close()
			need = usedSize(t, path) // the open committed: the file may have grown
			continue
		}
		want := fmt.Sprintf("%s is truncated (%d bytes, needs at least %d)", path, size, need)
		_, err := Open(dir)
		wantDamaged(t, "Open", err, want)
		_, err = CheckFile(path)
		wantDamaged(t, "CheckFile", err, want)
		_, err = BackupOffline(dir, io.Discard)
		wantDamaged(t, "BackupOffline", err, want)
		_, err = Probe(dir)
		wantDamaged(t, "Probe", err, want)
	}
	// Too short to hold a meta page at all.
	os.Truncate(path, 50)
	_, err := Open(dir)
	wantDamaged(t, "Open of 50 bytes", err, "is damaged (50 bytes and no valid bbolt meta page")
}

// overwritePage writes garbage over page id of the file at path.
func overwritePage(t *testing.T, path string, id uint64, seed uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	garbage := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	if _, err := f.WriteAt(garbage, int64(id)*4096); err != nil {
		t.Fatal(err)
	}
}

// bucketRoot is the page id of a bucket's root page.
func bucketRoot(t *testing.T, path string, name []byte) (id uint64) {
	t.Helper()
	viewFile(t, path, func(tx *bolt.Tx) { id = uint64(tx.Bucket(name).Root()) })
	if id == 0 {
		t.Fatalf("bucket %s is inline", name)
	}
	return id
}

// One meta page of garbage: bbolt uses the other one (two alternate for
// exactly this: the previous transaction's state) and the next commit
// rewrites it. Both: refused.
func TestDamagedMetaPage(t *testing.T) {
	for _, page := range []uint64{0, 1} {
		dir := filledStore(t, 2000)
		path := filepath.Join(dir, FileName)
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		s.PutMeta("x", []byte("1")) // one more commit: both meta pages see the bindings
		s.Close()
		overwritePage(t, path, page, page)
		_, err = CheckFile(path)
		wantDamaged(t, "CheckFile", err, fmt.Sprintf("meta page %d is unreadable", page))
		if _, err := Probe(dir); err != nil {
			t.Errorf("Probe (serve will rewrite the page): %v", err)
		}
		s, err = Open(dir)
		if err != nil {
			t.Fatalf("meta page %d overwritten: %v", page, err)
		}
		if !s.RewroteMeta() {
			t.Error("RewroteMeta is false")
		}
		if n, err := s.CountBindings(); n != 2000 || err != nil {
			t.Errorf("meta page %d overwritten: %d bindings, %v", page, n, err)
		}
		if r, err := s.Check(); err != nil || r.Err() != nil {
			t.Errorf("meta page %d overwritten, after a commit: %v %v", page, err, r.Err())
		}
		s.Close()
	}
	dir := filledStore(t, 10)
	path := filepath.Join(dir, FileName)
	overwritePage(t, path, 0, 1)
	overwritePage(t, path, 1, 2)
	_, err := Open(dir)
	wantDamaged(t, "both meta pages overwritten", err, "and no valid bbolt meta page")
}

// A page of garbage in the middle of the bindings: Open refuses the file
// and leaves it as it was; so does every check.
func TestGarbagePageRefused(t *testing.T) {
	dir := filledStore(t, 20000)
	path := filepath.Join(dir, FileName)
	overwritePage(t, path, bucketRoot(t, path, bucketBindings), 7)
	before, _ := os.ReadFile(path)

	_, err := Open(dir)
	wantDamaged(t, "Open", err, "is damaged (")
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("Open wrote to the damaged file")
	}
	_, err = CheckFile(path)
	wantDamaged(t, "CheckFile", err, "is damaged (")
	_, err = Probe(dir)
	wantDamaged(t, "Probe", err, "is damaged (")
	// A backup is a faithful copy: it is written, and its check fails.
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	f, _ := os.Create(copyPath)
	if _, err := BackupOffline(dir, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = VerifyBackup(copyPath)
	wantDamaged(t, "VerifyBackup", err, "is damaged (")
}

// A page that turns to garbage under an open store (the map is shared
// with the file): every operation that meets it answers a *DamagedError
// instead of crashing the process, the rest of the store still works, and
// Check finds it.
func TestGarbagePageUnderAnOpenStore(t *testing.T) {
	dir := filledStore(t, 20000)
	path := filepath.Join(dir, FileName)
	root := bucketRoot(t, path, bucketBindings)
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer s.Close()
	overwritePage(t, path, root, 7)

	_, err = s.GetBinding("email", "user5@example.org")
	wantDamaged(t, "GetBinding", err, "is damaged (")
	_, err = s.PutBinding(Binding{Medium: "email", Address: "new@example.org", MXID: "@new:hs.test", TS: 1, NotBefore: 1, NotAfter: 2})
	wantDamaged(t, "PutBinding", err, "is damaged (")
	_, err = s.CountBindings()
	wantDamaged(t, "CountBindings", err, "is damaged (")
	if err := s.CreateAccountToken("tok", "@a:hs.test", time.Now()); err != nil {
		t.Errorf("an account, elsewhere in the file: %v", err)
	}
	r, err := s.Check()
	if err != nil || r.ProblemCount == 0 {
		t.Fatalf("check of the open store: %+v %v", r, err)
	}
	wantDamaged(t, "Store.Check", r.Err(), "is damaged (")
}

// A file cut short under a running store (the disk, another program): the
// first read past the end is a SIGBUS, which becomes a *DamagedError for
// the transaction, not the end of the process.
func TestFaultPastTheEndBecomesAnError(t *testing.T) {
	s := openFilled(t, 20000)
	if err := os.Truncate(s.Path(), 3*4096); err != nil {
		t.Fatal(err)
	}
	err := s.ScanBindings(func(_, _, _ []byte) error { return nil })
	wantDamaged(t, "ScanBindings over a file cut short", err, "is damaged (a read outside the file")
}

// The check runs while writers write (it takes the writer's lock), counts
// what each bucket holds, and sees a consistent state.
func TestCheckCountsAndRunsBesideWriters(t *testing.T) {
	s := openFilled(t, 3000)
	s.CreateAccountToken("tok1", "@a:hs.test", time.Now())
	s.CreateAccountToken("tok2", "@b:hs.test", time.Now())
	create := func(sid string) func(*Session) (Session, bool, error) {
		return func(*Session) (Session, bool, error) {
			return Session{ID: sid, Medium: "email", Address: "s@example.org", ClientSecret: "cs", Token: "123", CreatedTS: 1, ModifiedTS: 1}, true, nil
		}
	}
	if _, err := s.RequestSession("email", "s@example.org", "cs", create("sid1")); err != nil {
		t.Fatal(err)
	}
	for i, addr := range []string{"inv1@example.org", "inv2@example.org"} {
		if err := s.PutInvite(Invite{Token: fmt.Sprintf("t%d", i), Medium: "email", Address: addr, RoomID: "!r:hs.test", Sender: "@s:hs.test", Ephemeral: fmt.Sprintf("eph%d", i), CreatedTS: 1, ExpiresTS: 1 << 50}); err != nil {
			t.Fatal(err)
		}
	}
	onbind := func(pending []Invite) (string, []byte, error) { return "hs.test", []byte(`{}`), nil }
	if _, _, job, err := s.Bind(Binding{Medium: "email", Address: "inv1@example.org", MXID: "@i:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}, 0, onbind); err != nil || job == nil {
		t.Fatalf("bind with a pending invite: %v %v", job, err)
	}

	var written atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.PutBinding(Binding{Medium: "email", Address: fmt.Sprintf("w%d@example.org", i), MXID: "@w:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}); err != nil {
				t.Error(err)
				return
			}
			written.Add(1)
		}
	})
	for range 5 {
		before := written.Load()
		r, err := s.Check()
		if err != nil || r.Err() != nil {
			t.Fatalf("check beside a writer: %v %v", err, r.Err())
		}
		if r.Bindings < 3001+int(before) || r.Accounts != 2 || r.Sessions != 1 || r.Invites != 2 || r.Queued != 1 || r.Schema != SchemaVersion || r.Size == 0 {
			t.Errorf("report %+v (at least %d bindings)", r, 3001+before)
		}
	}
	close(stop)
	wg.Wait()
}

// Probe: what check-config looks at.
func TestProbe(t *testing.T) {
	if _, err := Probe(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no database: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, FileName), nil, 0o600)
	if size, err := Probe(dir); size != 0 || err != nil {
		t.Errorf("empty file: %d %v", size, err)
	}
	_, err := CheckFile(filepath.Join(dir, FileName))
	wantDamaged(t, "CheckFile of an empty file", err, "is empty (0 bytes)")

	dir = filledStore(t, 10)
	if _, err := Probe(dir); err != nil {
		t.Errorf("good file: %v", err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := Probe(dir); err != nil {
		t.Errorf("good file held by a server: %v", err)
	}
	t.Logf("probe of a held file: %v", time.Since(start))
	s.PutMeta("x", nil)
	s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion+1)) })
	s.Close()
	if _, err := Probe(dir); err == nil || !strings.Contains(err.Error(), "newer than this mxid understands") {
		t.Errorf("newer schema: %v", err)
	}
}

// The meta check costs a stat and two small reads.
func BenchmarkCheckFile(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	for b.Loop() {
		if _, err := checkFile(filepath.Join(dir, FileName)); err != nil {
			b.Fatal(err)
		}
	}
}

// Damage of every shape (a few bytes or a sector, at any offset of any
// page, the page header kept or not) is refused or harmless, never a crash:
// a memory fault inside bbolt's own check would end this test binary.
// bbolt keeps no checksum of keys and values, so damage inside them passes
// every check and shows up as an error where they are read ("opened, then
// a read failed": a reverse index key without its separators).
func TestRandomDamageNeverCrashes(t *testing.T) {
	dir := filledStore(t, 1500)
	path := filepath.Join(dir, FileName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pages := usedSize(t, path) / 4096
	rng := rand.New(rand.NewPCG(1, 2))
	outcomes := map[string]int{}
	const files = 250
	for range files {
		bad := bytes.Clone(good)
		for range 1 + rng.IntN(3) {
			page := rng.Int64N(pages)
			n := 1 + rng.Int64N(512)
			off := page*4096 + rng.Int64N(4096-n)
			if rng.IntN(2) == 0 && off < page*4096+16 {
				off = page*4096 + 16 // keep the header
			}
			for i := off; i < off+n; i++ {
				bad[i] = byte(rng.Uint32())
			}
		}
		if err := os.WriteFile(path, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		_, cerr := CheckFile(path)
		s, err := Open(dir)
		var de *DamagedError
		switch {
		case err == nil:
			outcomes["opened"]++
			// Open found nothing: neither may a read of everything.
			if err := s.ScanBindings(func(_, _, _ []byte) error { return nil }); err != nil {
				outcomes["opened, then a read failed"]++
			}
			s.Close()
		case errors.As(err, &de):
			outcomes["refused"]++
		default:
			outcomes["other error"]++
			t.Logf("other error: %v", err)
		}
		if (cerr == nil) != (err == nil) && !errors.As(cerr, &de) {
			t.Logf("CheckFile %v, Open %v", cerr, err)
		}
	}
	t.Logf("%d damaged files: %v", files, outcomes)
}
