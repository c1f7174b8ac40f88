package pgtest

import (
	"strings"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

func TestDatabasesAreSeparate(t *testing.T) {
	a, b := New(t), New(t)
	if a == b {
		t.Fatalf("two tests got one database: %s", a)
	}
	srv := shared.srv
	name := a[strings.LastIndex(a, "/")+1 : strings.Index(a, "?")]
	if err := srv.SQLOn(name, "CREATE TABLE x (n int)"); err != nil {
		t.Fatal(err)
	}
	other := b[strings.LastIndex(b, "/")+1 : strings.Index(b, "?")]
	if err := srv.SQLOn(other, "SELECT * FROM x"); err == nil {
		t.Error("a table made in one test's database is visible in another's")
	}
}

// TestStopKeepsData: committed rows survive an immediate shutdown, and the
// server answers again on the same URL after Start.
func TestStopKeepsData(t *testing.T) {
	srv := Start(t)
	url := srv.NewDatabase(t)
	name := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
	if err := srv.SQLOn(name, "CREATE TABLE x (n int); INSERT INTO x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if srv.Running() {
		t.Fatal("still running after Stop")
	}
	if err := srv.SQLOn(name, "SELECT 1"); err == nil {
		t.Fatal("a stopped server answered")
	}
	srv.Start(t)
	// 1/count fails (division by zero) when the row is gone.
	if err := srv.SQLOn(name, "SELECT 1/count(*) FROM x"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
