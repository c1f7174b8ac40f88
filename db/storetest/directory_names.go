package storetest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// ScanDirectoryNames reads every display name of the directory snapshot of
// s.
func ScanDirectoryNames(t *testing.T, s interface {
	ScanDirectoryNames(fn func(mxid, name []byte) error) error
}) map[string]string {
	t.Helper()
	got := map[string]string{}
	if err := s.ScanDirectoryNames(func(mxid, name []byte) error {
		got[string(mxid)] = string(name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// PutNames is a display-name fill that puts names ({mxid, name} each).
func PutNames(names [][2]string) func(put func(mxid, name string) error) error {
	return func(put func(mxid, name string) error) error {
		for _, n := range names {
			if err := put(n[0], n[1]); err != nil {
				return err
			}
		}
		return nil
	}
}

// The display names go with the directory snapshot: written in the same
// transaction as its records (all or nothing), replaced whole by the next
// snapshot, removed by a snapshot written without names and by a drop;
// accents and empty names are kept as they are.
func directoryNames(t *testing.T, s Store) {
	if got := ScanDirectoryNames(t, s); len(got) != 0 {
		t.Fatalf("a new store has names: %v", got)
	}
	recs := [][3]string{{"email", "alice@example.org", "@alice:example.org"}}
	// Larger than one scan chunk.
	var names [][2]string
	for i := range 25000 {
		names = append(names, [2]string{fmt.Sprintf("@user%05d:example.org", i), fmt.Sprintf("Ünïcödé Üser %d", i)})
	}
	names = append(names, [2]string{"@alice:example.org", "Alice Martin"}, [2]string{"@noname:example.org", ""},
		[2]string{"@alice:example.org", "Alice Martín (Accounting)"}) // a later name replaces an earlier one
	if err := s.ReplaceDirectoryWithNames([]byte(`{"n":1}`), PutAll(recs), PutNames(names)); err != nil {
		t.Fatal(err)
	}
	got := ScanDirectoryNames(t, second(t, s))
	if len(got) != 25002 || got["@alice:example.org"] != "Alice Martín (Accounting)" || got["@user24999:example.org"] != "Ünïcödé Üser 24999" {
		t.Fatalf("names: %d, alice %q", len(got), got["@alice:example.org"])
	}
	if n, ok := got["@noname:example.org"]; !ok || n != "" {
		t.Errorf("an empty name: %q %v", n, ok)
	}
	if recs := ScanDirectory(t, s); len(recs) != 1 {
		t.Errorf("records written with the names: %v", recs)
	}

	// A fill or names callback that fails, or a name that cannot be
	// stored, leaves everything as it was.
	boom := errors.New("the directory read broke off")
	for _, c := range []struct {
		name  string
		names func(put func(mxid, name string) error) error
	}{
		{"failing callback", func(put func(string, string) error) error { put("@x:example.org", "X"); return boom }},
		{"NUL in a name", PutNames([][2]string{{"@x:example.org", "a\x00b"}})},
		{"invalid UTF-8", PutNames([][2]string{{"@x:example.org", "\xff"}})},
		{"empty Matrix ID", PutNames([][2]string{{"", "Nobody"}})},
		{"too long", PutNames([][2]string{{"@x:example.org", strings.Repeat("x", 1025)}})},
	} {
		if err := s.ReplaceDirectoryWithNames([]byte(`{"n":2}`), PutAll(nil), c.names); err == nil {
			t.Errorf("%s: stored", c.name)
		}
	}
	if got := ScanDirectoryNames(t, s); len(got) != 25002 {
		t.Errorf("after refused writes: %d names", len(got))
	}
	if sum, _, _ := s.DirectorySummary(); string(sum) != `{"n":1}` {
		t.Errorf("after refused writes: summary %s", sum)
	}

	// The next snapshot replaces the names whole.
	if err := s.ReplaceDirectoryWithNames([]byte(`{"n":3}`), PutAll(recs), PutNames([][2]string{{"@bob:example.org", "Bob"}})); err != nil {
		t.Fatal(err)
	}
	if got := ScanDirectoryNames(t, second(t, s)); fmt.Sprint(got) != "map[@bob:example.org:Bob]" {
		t.Errorf("second snapshot's names: %v", got)
	}
	// A snapshot without names has none; so has a dropped one.
	if err := s.ReplaceDirectory([]byte(`{"n":4}`), PutAll(recs)); err != nil {
		t.Fatal(err)
	}
	if got := ScanDirectoryNames(t, s); len(got) != 0 {
		t.Errorf("a snapshot written without names kept %v", got)
	}
	if err := s.ReplaceDirectoryWithNames([]byte(`{"n":5}`), PutAll(recs), PutNames([][2]string{{"@bob:example.org", "Bob"}})); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceDirectory(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := ScanDirectoryNames(t, s); len(got) != 0 {
		t.Errorf("a dropped snapshot kept its names: %v", got)
	}
}
