package lookup_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"mxid/lookup"
	"mxid/lookup/threepid"
)

// memStore holds bindings in memory: the benchmarks measure the index, not
// bbolt (the load benchmark, mxid bench-lookup, measures the whole server).
type memStore struct {
	mu   sync.Mutex
	rows [][3][]byte
	meta map[string][]byte
}

func (m *memStore) ScanBindings(fn func(medium, address, mxid []byte) error) error {
	for _, r := range m.rows {
		if err := fn(r[0], r[1], r[2]); err != nil {
			return err
		}
	}
	return nil
}

func (m *memStore) BoundMXIDs(tps [][2]string) ([]string, error) {
	return make([]string, len(tps)), nil
}

func (m *memStore) GetMeta(k string) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.meta[k]
	return v, ok, nil
}

func (m *memStore) PutMeta(k string, v []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.meta[k] = v
	return nil
}

func (m *memStore) CreateMeta(k string, v []byte) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.meta[k]; ok {
		return old, false, nil
	}
	m.meta[k] = v
	return v, true, nil
}

// The directory snapshot: none (BenchmarkSnapshot measures it on bbolt).
func (m *memStore) ReplaceDirectory([]byte, func(func(string, string, string) error) error) error {
	return nil
}
func (m *memStore) DirectorySummary() ([]byte, bool, error)                      { return nil, false, nil }
func (m *memStore) ScanDirectory(func(medium, address, mxid []byte) error) error { return nil }
func (m *memStore) DirectoryMXIDs(tps [][2]string) ([]string, error) {
	return make([]string, len(tps)), nil
}
func (m *memStore) ReplaceDirectoryWithNames([]byte, func(func(string, string, string) error) error, func(func(string, string) error) error) error {
	return nil
}
func (m *memStore) ScanDirectoryNames(func(mxid, name []byte) error) error { return nil }

func benchIndex(b *testing.B, n int) (*lookup.Index, *memStore) {
	b.Helper()
	st := &memStore{meta: map[string][]byte{}}
	for i := range n {
		st.rows = append(st.rows, [3][]byte{[]byte("email"), fmt.Appendf(nil, "user%d@example.org", i), fmt.Appendf(nil, "@user%d:example.org", i)})
	}
	x, err := lookup.NewIndex(lookup.IndexOptions{Store: st, Rotation: time.Hour, Grace: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	return x, st
}

// BenchmarkIndexLookup is the cost of one address of a 1,000-address
// sha256 lookup against 1M entries, half of them hits.
func BenchmarkIndexLookup(b *testing.B) {
	x, _ := benchIndex(b, 1_000_000)
	p := x.Pepper()
	batch := make([]string, 1000)
	for i := range batch {
		if i%2 == 0 {
			batch[i] = threepid.Hash(fmt.Sprintf("user%d@example.org", i*997), "email", p)
		} else {
			batch[i] = threepid.Hash(fmt.Sprintf("nobody%d@example.org", i), "email", p)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += len(batch) {
		out, err := x.LookupHashes(p, batch)
		if err != nil || out[0] == "" || out[1] != "" {
			b.Fatal("wrong answer", err)
		}
	}
}

// BenchmarkIndexRotate is one pepper rotation of 1M entries (scan, hash,
// build, swap), with lookups running meanwhile.
func BenchmarkIndexRotate(b *testing.B) {
	x, _ := benchIndex(b, 1_000_000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // lookups throughout: they must never wait for the rebuild
		h := []string{threepid.Hash("user1@example.org", "email", x.Pepper())}
		for ctx.Err() == nil {
			x.LookupHashes(x.Pepper(), h)
		}
	}()
	runtime.GC()
	b.ResetTimer()
	for range b.N {
		if err := x.Rotate(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heapMB")
}
