package threepid

import (
	"testing"

	"github.com/nyaruka/phonenumbers"
)

// phoneFormsAgree checks that PhoneForms's shortcut (readsAs) says of each
// formatted form of msisdn what NormalizePhone says, in defaultRegion.
func phoneFormsAgree(t *testing.T, msisdn, defaultRegion string) {
	t.Helper()
	num, err := phonenumbers.Parse("+"+msisdn, "")
	if err != nil {
		return
	}
	reads := readsAs(num, msisdn, defaultRegion)
	for _, f := range formattedForms(num, defaultRegion) {
		m, err := NormalizePhone(f, defaultRegion)
		if want := err == nil && m == msisdn; reads(f) != want {
			t.Errorf("%s in %q: form %q reads as %q, %v; the shortcut says %v", msisdn, defaultRegion, f, m, err, !want)
		}
	}
}

// Every example number libphonenumber has (each region, each type), read
// in its own region, in others and in none: PhoneForms keeps exactly the
// forms NormalizePhone reads back as the number.
func TestPhoneFormsEveryRegion(t *testing.T) {
	types := []phonenumbers.PhoneNumberType{phonenumbers.FIXED_LINE, phonenumbers.MOBILE, phonenumbers.TOLL_FREE,
		phonenumbers.PREMIUM_RATE, phonenumbers.SHARED_COST, phonenumbers.VOIP, phonenumbers.PERSONAL_NUMBER,
		phonenumbers.PAGER, phonenumbers.UAN, phonenumbers.VOICEMAIL}
	n := 0
	for region := range phonenumbers.GetSupportedRegions() {
		for _, typ := range types {
			ex := phonenumbers.GetExampleNumberForType(region, typ)
			if ex == nil {
				continue
			}
			msisdn := phonenumbers.Format(ex, phonenumbers.E164)[1:]
			for _, dr := range []string{region, "GB", "US", ""} {
				phoneFormsAgree(t, msisdn, dr)
			}
			n++
		}
	}
	if n < 1000 {
		t.Errorf("only %d example numbers", n)
	}
}
