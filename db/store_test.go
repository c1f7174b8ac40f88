package db

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func TestOpenSecondTimeFailsClearly(t *testing.T) {
	s, dir := openTest(t)
	start := time.Now()
	_, err := Open(dir)
	if err == nil || !strings.Contains(err.Error(), "another mxid is using") {
		t.Fatalf("second open: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second open took %v", d)
	}
	if v, err := s.SchemaVersion(); err != nil || v != SchemaVersion {
		t.Errorf("schema version %d %v", v, err)
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatalf("reopen after close: %v", err)
	}
	s2.Close()
}

func TestBindingsReplaceAndReverseIndex(t *testing.T) {
	s, _ := openTest(t)
	b := Binding{Medium: "email", Address: "alice@example.org", MXID: "@alice:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}
	if prev, err := s.PutBinding(b); err != nil || prev != nil {
		t.Fatalf("first bind: %v %v", prev, err)
	}
	b2 := b
	b2.MXID = "@mallory:hs.test"
	prev, err := s.PutBinding(b2)
	if err != nil || prev == nil || prev.MXID != "@alice:hs.test" {
		t.Fatalf("rebind: %+v %v", prev, err)
	}
	got, err := s.GetBinding("email", "alice@example.org")
	if err != nil || got.MXID != "@mallory:hs.test" {
		t.Errorf("after rebind: %+v %v", got, err)
	}
	var rows []string
	s.ScanBindings(func(m, a, x []byte) error { rows = append(rows, string(m)+" "+string(a)+" "+string(x)); return nil })
	if len(rows) != 1 || rows[0] != "email alice@example.org @mallory:hs.test" {
		t.Errorf("reverse index after rebind: %v", rows)
	}
	// Only the owner's unbind removes it; unbinding twice is fine.
	if ok, err := s.DeleteBinding("email", "alice@example.org", "@alice:hs.test"); ok || err != nil {
		t.Errorf("unbind by the old owner: %v %v", ok, err)
	}
	if ok, err := s.DeleteBinding("email", "alice@example.org", "@mallory:hs.test"); !ok || err != nil {
		t.Errorf("unbind by the owner: %v %v", ok, err)
	}
	if ok, err := s.DeleteBinding("email", "alice@example.org", "@mallory:hs.test"); ok || err != nil {
		t.Errorf("second unbind: %v %v", ok, err)
	}
	if _, err := s.GetBinding("email", "alice@example.org"); err != ErrNotFound {
		t.Errorf("after unbind: %v", err)
	}
	if n, _ := s.CountBindings(); n != 0 {
		t.Errorf("count %d", n)
	}
	if _, err := s.PutBinding(Binding{Medium: "email", Address: "a\x00b", MXID: "@a:b"}); err == nil {
		t.Error("a NUL in an address was stored")
	}
}

func TestScanBindingsAcrossChunks(t *testing.T) {
	s, _ := openTest(t)
	const n = 45000 // more than two read chunks
	bs := make([]Binding, n)
	for i := range bs {
		bs[i] = Binding{Medium: "email", Address: fmt.Sprintf("u%06d@example.org", i), MXID: fmt.Sprintf("@u%06d:hs.test", i), TS: int64(i)}
	}
	if stored, err := s.PutBindings(bs, 10000); err != nil || stored != n {
		t.Fatalf("PutBindings: %d %v", stored, err)
	}
	seen := map[string]string{}
	err := s.ScanBindings(func(m, a, x []byte) error {
		if _, dup := seen[string(a)]; dup {
			return fmt.Errorf("%s seen twice", a)
		}
		seen[string(a)] = string(x)
		return nil
	})
	if err != nil || len(seen) != n {
		t.Fatalf("ScanBindings saw %d of %d: %v", len(seen), n, err)
	}
	if seen["u012345@example.org"] != "@u012345:hs.test" {
		t.Errorf("wrong mxid: %s", seen["u012345@example.org"])
	}
	if c, _ := s.CountBindings(); c != n {
		t.Errorf("CountBindings = %d", c)
	}
}

func TestAccountsAndTerms(t *testing.T) {
	s, _ := openTest(t)
	now := time.Unix(1700000000, 0)
	if err := s.CreateAccountToken("tok", "@a:hs.test", now); err != nil {
		t.Fatal(err)
	}
	a, err := s.AccountByToken("tok")
	if err != nil || a.UserID != "@a:hs.test" || a.CreatedTS != now.UnixMilli() {
		t.Errorf("AccountByToken: %+v %v", a, err)
	}
	if _, err := s.AccountByToken("other"); err != ErrNotFound {
		t.Errorf("unknown token: %v", err)
	}
	s.DeleteAccountToken("tok")
	if _, err := s.AccountByToken("tok"); err != ErrNotFound {
		t.Errorf("after delete: %v", err)
	}
	s.AcceptTerms("@a:hs.test", map[string]string{"privacy": "1"})
	s.AcceptTerms("@a:hs.test", map[string]string{"tos": "2"})
	got, _ := s.AcceptedTerms("@a:hs.test")
	if got["privacy"] != "1" || got["tos"] != "2" {
		t.Errorf("AcceptedTerms = %v", got)
	}
	if err := s.PutMeta("schema", nil); err == nil {
		t.Error("the schema key could be overwritten through PutMeta")
	}
}
