package db

import (
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
	// The lock wait is 1 s: the bound only catches an open that waits on.
	if d := time.Since(start); d > 10*time.Second+5*time.Second {
		t.Errorf("second open took %v with a 1s lock timeout", d)
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
