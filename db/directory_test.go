package db

import (
	"errors"
	"fmt"
	"testing"
)

func putAll(recs [][3]string) func(put func(medium, address, mxid string) error) error {
	return func(put func(medium, address, mxid string) error) error {
		for _, r := range recs {
			if err := put(r[0], r[1], r[2]); err != nil {
				return err
			}
		}
		return nil
	}
}

func scanDirectory(t *testing.T, s *Store) map[[2]string]string {
	t.Helper()
	got := map[[2]string]string{}
	if err := s.ScanDirectory(func(m, a, x []byte) error {
		got[[2]string{string(m), string(a)}] = string(x)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// The directory snapshot is replaced whole, or not at all, and survives a
// reopen.
func TestDirectorySnapshotReplace(t *testing.T) {
	s, dir := openTest(t)
	if _, ok, err := s.DirectorySummary(); ok || err != nil {
		t.Fatalf("a new store has a snapshot: %v %v", ok, err)
	}
	// Larger than one scan chunk.
	var first [][3]string
	for i := range 45000 {
		first = append(first, [3]string{"email", fmt.Sprintf("user%05d@example.org", i), fmt.Sprintf("@user%05d:example.org", i)})
	}
	first = append(first, [3]string{"msisdn", "442079460000", "@frank:example.org"})
	if err := s.ReplaceDirectory([]byte(`{"n":1}`), putAll(first)); err != nil {
		t.Fatal(err)
	}
	if got := scanDirectory(t, s); len(got) != len(first) || got[[2]string{"email", "user44999@example.org"}] != "@user44999:example.org" {
		t.Fatalf("first snapshot: %d records", len(got))
	}
	second := [][3]string{{"email", "new@example.org", "@new:example.org"}, {"msisdn", "442079460000", "@frank:example.org"}}
	if err := s.ReplaceDirectory([]byte(`{"n":2}`), putAll(second)); err != nil {
		t.Fatal(err)
	}
	// A failing fill leaves the second snapshot as it was.
	boom := errors.New("the directory read broke off")
	err := s.ReplaceDirectory([]byte(`{"n":3}`), func(put func(string, string, string) error) error {
		put("email", "half@example.org", "@half:example.org")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("failing fill: %v", err)
	}
	if err := s.ReplaceDirectory(nil, putAll([][3]string{{"email", "a\x00b", "@x:y"}})); err == nil {
		t.Error("a NUL in an address was stored")
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := scanDirectory(t, s)
	if len(got) != 2 || got[[2]string{"email", "new@example.org"}] != "@new:example.org" || got[[2]string{"msisdn", "442079460000"}] != "@frank:example.org" {
		t.Errorf("after reopen: %v", got)
	}
	if sum, ok, err := s.DirectorySummary(); string(sum) != `{"n":2}` || !ok || err != nil {
		t.Errorf("summary %q %v %v", sum, ok, err)
	}
	mxids, err := s.DirectoryMXIDs([][2]string{{"email", "new@example.org"}, {"email", "user00001@example.org"}, {"email", "half@example.org"}, {"msisdn", "442079460000"}})
	if err != nil || fmt.Sprint(mxids) != "[@new:example.org   @frank:example.org]" {
		t.Errorf("DirectoryMXIDs = %q, %v", mxids, err)
	}
	// Dropped: nothing left, no summary.
	if err := s.ReplaceDirectory(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := scanDirectory(t, s); len(got) != 0 {
		t.Errorf("after drop: %v", got)
	}
	if _, ok, _ := s.DirectorySummary(); ok {
		t.Error("summary kept after drop")
	}
}
