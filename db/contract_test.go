package db_test

import (
	"testing"

	"mxid/db"
	"mxid/db/storetest"
)

// TestContract runs the storage contract's suite on the bbolt store.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := db.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
