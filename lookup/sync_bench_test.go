package lookup_test

import (
	"context"
	"testing"

	"mxid/lookup"
	"mxid/lookup/slapdtest"
)

// BenchmarkLDAPSync is a periodic sync of a 20,000-person directory from
// slapd that finds nothing changed (the common case): the paged reads and
// the comparison with the stored snapshot, without [directory] and with it
// (display names too, no [directory] filter). searches/op is what slapd
// was asked for.
func BenchmarkLDAPSync(b *testing.B) {
	const people = 20_000
	d := slapdtest.Start(b, slapdtest.Colleagues(people))
	searches := searchCounter(b, d)
	for _, c := range []struct {
		name string
		deps *lookup.Deps
	}{
		{"directory-off", nil},
		{"directory-on", &lookup.Deps{Directory: directoryConfig("")}},
	} {
		b.Run(c.name, func(b *testing.B) {
			svc := newService(b, openStore(b, b.TempDir()), ldapConfig(d.URL), c.deps)
			defer svc.Close()
			if _, n, err := svc.LDAP.Sync(context.Background()); err != nil || n != people {
				b.Fatalf("first sync: %d 3PIDs, %v", n, err)
			}
			searches()
			b.ReportAllocs()
			for b.Loop() {
				if changed, _, err := svc.LDAP.Sync(context.Background()); err != nil || changed {
					b.Fatalf("changed %v, %v", changed, err)
				}
			}
			b.ReportMetric(float64(searches())/float64(b.N), "searches/op")
		})
	}
}
