package db_test

import (
	"testing"

	"mxid/db"
	"mxid/db/storetest"
)

// The directory snapshot survives closing and reopening the file (the
// contract itself is storetest's DirectorySnapshot).
func TestDirectorySnapshotSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := db.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	recs := [][3]string{{"email", "new@example.org", "@new:example.org"}, {"msisdn", "442079460000", "@frank:example.org"}}
	if err := s.ReplaceDirectory([]byte(`{"n":2}`), storetest.PutAll(recs)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = db.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := storetest.ScanDirectory(t, s); len(got) != 2 || got[[2]string{"email", "new@example.org"}] != "@new:example.org" {
		t.Errorf("after reopen: %v", got)
	}
	if sum, ok, err := s.DirectorySummary(); string(sum) != `{"n":2}` || !ok || err != nil {
		t.Errorf("summary %q %v %v", sum, ok, err)
	}
}
