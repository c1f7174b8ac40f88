// Package threepid owns the grammar of third-party identifiers: strict
// email syntax and its canonical (case-folded) form, phone numbers parsed to
// E.164 digits (with a libphonenumber port), and the lookup hash of the spec
// ("<address> <medium> <pepper>", SHA-256, URL-safe unpadded base64).
//
// It imports no mxid package; server, lookup and main all use it so a 3PID is
// canonicalised the same way wherever it enters.
package threepid

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
)

// Media mxid knows.
const (
	Email  = "email"
	MSISDN = "msisdn"
)

// ErrInvalidEmail is returned for anything that is not one plain address.
var ErrInvalidEmail = errors.New("not a valid email address")

const (
	maxEmailLen = 254
	maxLocalLen = 64
)

// Canonical returns the canonical form of address for medium: emails are
// validated and case-folded, msisdns must already be E.164 digits.
func Canonical(medium, address string) (string, error) {
	switch medium {
	case Email:
		return CanonicalEmail(address)
	case MSISDN:
		return CanonicalMSISDN(address)
	default:
		return "", errors.New("unknown medium")
	}
}

// CanonicalEmail checks that s is exactly one plain address (no display
// name, no quoted local part, no comments, one "@", no control, format or
// zero-width characters, no IP-literal or single-label domain, within the
// length limits) and returns its canonical form: the whole address under
// Unicode case folding, which also lower-cases the domain, as the spec's
// appendix asks ("Strauß@Example.com" -> "strauss@example.com"). The
// canonical form passes the same check (folding can lengthen an address:
// "ΐ" becomes three code points), so it is its own canonical form.
func CanonicalEmail(s string) (string, error) {
	if err := checkEmail(s); err != nil {
		return "", err
	}
	f := fold(s)
	if f != s {
		if err := checkEmail(f); err != nil {
			return "", err
		}
	}
	return f, nil
}

// fold is Unicode full case folding (CaseFolding.txt, statuses C and F,
// without the Turkic T mappings), exactly what Python's str.casefold does and
// so what sydent and clients hash. x/text's cases.Fold is that except for
// Cherokee (golang/go#46101): it folds the capitals, which CaseFolding.txt
// keeps, to the small letters and the small letters to the capitals, so a
// second fold undoes the first. Mapping the small letters it leaves to their
// capitals gives CaseFolding.txt's answer for both.
func fold(s string) string {
	f := cases.Fold().String(s)
	if !strings.ContainsFunc(f, cherokeeSmall) {
		return f
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 0xAB70 && r <= 0xABBF: // CHEROKEE SMALL LETTER A ... MO
			return r - 0xAB70 + 0x13A0
		case r >= 0x13F8 && r <= 0x13FD: // CHEROKEE SMALL LETTER YE ... MV
			return r - 8
		}
		return r
	}, f)
}

func cherokeeSmall(r rune) bool { return r >= 0xAB70 && r <= 0xABBF || r >= 0x13F8 && r <= 0x13FD }

// ValidEmail reports whether s passes CanonicalEmail's syntax check.
func ValidEmail(s string) bool { return checkEmail(s) == nil }

func checkEmail(s string) error {
	if len(s) < 3 || len(s) > maxEmailLen || !utf8.ValidString(s) {
		return ErrInvalidEmail
	}
	at := strings.IndexByte(s, '@')
	if at <= 0 || at != strings.LastIndexByte(s, '@') || at == len(s)-1 {
		return ErrInvalidEmail
	}
	local, domain := s[:at], s[at+1:]
	if len(local) > maxLocalLen || !validLocal(local) || !validDomain(domain) {
		return ErrInvalidEmail
	}
	return nil
}

// validLocal accepts a dot-atom: atext (RFC 5322, widened to non-ASCII
// letters and digits by RFC 6531) separated by single dots.
func validLocal(l string) bool {
	if l[0] == '.' || l[len(l)-1] == '.' || strings.Contains(l, "..") {
		return false
	}
	for _, r := range l {
		switch {
		case r < utf8.RuneSelf:
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".!#$%&'*+-/=?^_`{|}~", r)) {
				return false
			}
		case unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r) || unicode.Is(unicode.Mc, r):
		default:
			return false // spaces, controls, format (zero-width, bidi) and symbols
		}
	}
	return true
}

// validDomain accepts a DNS name of at least two labels (IDN allowed), not an
// IP literal and without a trailing dot.
func validDomain(d string) bool {
	if d == "" || d[0] == '[' || strings.HasSuffix(d, ".") {
		return false
	}
	for _, r := range d {
		if r >= utf8.RuneSelf && !(unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Mn, r) || unicode.Is(unicode.Mc, r)) {
			return false
		}
	}
	ascii, err := idna.Lookup.ToASCII(d)
	if err != nil || len(ascii) > 253 {
		return false
	}
	labels := strings.Split(ascii, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	tld := labels[len(labels)-1]
	return strings.Trim(tld, "0123456789") != "" // an all-numeric TLD is an IPv4 address
}

// EmailDomain returns the ASCII (punycode) domain of a valid address, for
// DNS lookups and SMTP.
func EmailDomain(address string) (string, error) {
	at := strings.LastIndexByte(address, '@')
	if at < 0 {
		return "", ErrInvalidEmail
	}
	return idna.Lookup.ToASCII(address[at+1:])
}

// Hash is the spec's sha256 lookup hash of a canonical address: SHA-256 of
// "<address> <medium> <pepper>", URL-safe unpadded base64.
func Hash(address, medium, pepper string) string {
	h := HashRaw(address, medium, pepper)
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// SMTPAddress is where mail for a valid address goes: the address as given,
// with an internationalised domain written in its ASCII (punycode) form.
func SMTPAddress(address string) (string, error) {
	at := strings.LastIndexByte(address, '@')
	if at < 0 {
		return "", ErrInvalidEmail
	}
	for i := at + 1; i < len(address); i++ {
		if address[i] >= utf8.RuneSelf {
			domain, err := EmailDomain(address)
			if err != nil {
				return "", ErrInvalidEmail
			}
			return address[:at+1] + domain, nil
		}
	}
	return address, nil
}

// HashRaw is Hash before the base64 encoding (the lookup index keeps the 32
// raw bytes).
func HashRaw[S ~string | ~[]byte](address, medium S, pepper string) [32]byte {
	var stack [256]byte
	n := len(address) + len(medium) + len(pepper) + 2
	buf := stack[:0]
	if n > len(stack) {
		buf = make([]byte, 0, n)
	}
	buf = append(buf, address...)
	buf = append(buf, ' ')
	buf = append(buf, medium...)
	buf = append(buf, ' ')
	buf = append(buf, pepper...)
	return sha256.Sum256(buf)
}

// DecodeHash decodes a hash as clients send it (URL-safe unpadded base64 of
// 32 bytes, canonical: the unused low bits of the last character zero); ok
// is false for anything else. It is on the path of every sha256 lookup, so
// it decodes by table, without allocating.
func DecodeHash(s string) (h [32]byte, ok bool) {
	if len(s) != 43 {
		return h, false
	}
	for g := 0; g < 10; g++ {
		a, b, c, d := urlDecode[s[4*g]], urlDecode[s[4*g+1]], urlDecode[s[4*g+2]], urlDecode[s[4*g+3]]
		if (a|b|c|d)&0xC0 != 0 {
			return h, false
		}
		v := uint32(a)<<18 | uint32(b)<<12 | uint32(c)<<6 | uint32(d)
		h[3*g], h[3*g+1], h[3*g+2] = byte(v>>16), byte(v>>8), byte(v)
	}
	a, b, c := urlDecode[s[40]], urlDecode[s[41]], urlDecode[s[42]]
	if (a|b|c)&0xC0 != 0 || c&3 != 0 {
		return h, false
	}
	v := uint32(a)<<12 | uint32(b)<<6 | uint32(c)
	h[30], h[31] = byte(v>>10), byte(v>>2)
	return h, true
}

// urlDecode maps URL-safe base64 characters to their 6 bits, 0xFF for
// anything else.
var urlDecode = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xFF
	}
	for i, c := range "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" {
		t[c] = byte(i)
	}
	return t
}()

// Infer reads an address whose medium is not given (an operator typing one
// on the command line): an email address when it has an "@", otherwise a
// phone number in international form ("+44 7700 900123", "447700900123",
// "0044 7700 900123"). It returns the medium and the canonical address.
func Infer(s string) (medium, address string, err error) {
	if strings.Contains(s, "@") {
		if address, err = CanonicalEmail(s); err != nil {
			return "", "", err
		}
		return Email, address, nil
	}
	t := strings.TrimSpace(s)
	if !strings.HasPrefix(t, "+") && !strings.HasPrefix(t, "00") && strings.Trim(t, "0123456789") != "" {
		return "", "", ErrInvalidPhone // a national number: its country is unknown
	}
	if address, err = NormalizePhone(t, ""); err != nil {
		return "", "", err
	}
	return MSISDN, address, nil
}
