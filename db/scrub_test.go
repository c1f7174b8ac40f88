package db

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestScrubFreePages: after an erasure the address is still in the file's
// free pages (bbolt copies on write); the scrub zeroes them, the file stays
// sound and keeps everything else, and backups copied afterwards hold no
// trace either.
func TestScrubFreePages(t *testing.T) {
	s, dir := openTest(t)
	const secret = "scrub.me.please@example.org"
	// Enough neighbours that the binding's pages are shared with others.
	var bs []Binding
	for i := range 500 {
		bs = append(bs, Binding{Medium: "email", Address: fmt.Sprintf("n%04d@example.org", i), MXID: fmt.Sprintf("@n%04d:hs.test", i), TS: 1, NotBefore: 1, NotAfter: 2})
	}
	bs = append(bs, Binding{Medium: "email", Address: secret, MXID: "@gone:hs.test", TS: 1, NotBefore: 1, NotAfter: 2})
	if _, err := s.PutBindings(bs, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		sess := Session{ID: fmt.Sprint("sid", i), Medium: "email", Address: secret, ClientSecret: fmt.Sprint("cs", i), Token: "t", CreatedTS: 1, ModifiedTS: 1}
		if _, err := s.RequestSession("email", secret, sess.ClientSecret, func(*Session) (Session, bool, error) { return sess, true, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if !fileHolds(t, s.Path(), secret) {
		t.Fatal("the address is not in the file to begin with")
	}
	erased, err := s.EraseUser("@gone:hs.test", func(Erased) []AuditEntry { return nil })
	if err != nil || len(erased.Bindings) != 1 || erased.Sessions != 3 {
		t.Fatalf("erase: %+v %v", erased, err)
	}
	if !fileHolds(t, s.Path(), secret) {
		t.Fatal("bbolt overwrote the freed pages by itself: this test no longer shows what the scrub is for")
	}

	// A read transaction open: deferred, nothing touched.
	inView, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- s.view(func(*bolt.Tx) error {
			close(inView)
			<-release
			return nil
		})
	}()
	<-inView
	if r, err := s.ScrubFreePages(); err != nil || !r.Deferred || r.Zeroed != 0 {
		t.Errorf("scrub during a read: %+v %v", r, err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	r, err := s.ScrubFreePages()
	if err != nil || r.Deferred || r.Zeroed == 0 || r.FreePages < r.Zeroed {
		t.Fatalf("scrub: %+v %v", r, err)
	}
	if fileHolds(t, s.Path(), secret) {
		t.Error("the address is still in the file after the scrub")
	}
	if again, err := s.ScrubFreePages(); err != nil || again.Zeroed != 0 {
		t.Errorf("a second scrub zeroed %+v %v", again, err)
	}
	if rep, err := s.Check(); err != nil || rep.ProblemCount != 0 || rep.Bindings != 500 {
		t.Fatalf("check after the scrub: %+v %v", rep, err)
	}
	// Writes go on and reuse the scrubbed pages; the file reopens sound.
	for i := range 200 {
		if _, err := s.PutBinding(Binding{Medium: "email", Address: fmt.Sprintf("m%04d@example.org", i), MXID: "@m:hs.test"}); err != nil {
			t.Fatal(err)
		}
	}
	var backup bytes.Buffer
	if _, err := s.WriteBackup(&backup, nil); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(backup.Bytes(), []byte(secret)) {
		t.Error("a backup taken after the scrub holds the address")
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n, _ := s2.CountBindings(); n != 700 {
		t.Errorf("%d bindings after reopening", n)
	}
	if _, err := s2.GetBinding("email", "n0499@example.org"); err != nil {
		t.Error(err)
	}
}

func fileHolds(t *testing.T, path, s string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, []byte(s))
}
