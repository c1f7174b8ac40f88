package server

import "testing"

// A form value or name whose percent-escapes spell bytes that are not UTF-8
// is refused, not read as U+FFFD (found by FuzzFormObject).
func TestFormObjectRefusesEscapedInvalidUTF8(t *testing.T) {
	for _, body := range []string{"a=%ff", "%ff=1", "email=a%C0%80%40example.org", "a=%ed%a0%80"} {
		o, err := formObject([]byte(body))
		if err == nil {
			t.Errorf("formObject(%q) = %q, want M_NOT_JSON", body, o)
			continue
		}
		if e, ok := err.(*Error); !ok || e.Code != "M_NOT_JSON" || e.Status != 400 {
			t.Errorf("formObject(%q): %v", body, err)
		}
	}
	if o, err := formObject([]byte("a=%C3%A9&b=%E2%82%AC")); err != nil || string(o["a"]) != `"é"` || string(o["b"]) != `"€"` {
		t.Errorf("escaped UTF-8: %q, %v", o, err)
	}
}

// Duplicate keys are M_BAD_JSON only in a body that is JSON; a body that is
// not is M_NOT_JSON wherever its first duplicate key is (found by
// FuzzParseObject).
func TestParseObjectDuplicateKeyInBrokenJSON(t *testing.T) {
	for body, code := range map[string]string{
		`{"a":1,"a":2`:                "M_NOT_JSON",
		`{"":[],""0000`:               "M_NOT_JSON",
		`{"a":1,"a":2} x`:             "M_NOT_JSON",
		`{"a":{"b":1,"b":2},"c":NaN}`: "M_NOT_JSON",
		`{"a":1,"a":2}`:               "M_BAD_JSON",
		`{"a":{"b":1,"b":2}}`:         "M_BAD_JSON",
	} {
		_, err := parseObject([]byte(body))
		if e, ok := err.(*Error); !ok || e.Code != code {
			t.Errorf("parseObject(%s): %v, want %s", body, err, code)
		}
	}
}
