package lookup_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"mxid/lookup"
)

// BenchmarkSnapshot measures the stored directory snapshot of a 100,000-entry
// directory (one email and, for every fifth entry, one phone number: 120,000
// 3PIDs) on bbolt: save is what a sync that found a change does after
// reading the directory (sort, one transaction replacing the snapshot);
// load is the start-up of the lookup service over it (the index built from
// the stored snapshot), with the heap it leaves behind.
func BenchmarkSnapshot(b *testing.B) {
	const entries = 100_000
	records := func(gen int) []lookup.Record {
		recs := make([]lookup.Record, 0, entries+entries/5)
		for i := range entries {
			m := fmt.Sprintf("@user%06d:example.org", i)
			recs = append(recs, lookup.Record{Medium: "email", Address: fmt.Sprintf("user%06d.%d@example.org", i, gen), MXID: m})
			if i%5 == 0 {
				recs = append(recs, lookup.Record{Medium: "msisdn", Address: fmt.Sprintf("4477009%05d", i), MXID: m})
			}
		}
		return recs
	}
	dir := b.TempDir()
	s := openStore(b, dir)
	cfg := ldapConfig("ldap://127.0.0.1:1") // never asked
	svc := newService(b, s, cfg, nil)
	gens := [][]lookup.Record{records(0), records(1)}
	gen := 0
	b.Run("save", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			gen++
			b.StopTimer()
			recs := append([]lookup.Record(nil), gens[gen%2]...) // a changed directory each time, as a sync reads it
			b.StartTimer()
			if changed, n, err := svc.LDAP.SaveSnapshot(recs); err != nil || !changed || n != len(recs) {
				b.Fatal(changed, n, err)
			}
		}
		b.StopTimer()
		if fi, err := os.Stat(filepath.Join(dir, "mxid.db")); err == nil {
			b.ReportMetric(float64(fi.Size())/(1<<20), "fileMB")
		}
	})
	svc.Close()
	b.Run("load", func(b *testing.B) {
		var before, after runtime.MemStats
		b.ReportAllocs()
		for range b.N {
			runtime.GC()
			runtime.ReadMemStats(&before)
			svc := newService(b, s, cfg, nil)
			b.StopTimer()
			if svc.Index.Size() != entries+entries/5 {
				b.Fatalf("index holds %d entries", svc.Index.Size())
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(svc)
			svc.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heapMB")
	})
}
