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
