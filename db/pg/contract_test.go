package pg

import (
	"context"
	"testing"

	"mxid/db/pgtest"
	"mxid/db/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// handle is a Store that can open another handle on its database: a
// replica, for the suite's concurrency cases.
type handle struct {
	*Store
	url string
}

func (h handle) Replica(t *testing.T) storetest.Store {
	return handle{openURL(t, h.url, Options{}), h.url}
}

// openURL opens a Store on url, closed when the test ends.
func openURL(t testing.TB, url string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestContract runs the storage contract's suite on PostgreSQL.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		url := pgtest.New(t)
		return handle{openURL(t, url, Options{}), url}
	})
}

// BenchmarkStore measures the PostgreSQL store's hot writes (storetest.Bench)
// on a local server with fsync on.
func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) storetest.Store { return openURL(b, pgtest.New(b), Options{}) })
}
