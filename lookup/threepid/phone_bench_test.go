package threepid

import (
	"fmt"
	"testing"
)

// benchMSISDNs is n numbers as a plaintext lookup asks for them, read in
// default region GB: UK mobiles and London numbers (national forms too),
// and US, German and French numbers (international forms only).
func benchMSISDNs(n int) []string {
	out := make([]string, n)
	for i := range out {
		switch i % 5 {
		case 0, 1:
			out[i] = fmt.Sprintf("4477009%05d", i)
		case 2:
			out[i] = fmt.Sprintf("44207946%04d", i%10000)
		case 3:
			out[i] = fmt.Sprintf("1201555%04d", i%10000)
		default:
			out[i] = fmt.Sprintf("3361234%04d", i%10000)
		}
	}
	return out
}

// BenchmarkPhoneForms is the cost per number of the forms a live LDAP
// lookup searches for (ns/op is per number), next to CanonicalMSISDN,
// which every msisdn a client asks for goes through first.
func BenchmarkPhoneForms(b *testing.B) {
	numbers := benchMSISDNs(1000)
	for _, n := range numbers {
		if _, err := CanonicalMSISDN(n); err != nil {
			b.Fatalf("%s: %v", n, err)
		}
	}
	b.Run("PhoneForms", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if len(PhoneForms(numbers[i%len(numbers)], "GB")) < 2 {
				b.Fatal("no forms")
			}
			i++
		}
	})
	b.Run("CanonicalMSISDN", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := CanonicalMSISDN(numbers[i%len(numbers)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
