package lookup_test

import (
	"fmt"
	"testing"
	"time"

	"mxid/lookup"
)

// BenchmarkLDAPLookupFilters is the work a live plaintext or v1 lookup of
// 1,000 addresses does before it sends anything to the directory: the
// filter terms of every address (for a phone number, every form a
// directory may hold it in, for each phone attribute) ORed into batches.
// It comes out of the lookup's deadline.
func BenchmarkLDAPLookupFilters(b *testing.B) {
	const n = 1000
	cfg := ldapConfig("ldap://127.0.0.1:1") // never asked
	l, err := lookup.NewLDAP(cfg, 3*time.Second, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var emails, msisdns []lookup.ThreePID
	for i := range n {
		emails = append(emails, lookup.ThreePID{Medium: "email", Address: fmt.Sprintf("user%04d@example.org", i)})
		// UK mobiles (national forms too, default_region GB) and US numbers.
		m := fmt.Sprintf("4477009%05d", i)
		if i%4 == 3 {
			m = fmt.Sprintf("1201555%04d", i)
		}
		msisdns = append(msisdns, lookup.ThreePID{Medium: "msisdn", Address: m})
	}
	for _, c := range []struct {
		name string
		tps  []lookup.ThreePID
	}{{"email", emails}, {"msisdn", msisdns}} {
		b.Run(fmt.Sprintf("%s-%d", c.name, n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if len(l.LookupFilters(c.tps)) == 0 {
					b.Fatal("no filters")
				}
			}
		})
	}
}
