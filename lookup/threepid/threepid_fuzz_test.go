package threepid

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

// An email address's canonical form is its own canonical form, folded,
// still a valid address with a domain and a mail address, and hashes like
// the canonical form of itself, as the lookup index and clients hash it.
func FuzzCanonicalEmail(f *testing.F) {
	for _, s := range []string{
		"alice@example.org", "Strauß@Example.COM", "Bob.Smith+tag@EXAMPLE.org", "üser@exämple.org", "o'brien@sub.example.co.uk",
		"", "a", "alice", "@example.org", "alice@", "a@b.com@c.com", "Alice <a@b.com>", `"a@b"@c.org`, "a@b.com, c@d.com",
		"a@b.com\r\nBcc: v@x.org", "a@[127.0.0.1]", "a@localhost", "a@example.org.", "a\u200b@x.org", "a\u202e@x.org", "a b@x.org",
		"a@1.2.3.4", ".a@x.org", "a.@x.org", "a..b@x.org", "a@-x.org", "a@x_y.org", "a@x..org", "a\x00@x.org", "mailto:a@x.org",
		"Ᏹ@example.org", "ᏹ@example.org", "İ@example.org", "ΣΑΣ@example.gr", "ﬃ@example.org", "𐐀@example.org",
		strings.Repeat("\u0390", 32) + "@example.org", "a@İ.example", "a@XN--BCHER-KVA.example", "a@ß.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := CanonicalEmail(s)
		if err != nil {
			return
		}
		c2, err := CanonicalEmail(c)
		if err != nil || c2 != c {
			t.Fatalf("CanonicalEmail(%q) = %q, then %q, %v", s, c, c2, err)
		}
		if fold(c) != c || !ValidEmail(c) {
			t.Fatalf("CanonicalEmail(%q) = %q, not folded or not valid", s, c)
		}
		if c3, err := Canonical(Email, c); err != nil || Hash(c3, Email, "matrixrocks") != Hash(c, Email, "matrixrocks") {
			t.Fatalf("the canonical form of %q hashes differently: %q, %v", c, c3, err)
		}
		for _, a := range []string{s, c} {
			if _, err := EmailDomain(a); err != nil {
				t.Fatalf("EmailDomain(%q): %v", a, err)
			}
			if _, err := SMTPAddress(a); err != nil {
				t.Fatalf("SMTPAddress(%q): %v", a, err)
			}
		}
	})
}

// A phone number parsed in a country, or normalised from a directory,
// gives an MSISDN that is its own canonical form, that reads back as itself
// in any country, and hashes like its canonical form; PhoneForms keeps
// exactly the forms NormalizePhone reads back as it, in that country (and
// as the input, taken for an msisdn, which it may not be).
func FuzzPhone(f *testing.F) {
	for _, c := range [][2]string{
		{"GB", "07700 900001"}, {"GB", "+44 (0)7700-900001"}, {"US", "(201) 555-0123"}, {"JE", "+44 7700 900001"},
		{"US", "+44 7700 900001"}, {"GB", "+1 201 555 0123"}, {"GB", "abc"}, {"GB", "+999 1"}, {"GB", "1234567890123456789"},
		{"ZZ", "07700900001"}, {"gb", "07700900001"}, {"", "07700900001"}, {"", "+44 7700 900001"}, {"", "447700900001"},
		{"GB", "0044 20 7946 0018"}, {"GB", "020 7946 0000"}, {"DE", "+49 30 123456"}, {"", "18005552067"}, {"GB", "+447700900001;ext=1"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, country, number string) {
		check := func(how, msisdn string) {
			t.Helper()
			if c, err := CanonicalMSISDN(msisdn); err != nil || c != msisdn {
				t.Fatalf("%s = %q, whose canonical form is %q, %v", how, msisdn, c, err)
			}
			if c, err := Canonical(MSISDN, msisdn); err != nil || Hash(c, MSISDN, "matrixrocks") != Hash(msisdn, MSISDN, "matrixrocks") {
				t.Fatalf("%s = %q hashes unlike its canonical form %q, %v", how, msisdn, c, err)
			}
			if m, err := NormalizePhone(msisdn, ""); err != nil || m != msisdn {
				t.Fatalf("%s = %q, normalised again: %q, %v", how, msisdn, m, err)
			}
			if m, _, _, err := ParsePhone("GB", "+"+msisdn); err != nil || m != msisdn {
				t.Fatalf("%s = %q, parsed again with +: %q, %v", how, msisdn, m, err)
			}
			phoneFormsAgree(t, msisdn, country)
		}
		phoneFormsAgree(t, number, country)
		if m, intl, region, err := ParsePhone(country, number); err == nil {
			if intl == "" || region == "" {
				t.Fatalf("ParsePhone(%q, %q) = %q, %q, %q", country, number, m, intl, region)
			}
			check("ParsePhone("+country+", "+number+")", m)
		}
		if m, err := NormalizePhone(number, country); err == nil {
			check("NormalizePhone("+number+", "+country+")", m)
		}
		if m, err := CanonicalMSISDN(number); err == nil {
			check("CanonicalMSISDN("+number+")", m)
		}
	})
}

// A lookup hash decodes exactly when encoding/base64's strict URL-safe
// decoder reads 32 bytes from it (and it holds no line break, which that
// decoder skips), to the same bytes, which encode back to the same text.
func FuzzDecodeHash(f *testing.F) {
	h := Hash("alice@example.com", Email, "matrixrocks")
	for _, s := range []string{h, "", "!!!", h[:42], h + "A", h[:42] + "=", h[:42] + "+", h[:42] + "/", h[:42] + "B",
		"LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8", "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I", strings.Repeat("_", 43),
		h[:20] + "\n" + h[20:]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := DecodeHash(s)
		want, err := base64.RawURLEncoding.Strict().DecodeString(s)
		if ok != (err == nil && len(want) == 32 && !strings.ContainsAny(s, "\r\n")) || ok && !bytes.Equal(got[:], want) {
			t.Fatalf("DecodeHash(%q) = %x, %v; base64: %x, %v", s, got, ok, want, err)
		}
		if ok && base64.RawURLEncoding.EncodeToString(got[:]) != s {
			t.Fatalf("DecodeHash(%q) = %x, which encodes differently", s, got)
		}
	})
}

// FuzzInfer: whatever an operator types, an accepted address is canonical
// for the medium inferred, and reading it again gives the same.
func FuzzInfer(f *testing.F) {
	for _, s := range []string{"alice@example.org", "Alice@Example.ORG", "+44 7700 900123", "447700900123", "0044 7700 900123",
		"07700 900123", "07700900123", "+1 (201) 555-0123", "", "@", "+", "abc", "a@b", "+44 7700 900123 ext 1", "１２３"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		medium, address, err := Infer(s)
		if err != nil {
			return
		}
		if c, err := Canonical(medium, address); err != nil || c != address {
			t.Fatalf("Infer(%q) = %s %q, whose canonical form is %q, %v", s, medium, address, c, err)
		}
		if m2, a2, err := Infer(address); err != nil || m2 != medium || a2 != address {
			t.Fatalf("Infer(%q) = %s %q, then %s %q, %v", s, medium, address, m2, a2, err)
		}
	})
}
