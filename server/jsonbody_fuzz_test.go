package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// bodySeeds are the request bodies the tests send (TestRequestBodies,
// TestRequestTokenSecurity, the lookup and homeserver tests).
var bodySeeds = []string{
	`{"user_accepts":`, `null`, `[]`, `"x"`, `1`, ``, `{"user_accepts":[]} xyz`, `{"user_accepts":[]}{}`,
	"{\"user_accepts\":[\"\xff\"]}", `{"user_accepts":["\ud800"]}`, `{"user_accepts":["\udc00\ud800"]}`,
	`{"user_accepts":NaN}`, `{"x":Infinity,"user_accepts":[]}`, `{"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
	`{"user_accepts":[],"user_accepts":[]}`, `{"user_accepts":[],"user\u005faccepts":[]}`, `{"USER_ACCEPTS":[]}`, `{}`,
	`{"user_accepts":"x"}`, `{"user_accepts":[1]}`, `{"user_accepts":[]}`, `{"x":"\ud83d\ude00","user_accepts":[]}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": 1}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": 1.5}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": 1e3}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": 18446744073709551616}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": true}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": "x"}`,
	`{"email": "a@example.org", "client_secret": "s", "send_attempt": "2"}`,
	`{"algorithm":"sha256","pepper":"matrixrocks","addresses":["4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"]}`,
	`{"algorithm":"none","pepper":"p","addresses":["alice@example.com email","18005552067 msisdn"]}`,
	`{"a":["x\"y","\u00e9"]}`, `{"threepids":[["email","a@b.org"],["msisdn","447700900001"]]}`,
	`{"sid":"1","client_secret":"s","mxid":"@a:hs.test","threepid":{"medium":"email","address":"a@b.org"}}`,
	`{"a":-0,"b":1e10,"c":-1.5E-3,"d":[true,false,null],"e":{"f":{}}}`,
}

// The strict body decoder never panics, refuses with a Matrix error, and
// accepts exactly the JSON objects encoding/json reads without loss: valid
// UTF-8, no duplicate keys, no lone surrogates, no number out of float64's
// range, at most maxJSONDepth levels (near that depth, either way). What it accepts decodes the same way
// again after re-encoding, and every accessor answers with a value or a
// Matrix error naming the field.
func FuzzParseObject(f *testing.F) {
	for _, s := range bodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		o, err := parseObject(body)
		if err != nil {
			e := wantMatrixError(t, err, "M_NOT_JSON", "M_BAD_JSON")
			ref := checkJSONObject(body)
			if e.Code == "M_BAD_JSON" && !ref.duplicate {
				t.Fatalf("parseObject(%q): %v, but there is no duplicate key", body, err)
			}
			if ref.valid && !ref.deep && !ref.lossy && !ref.duplicate {
				t.Fatalf("parseObject(%q) refused a valid JSON object: %v", body, err)
			}
			return
		}
		ref := checkJSONObject(body)
		if !ref.valid || ref.lossy || ref.duplicate {
			t.Fatalf("parseObject(%q) accepted what encoding/json reads differently: %+v", body, ref)
		}
		var viaStd map[string]any
		if err := json.Unmarshal(body, &viaStd); err != nil || len(viaStd) != len(o) {
			t.Fatalf("parseObject(%q) = %d members; encoding/json: %d, %v", body, len(o), len(viaStd), err)
		}
		again, err := json.Marshal(o)
		if err != nil {
			t.Fatalf("re-encoding %q: %v", body, err)
		}
		o2, err := parseObject(again)
		if err != nil || len(o2) != len(o) {
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		for k, raw := range o {
			var before, after any
			if json.Unmarshal(raw, &before) != nil || json.Unmarshal(o2[k], &after) != nil || !reflect.DeepEqual(before, after) {
				t.Fatalf("member %q: %s, after re-encoding %s", k, raw, o2[k])
			}
			checkAccessors(t, o, k)
		}
		if _, err := o.str("\x00missing", true); err == nil {
			t.Fatal("a missing required member was not an error")
		}
	})
}

// checkAccessors calls every accessor on member k: each gives a value that
// agrees with encoding/json or an M_INVALID_PARAM naming k.
func checkAccessors(t *testing.T, o object, k string) {
	t.Helper()
	raw := o[k]
	var std any
	if err := json.Unmarshal(raw, &std); err != nil {
		t.Fatalf("member %q = %s does not decode: %v", k, raw, err)
	}
	if o.has(k) != (std != nil) {
		t.Fatalf("has(%q) = %v for %s", k, o.has(k), raw)
	}
	if s, err := o.str(k, true); err == nil {
		if want, ok := std.(string); !ok || s != want {
			t.Fatalf("str(%q) = %q for %s", k, s, raw)
		}
	} else {
		accessorError(t, err, k, std)
	}
	if n, ok, err := o.integer(k, true, true); err == nil {
		text := strings.Trim(string(raw), `"`)
		if want, perr := strconv.ParseInt(text, 10, 64); !ok || perr != nil || n != want {
			t.Fatalf("integer(%q) = %d, %v for %s", k, n, ok, raw)
		}
	} else {
		accessorError(t, err, k, std)
	}
	if list, err := o.strList(k, true); err == nil {
		var want []string
		if json.Unmarshal(raw, &want) != nil || !reflect.DeepEqual(list, want) {
			t.Fatalf("strList(%q) = %q for %s; encoding/json: %q", k, list, raw, want)
		}
	} else {
		accessorError(t, err, k, std)
	}
	if sub, err := o.obj(k, true); err == nil {
		m, ok := std.(map[string]any)
		if !ok || len(m) != len(sub) {
			t.Fatalf("obj(%q) = %v for %s", k, sub, raw)
		}
	} else {
		accessorError(t, err, k, std)
	}
}

func accessorError(t *testing.T, err error, k string, std any) {
	t.Helper()
	codes := []string{"M_INVALID_PARAM"}
	if std == nil {
		codes = append(codes, "M_MISSING_PARAMS")
	}
	e := wantMatrixError(t, err, codes...)
	if !strings.Contains(e.Message, k) {
		t.Fatalf("error %q does not name the field %q", e.Message, k)
	}
}

// wantMatrixError checks that err is a 4xx Matrix error with one of codes.
func wantMatrixError(t *testing.T, err error, codes ...string) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Status < 400 || e.Status > 499 {
		t.Fatalf("error %v (%T) is not a 4xx Matrix error", err, err)
	}
	for _, c := range codes {
		if e.Code == c {
			return e
		}
	}
	t.Fatalf("error code %s, want one of %v (%v)", e.Code, codes, err)
	return nil
}

// jsonFacts is what encoding/json, walked token by token, says about a body.
type jsonFacts struct {
	// valid: a JSON object in valid UTF-8, no number beyond float64.
	valid bool
	// deep: nested close to maxJSONDepth or beyond.
	deep bool
	// lossy: encoding/json replaced something with U+FFFD (a lone or
	// reversed surrogate escape), so it reads other text than was sent.
	lossy bool
	// duplicate: some object holds a key twice (after unescaping).
	duplicate bool
}

var escapedFFFD = regexp.MustCompile(`\\[uU][fF][fF][fF][dD]`)

func checkJSONObject(body []byte) jsonFacts {
	var facts jsonFacts
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if !json.Valid(body) || !utf8.Valid(body) || len(trimmed) == 0 || trimmed[0] != '{' {
		return facts
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		keys   map[string]bool
		expect bool // an object expecting a key next
	}
	var stack []*frame
	numbersOK, replaced := true, false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return facts
		}
		if s, ok := tok.(string); ok && strings.ContainsRune(s, utf8.RuneError) {
			replaced = true
		}
		top := (*frame)(nil)
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].keys != nil {
				stack[len(stack)-1].expect = true
			}
			continue
		}
		if top != nil && top.keys != nil && top.expect {
			k := tok.(string)
			if top.keys[k] {
				facts.duplicate = true
			}
			top.keys[k] = true
			top.expect = false
			continue
		}
		switch v := tok.(type) {
		case json.Delim:
			f := &frame{}
			if v == '{' {
				f.keys, f.expect = map[string]bool{}, true
			}
			stack = append(stack, f)
			if len(stack) > maxJSONDepth-2 {
				facts.deep = true
			}
			continue
		case json.Number:
			if _, err := v.Float64(); err != nil {
				numbersOK = false
			}
		}
		if top != nil && top.keys != nil {
			top.expect = true
		}
	}
	facts.valid = numbersOK
	facts.lossy = replaced && !bytes.ContainsRune(body, utf8.RuneError) && !escapedFFFD.Match(body)
	return facts
}

// formSeeds are the form bodies the tests send.
var formSeeds = []string{
	url.Values{"medium": {"email"}, "address": {"carol@example.org"}, "room_id": {"!room:hs.test"}, "sender": {"@bob:hs.test"}}.Encode(),
	"client_secret=s&email=a%40example.org&send_attempt=1", "sid=1&client_secret=s&token=abc", "mxid=%40a%3Ahs.test",
	"a=1&a=2", "a=%zz", "a=%ff", "%ff=1", "a;b=1", "=x", "x", "", "a=1&&b=2", `{"email": "d@example.org", "client_secret": "s", "send_attempt": 1}`,
	"a=\x00&b=%00", "a=+b+c", "\xff=1",
}

// A form body (and a v1 request's query string) becomes an object whose
// members are JSON strings holding exactly the values url.ParseQuery reads,
// each given once; anything else is refused with a Matrix error. Through
// decodeBody, a form that starts like a JSON object is read as JSON.
func FuzzFormObject(f *testing.F) {
	for _, s := range formSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		o, err := formObject(body)
		if err != nil {
			wantMatrixError(t, err, "M_NOT_JSON", "M_BAD_JSON")
		} else {
			vals, perr := url.ParseQuery(string(body))
			if perr != nil || len(vals) != len(o) {
				t.Fatalf("formObject(%q) = %d members; url.ParseQuery: %v, %v", body, len(o), vals, perr)
			}
			for k, v := range vals {
				if !utf8.ValidString(k) {
					t.Fatalf("formObject(%q) accepted a key that is not UTF-8: %q", body, k)
				}
				got, err := o.str(k, true)
				if err != nil || len(v) != 1 || got != v[0] {
					t.Fatalf("formObject(%q)[%q] = %q, %v; the form says %q", body, k, got, err, v)
				}
			}
		}
		r, _ := http.NewRequest("POST", "/", nil)
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		o2, err := decodeBody(r, body, true)
		if err != nil {
			wantMatrixError(t, err, "M_NOT_JSON", "M_BAD_JSON")
			return
		}
		if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' {
			o, err = parseObject(body)
		}
		if err != nil || !reflect.DeepEqual(o, o2) {
			t.Fatalf("decodeBody(%q) = %v; want %v, %v", body, o2, o, err)
		}
	})
}
