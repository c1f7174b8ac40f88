package threepid

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"strings"
	"testing"
)

// The spec's hashing examples (pepper "matrixrocks").
func TestHashSpecVectors(t *testing.T) {
	for _, c := range []struct{ address, medium, want string }{
		{"alice@example.com", Email, "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"},
		{"bob@example.com", Email, "LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8"},
		{"18005552067", MSISDN, "nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I"},
	} {
		if got := Hash(c.address, c.medium, "matrixrocks"); got != c.want {
			t.Errorf("Hash(%q, %q) = %s, want %s", c.address, c.medium, got, c.want)
		}
	}
}

func TestCanonicalEmail(t *testing.T) {
	good := map[string]string{
		"alice@example.org":         "alice@example.org",
		"Strauß@Example.COM":        "strauss@example.com",
		"Bob.Smith+tag@EXAMPLE.org": "bob.smith+tag@example.org",
		"üser@exämple.org":          "üser@exämple.org",
		"o'brien@sub.example.co.uk": "o'brien@sub.example.co.uk",
	}
	for in, want := range good {
		got, err := CanonicalEmail(in)
		if err != nil || got != want {
			t.Errorf("CanonicalEmail(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	long := make([]byte, 250)
	for i := range long {
		long[i] = 'a'
	}
	bad := []string{
		"", "a", "alice", "@example.org", "alice@", "a@b.com@c.com", "Alice <a@b.com>",
		`"a@b"@c.org`, "a@b.com, c@d.com", "a@b.com\r\nBcc: v@x.org", "a@[127.0.0.1]",
		"a@localhost", "a@example.org.", "a\u200b@x.org", "a\u202e@x.org", "a b@x.org",
		"a@1.2.3.4", ".a@x.org", "a.@x.org", "a..b@x.org", "a@-x.org", "a@x_y.org",
		"a@x..org", "a\x00@x.org", string(long) + "@x.org", "mailto:a@x.org",
	}
	for _, in := range bad {
		if got, err := CanonicalEmail(in); err == nil {
			t.Errorf("CanonicalEmail(%q) = %q, want an error", in, got)
		}
	}
}

func TestParsePhone(t *testing.T) {
	for _, c := range []struct{ country, number, msisdn string }{
		{"GB", "07700 900001", "447700900001"},
		{"GB", "+44 (0)7700-900001", "447700900001"},
		{"US", "(201) 555-0123", "12015550123"},
	} {
		msisdn, intl, _, err := ParsePhone(c.country, c.number)
		if err != nil || msisdn != c.msisdn || intl == "" {
			t.Errorf("ParsePhone(%q, %q) = %q, %q, %v; want %q", c.country, c.number, msisdn, intl, err, c.msisdn)
		}
	}
	// A number libphonenumber calls possible but not valid still has a
	// country, so per-country rules and limits apply to it.
	for _, c := range [][3]string{{"GB", "07700 900001", "GB"}, {"JE", "+44 7700 900001", "GB"}, {"US", "+44 7700 900001", "GB"}, {"GB", "+1 201 555 0123", "US"}} {
		if _, _, region, err := ParsePhone(c[0], c[1]); err != nil || region != c[2] {
			t.Errorf("ParsePhone(%q, %q) region = %q, %v; want %q", c[0], c[1], region, err, c[2])
		}
	}
	for _, c := range [][2]string{{"GB", "abc"}, {"GB", "+999 1"}, {"GB", "1234567890123456789"}, {"ZZ", "07700900001"}, {"gb", "07700900001"}, {"", "07700900001"}} {
		if m, _, _, err := ParsePhone(c[0], c[1]); err == nil {
			t.Errorf("ParsePhone(%q, %q) = %q, want an error", c[0], c[1], m)
		}
	}
	if m, err := NormalizePhone("+44 7700 900001", ""); err != nil || m != "447700900001" {
		t.Errorf("NormalizePhone = %q, %v", m, err)
	}
	if m, err := CanonicalMSISDN("447700900001"); err != nil || m != "447700900001" {
		t.Errorf("CanonicalMSISDN = %q, %v", m, err)
	}
	if _, err := CanonicalMSISDN("+447700900001"); err == nil {
		t.Error("CanonicalMSISDN accepted a leading +")
	}
}

func TestDecodeHash(t *testing.T) {
	h := Hash("alice@example.com", Email, "matrixrocks")
	raw, ok := DecodeHash(h)
	if !ok || raw != HashRaw("alice@example.com", Email, "matrixrocks") || raw != HashRaw([]byte("alice@example.com"), []byte(Email), "matrixrocks") {
		t.Fatalf("DecodeHash(%q) = %x, %v", h, raw, ok)
	}
	// Line breaks too, which encoding/base64 skips even in strict mode.
	for _, bad := range []string{"", "!!!", h[:42], h + "A", h[:42] + "=", h[:42] + "+", h[:42] + "/", h[:20] + "\n" + h[20:], h + "\r\n"} {
		if _, ok := DecodeHash(bad); ok {
			t.Errorf("DecodeHash(%q) accepted", bad)
		}
	}
}

// DecodeHash agrees with encoding/base64's strict decoder on random and
// mangled input.
func TestDecodeHashAgainstBase64(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=!"
	for range 20000 {
		var raw [32]byte
		for i := range raw {
			raw[i] = byte(rnd.IntN(256))
		}
		s := []byte(base64.RawURLEncoding.EncodeToString(raw[:]))
		if rnd.IntN(2) == 0 { // mangle one character
			s[rnd.IntN(len(s))] = alphabet[rnd.IntN(len(alphabet))]
		}
		want, err := base64.RawURLEncoding.Strict().DecodeString(string(s))
		got, ok := DecodeHash(string(s))
		if ok != (err == nil && len(want) == 32) || (ok && !bytes.Equal(got[:], want)) {
			t.Fatalf("DecodeHash(%q) = %x, %v; base64: %x, %v", s, got, ok, want, err)
		}
	}
}

// A number whose E.164 form does not read back as itself (leading zeros
// libphonenumber counts but E.164 cannot carry) or is longer than E.164
// allows has no canonical form and is refused, whichever way it comes in
// (found by FuzzPhone).
func TestPhoneWithoutCanonicalForm(t *testing.T) {
	if m, _, _, err := ParsePhone("BG", "00000000"); err == nil {
		t.Errorf(`ParsePhone("BG", "00000000") = %q`, m)
	}
	if m, err := NormalizePhone("00000000", "BG"); err == nil {
		t.Errorf(`NormalizePhone("00000000", "BG") = %q`, m)
	}
	// E.164 has at most 15 digits.
	if m, err := NormalizePhone("6200100000000000", ""); err == nil {
		t.Errorf(`NormalizePhone("6200100000000000") = %q`, m)
	}
	for _, s := range []string{"3590000000", "359000000"} {
		if m, err := CanonicalMSISDN(s); err == nil {
			if again, err := CanonicalMSISDN(m); err != nil || again != m {
				t.Errorf("CanonicalMSISDN(%q) = %q, then %q, %v", s, m, again, err)
			}
		}
	}
}

func TestPhoneForms(t *testing.T) {
	for _, c := range []struct {
		msisdn, region string
		want           []string
	}{
		{"442079460000", "GB", []string{"+442079460000", "442079460000", "+44 20 7946 0000", "020 7946 0000", "02079460000"}},
		{"447700900123", "GB", []string{"+447700900123", "447700900123", "+44 7700 900123", "07700 900123", "07700900123"}},
		// Not of the default region: no national forms (a national value
		// in the directory is read as a GB number).
		{"12015550123", "GB", []string{"+12015550123", "12015550123", "+1 201-555-0123"}},
		// "2015550123" would read as +20 (bare digits are international).
		{"12015550123", "US", []string{"+12015550123", "12015550123", "+1 201-555-0123", "(201) 555-0123"}},
		{"442079460000", "", []string{"+442079460000", "442079460000", "+44 20 7946 0000"}},
	} {
		got := PhoneForms(c.msisdn, c.region)
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("PhoneForms(%q, %q) = %q, want %q", c.msisdn, c.region, got, c.want)
		}
		// Every form reads back as the same number.
		for _, f := range got {
			if m, err := NormalizePhone(f, c.region); err != nil || m != c.msisdn {
				t.Errorf("PhoneForms(%q, %q): %q reads as %q, %v", c.msisdn, c.region, f, m, err)
			}
		}
	}
}

func TestInfer(t *testing.T) {
	for _, c := range []struct{ in, medium, address string }{
		{"Alice@Example.ORG", Email, "alice@example.org"},
		{"+44 7700 900123", MSISDN, "447700900123"},
		{"447700900123", MSISDN, "447700900123"},
		{"+1 (201) 555-0123", MSISDN, "12015550123"},
		{"07700 900123", "", ""}, // national: which country?
		{"07700900123", "", ""},
		{"alice", "", ""},
		{"a@b@c", "", ""},
		{"", "", ""},
	} {
		medium, address, err := Infer(c.in)
		if (err != nil) != (c.medium == "") || medium != c.medium || address != c.address {
			t.Errorf("Infer(%q) = %q %q %v, want %q %q", c.in, medium, address, err, c.medium, c.address)
		}
	}
}
