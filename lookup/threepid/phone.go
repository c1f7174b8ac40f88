package threepid

import (
	"errors"
	"slices"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// ErrInvalidPhone is returned for numbers that do not parse or are not valid
// numbers of the given country.
var ErrInvalidPhone = errors.New("not a valid phone number")

// ErrInvalidCountry is returned for a country that is not an upper-case ISO
// 3166-1 alpha-2 code libphonenumber knows.
var ErrInvalidCountry = errors.New("not a valid country code")

const maxPhoneInput = 64

// ParsePhone parses a number as a user typed it ("07700 900001",
// "+44 (0)7700-900001") in the given country and returns its MSISDN (E.164
// digits without "+"), its international format for display and the region
// it belongs to.
func ParsePhone(country, number string) (msisdn, intl, region string, err error) {
	if len(country) != 2 || strings.ToUpper(country) != country || phonenumbers.GetCountryCodeForRegion(country) == 0 {
		return "", "", "", ErrInvalidCountry
	}
	if number == "" || len(number) > maxPhoneInput {
		return "", "", "", ErrInvalidPhone
	}
	num, err := phonenumbers.Parse(number, country)
	if err != nil {
		return "", "", "", ErrInvalidPhone
	}
	msisdn, ok := msisdnOf(num, "")
	if !ok {
		return "", "", "", ErrInvalidPhone
	}
	return msisdn, phonenumbers.Format(num, phonenumbers.INTERNATIONAL), regionOf(num), nil
}

// regionOf is the country a number belongs to, for per-country rules and
// limits. A number libphonenumber only calls possible may have no region of
// its own (+44 is shared by GB, GG, IM and JE): it then counts as the main
// country of its calling code, never as the country the client claims, so a
// client cannot pick its way around a denied country. Never "".
func regionOf(num *phonenumbers.PhoneNumber) string {
	if r := phonenumbers.GetRegionCodeForNumber(num); r != "" && r != "ZZ" {
		return r
	}
	return phonenumbers.GetRegionCodeForCountryCode(int(num.GetCountryCode()))
}

// CanonicalMSISDN checks that s is already an MSISDN: digits only, a valid
// number in international form.
func CanonicalMSISDN(s string) (string, error) {
	if s == "" || len(s) > 15 || strings.Trim(s, "0123456789") != "" {
		return "", ErrInvalidPhone
	}
	num, err := phonenumbers.Parse("+"+s, "")
	if err != nil {
		return "", ErrInvalidPhone
	}
	if msisdn, ok := msisdnOf(num, "+"+s); ok {
		return msisdn, nil
	}
	return "", ErrInvalidPhone
}

// NormalizePhone turns a phone number as a directory holds it
// ("+44 20 7946 0018", "0044 20…", "442079460018") into an MSISDN; numbers
// without an international prefix are read in defaultRegion (may be "").
func NormalizePhone(s, defaultRegion string) (string, error) {
	num, parsedFrom, err := parseDirectoryPhone(s, defaultRegion)
	if err != nil {
		return "", err
	}
	if msisdn, ok := msisdnOf(num, parsedFrom); ok {
		return msisdn, nil
	}
	return "", ErrInvalidPhone
}

// parseDirectoryPhone reads s as NormalizePhone does. parsedFrom is for
// msisdnOf.
func parseDirectoryPhone(s, defaultRegion string) (num *phonenumbers.PhoneNumber, parsedFrom string, err error) {
	s, ok := directoryPhoneText(s)
	if !ok {
		return nil, "", ErrInvalidPhone
	}
	num, err = phonenumbers.Parse(s, defaultRegion)
	if err != nil {
		return nil, "", ErrInvalidPhone
	}
	if defaultRegion == "" {
		parsedFrom = s
	}
	return num, parsedFrom, nil
}

// directoryPhoneText is the text NormalizePhone parses for s: bare digits
// that do not start with 0 are international.
func directoryPhoneText(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxPhoneInput {
		return "", false
	}
	if strings.Trim(s, "0123456789") == "" && !strings.HasPrefix(s, "0") {
		s = "+" + s
	}
	return s, true
}

// msisdnOf is an acceptable number's MSISDN, if that is at most 15 digits
// (E.164's limit) and reads back as the same number: libphonenumber keeps a
// count of leading zeros that E.164 cannot carry, so "00000000" in BG formats
// as +3590000000, which reads back as +359000000. Such a number has no
// canonical form and is refused. parsedFrom is the text num was parsed from
// without a default region ("" if it was not): when that is already the
// E.164 form, reading it back would give num again (Parse is a function of
// its input), so it is not read again; CanonicalMSISDN and PhoneForms, on
// the lookup path, save a parse and a validation that way.
func msisdnOf(num *phonenumbers.PhoneNumber, parsedFrom string) (string, bool) {
	if !acceptable(num) {
		return "", false
	}
	e164 := phonenumbers.Format(num, phonenumbers.E164)
	if len(e164) > 1+15 {
		return "", false
	}
	if e164 != parsedFrom {
		again, err := phonenumbers.Parse(e164, "")
		if err != nil || !acceptable(again) || phonenumbers.Format(again, phonenumbers.E164) != e164 {
			return "", false
		}
	}
	return strings.TrimPrefix(e164, "+"), true
}

// acceptable takes numbers libphonenumber calls valid, and also those of a
// known country with a possible length: number plans change faster than the
// metadata, and ranges such as the UK's 07700 900xxx are real enough to
// validate. Whether an SMS arrives is the real test.
func acceptable(num *phonenumbers.PhoneNumber) bool {
	if phonenumbers.IsValidNumber(num) {
		return true
	}
	return phonenumbers.GetRegionCodeForCountryCode(int(num.GetCountryCode())) != "ZZ" && phonenumbers.IsPossibleNumber(num)
}

// PhoneForms returns the ways a directory may hold the number msisdn (E.164
// digits), for a search that cannot canonicalise what it compares:
// "+<digits>" and "<digits>", the international format ("+44 20 7946
// 0000"), and, when the number has the country code of defaultRegion (the
// region national numbers are read in), the national format as
// libphonenumber writes it ("020 7946 0000") and its bare digits
// ("02079460000"). Each form appears once, and only forms NormalizePhone
// reads back as msisdn (so a search finds what the sync would index: bare
// national digits that look international are left out). An msisdn that
// does not parse gives only the first two.
func PhoneForms(msisdn, defaultRegion string) []string {
	forms := []string{"+" + msisdn, msisdn}
	num, err := phonenumbers.Parse("+"+msisdn, "")
	if err != nil {
		return forms
	}
	readsAsMSISDN := readsAs(num, msisdn, defaultRegion)
	for _, f := range formattedForms(num, defaultRegion) {
		if !slices.Contains(forms, f) && readsAsMSISDN(f) {
			forms = append(forms, f)
		}
	}
	return forms
}

// formattedForms are the forms of num PhoneForms considers beyond its
// digits.
func formattedForms(num *phonenumbers.PhoneNumber, defaultRegion string) []string {
	forms := []string{phonenumbers.Format(num, phonenumbers.INTERNATIONAL)}
	if defaultRegion != "" && int(num.GetCountryCode()) == phonenumbers.GetCountryCodeForRegion(defaultRegion) {
		national := phonenumbers.Format(num, phonenumbers.NATIONAL)
		forms = append(forms, national, digitsOf(national))
	}
	return forms
}

// readsAs returns what tells whether NormalizePhone(f, defaultRegion) is
// msisdn, for forms f of num, the number parsed from "+"+msisdn. A live
// lookup asks this of every form of every number before its I/O, so each
// reading is worked out once: num's own, which a form that parses as num
// shares, and each form's, which a form of the same digits shares.
func readsAs(num *phonenumbers.PhoneNumber, msisdn, defaultRegion string) func(f string) bool {
	own, ok := msisdnOf(num, "+"+msisdn)
	numReadsAsMSISDN := ok && own == msisdn
	type reading struct {
		digits string // readingKey
		same   bool
	}
	known := []reading{{"+" + msisdn, numReadsAsMSISDN}}
	return func(f string) bool {
		key, keyed := readingKey(f)
		if keyed {
			for _, r := range known {
				if r.digits == key {
					return r.same
				}
			}
		}
		same := false
		if n, parsedFrom, err := parseDirectoryPhone(f, defaultRegion); err == nil {
			if sameNumber(n, num) {
				same = numReadsAsMSISDN
			} else {
				m, ok := msisdnOf(n, parsedFrom)
				same = ok && m == msisdn
			}
		}
		if keyed {
			known = append(known, reading{key, same})
		}
		return same
	}
}

// readingKey is what Parse reads of the text NormalizePhone parses for f,
// when that is digits, a leading plus and punctuation Format writes
// (spaces, hyphens, parentheses, dots): the plus and the digits. Parse
// drops that punctuation before it reads anything (it holds no extension
// mark, no second number, no letters), and after a plus it takes the
// country from the digits, whatever the default region; so two forms with
// one key read alike: "+44 20 7946 0000" as "+442079460000" (in any
// region), "02079460000" as "020 7946 0000". ok is false for any other
// text. TestPhoneFormsEveryRegion and FuzzPhone hold this to NormalizePhone.
func readingKey(f string) (key string, ok bool) {
	f, ok = directoryPhoneText(f)
	if !ok {
		return "", false
	}
	body := strings.TrimPrefix(f, "+")
	if strings.Trim(body, "0123456789 -().") != "" {
		return "", false
	}
	return f[:len(f)-len(body)] + digitsOf(body), true
}

// digitsOf is s without what is not an ASCII digit.
func digitsOf(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}

// sameNumber reports whether a and b agree in everything msisdnOf reads
// (country code and national significant number), so that it says the
// same of both.
func sameNumber(a, b *phonenumbers.PhoneNumber) bool {
	return a.GetCountryCode() == b.GetCountryCode() && a.GetNationalNumber() == b.GetNationalNumber() &&
		a.GetItalianLeadingZero() == b.GetItalianLeadingZero() && a.GetNumberOfLeadingZeros() == b.GetNumberOfLeadingZeros()
}
