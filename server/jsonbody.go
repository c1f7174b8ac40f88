package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// object is a decoded JSON request body: its top-level members, each still
// raw. Field accessors decode one member at a time so that every error names
// the field it is about.
type object map[string]json.RawMessage

// maxJSONDepth bounds nesting; no request mxid understands nests deeper than a
// few levels.
const maxJSONDepth = 32

// readObject reads the request body with the size cap and decodes it as a
// JSON object, strictly: invalid UTF-8, lone surrogates, NaN, trailing data,
// non-object bodies and too-deep nesting are M_NOT_JSON; duplicate keys are
// M_BAD_JSON. When allowForm is set, a deprecated
// application/x-www-form-urlencoded body is accepted too, every value a
// string.
func (s *Server) readObject(r *http.Request, allowForm bool) (object, error) {
	body, err := s.readBody(r)
	if err != nil {
		return nil, err
	}
	return decodeBody(r, body, allowForm)
}

// readBody reads the request body with the size cap.
func (s *Server) readBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, s.cfg.HTTP.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Request body is larger than %d bytes", s.cfg.HTTP.MaxBodyBytes)
		}
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Could not read the request body")
	}
	return body, nil
}

// decodeBody decodes a body read by readBody as readObject does.
func decodeBody(r *http.Request, body []byte, allowForm bool) (object, error) {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	// curl -d sends JSON labelled as a form: a body that starts like a JSON
	// object is read as one.
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); ct == "application/x-www-form-urlencoded" && (len(trimmed) == 0 || trimmed[0] != '{') {
		if !allowForm {
			return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "This endpoint takes a JSON object (Content-Type: application/json), not a form")
		}
		return formObject(body)
	}
	return parseObject(body)
}

// emptyBody reports whether a body holds nothing (or a bare JSON null).
func emptyBody(body []byte) bool {
	t := bytes.TrimSpace(body)
	return len(t) == 0 || string(t) == "null"
}

func formObject(body []byte) (object, error) {
	if !utf8.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Body is not valid UTF-8")
	}
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Malformed form body")
	}
	o := object{}
	for k, v := range vals {
		// Percent-escapes may spell bytes that are not UTF-8 ("%ff"), which
		// json.Marshal would silently turn into U+FFFD.
		if !utf8.ValidString(k) || !utf8.ValidString(v[0]) {
			return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Form body is not valid UTF-8 once decoded")
		}
		if len(v) != 1 {
			return nil, errorf(http.StatusBadRequest, "M_BAD_JSON", "Parameter %s given more than once", k)
		}
		raw, _ := json.Marshal(v[0])
		o[k] = raw
	}
	return o, nil
}

// parseObject is the strict decoder behind readObject.
func parseObject(body []byte) (object, error) {
	if !utf8.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Body is not valid UTF-8")
	}
	v := validator{data: body}
	v.skipSpace()
	if v.pos >= len(body) || body[v.pos] != '{' {
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Body must be a JSON object")
	}
	if err := v.value(0); err != nil {
		return nil, err
	}
	v.skipSpace()
	if v.pos != len(body) {
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Unexpected data after the JSON object")
	}
	if v.duplicate != nil { // reported only once the body is known to be JSON
		return nil, v.duplicate
	}
	var o object
	if err := json.Unmarshal(body, &o); err != nil {
		return nil, errorf(http.StatusBadRequest, "M_NOT_JSON", "Body is not valid JSON")
	}
	return o, nil
}

// validator is a small RFC 8259 checker that also refuses what
// encoding/json lets through silently: duplicate keys, lone surrogates and
// deep nesting.
type validator struct {
	data      []byte
	pos       int
	duplicate error // the first duplicate key
}

var errNotJSON = errorf(http.StatusBadRequest, "M_NOT_JSON", "Body is not valid JSON")

func (v *validator) skipSpace() {
	for v.pos < len(v.data) {
		switch v.data[v.pos] {
		case ' ', '\t', '\n', '\r':
			v.pos++
		default:
			return
		}
	}
}

func (v *validator) value(depth int) error {
	if depth > maxJSONDepth {
		return errorf(http.StatusBadRequest, "M_NOT_JSON", "JSON nested too deeply")
	}
	v.skipSpace()
	if v.pos >= len(v.data) {
		return errNotJSON
	}
	switch c := v.data[v.pos]; {
	case c == '{':
		return v.object(depth)
	case c == '[':
		return v.array(depth)
	case c == '"':
		_, err := v.str()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		return v.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if strings.HasPrefix(string(v.data[v.pos:min(len(v.data), v.pos+5)]), lit) {
				v.pos += len(lit)
				return nil
			}
		}
		return errNotJSON
	}
}

func (v *validator) object(depth int) error {
	v.pos++ // {
	seen := map[string]struct{}{}
	v.skipSpace()
	if v.pos < len(v.data) && v.data[v.pos] == '}' {
		v.pos++
		return nil
	}
	for {
		v.skipSpace()
		if v.pos >= len(v.data) || v.data[v.pos] != '"' {
			return errNotJSON
		}
		k, err := v.str()
		if err != nil {
			return err
		}
		if _, dup := seen[k]; dup && v.duplicate == nil {
			v.duplicate = errorf(http.StatusBadRequest, "M_BAD_JSON", "Duplicate key %q in JSON object", truncate(k, 40))
		}
		seen[k] = struct{}{}
		v.skipSpace()
		if v.pos >= len(v.data) || v.data[v.pos] != ':' {
			return errNotJSON
		}
		v.pos++
		if err := v.value(depth + 1); err != nil {
			return err
		}
		v.skipSpace()
		if v.pos >= len(v.data) {
			return errNotJSON
		}
		switch v.data[v.pos] {
		case ',':
			v.pos++
		case '}':
			v.pos++
			return nil
		default:
			return errNotJSON
		}
	}
}

func (v *validator) array(depth int) error {
	v.pos++ // [
	v.skipSpace()
	if v.pos < len(v.data) && v.data[v.pos] == ']' {
		v.pos++
		return nil
	}
	for {
		if err := v.value(depth + 1); err != nil {
			return err
		}
		v.skipSpace()
		if v.pos >= len(v.data) {
			return errNotJSON
		}
		switch v.data[v.pos] {
		case ',':
			v.pos++
		case ']':
			v.pos++
			return nil
		default:
			return errNotJSON
		}
	}
}

// str checks a string literal and returns its decoded value. Decoding is
// only done when there is an escape; the fast path is a slice.
func (v *validator) str() (string, error) {
	v.pos++ // opening quote
	start := v.pos
	escaped := false
	for v.pos < len(v.data) {
		c := v.data[v.pos]
		switch {
		case c == '"':
			raw := v.data[start:v.pos]
			v.pos++
			if !escaped {
				return string(raw), nil
			}
			return unescape(raw)
		case c == '\\':
			escaped = true
			v.pos += 2
		case c < 0x20:
			return "", errNotJSON
		default:
			v.pos++
		}
	}
	return "", errNotJSON
}

// unescape decodes the escapes of a string literal body, refusing unknown
// escapes and unpaired surrogates.
func unescape(raw []byte) (string, error) {
	var sb strings.Builder
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			sb.WriteByte(c)
			i++
			continue
		}
		if i+1 >= len(raw) {
			return "", errNotJSON
		}
		switch raw[i+1] {
		case '"', '\\', '/':
			sb.WriteByte(raw[i+1])
		case 'b':
			sb.WriteByte('\b')
		case 'f':
			sb.WriteByte('\f')
		case 'n':
			sb.WriteByte('\n')
		case 'r':
			sb.WriteByte('\r')
		case 't':
			sb.WriteByte('\t')
		case 'u':
			r, ok := hex4(raw[i+2:])
			if !ok {
				return "", errNotJSON
			}
			i += 6
			if utf16.IsSurrogate(r) {
				if r >= 0xDC00 || i+1 >= len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
					return "", errorf(http.StatusBadRequest, "M_NOT_JSON", "Unpaired UTF-16 surrogate in string")
				}
				r2, ok := hex4(raw[i+2:])
				if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
					return "", errorf(http.StatusBadRequest, "M_NOT_JSON", "Unpaired UTF-16 surrogate in string")
				}
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			sb.WriteRune(r)
			continue
		default:
			return "", errNotJSON
		}
		i += 2
	}
	return sb.String(), nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 32)
	return rune(n), err == nil
}

func (v *validator) number() error {
	start := v.pos
	if v.data[v.pos] == '-' {
		v.pos++
	}
	digits := func() int {
		n := 0
		for v.pos < len(v.data) && v.data[v.pos] >= '0' && v.data[v.pos] <= '9' {
			v.pos++
			n++
		}
		return n
	}
	if v.pos < len(v.data) && v.data[v.pos] == '0' {
		v.pos++
	} else if digits() == 0 {
		return errNotJSON
	}
	if v.pos < len(v.data) && v.data[v.pos] == '.' {
		v.pos++
		if digits() == 0 {
			return errNotJSON
		}
	}
	if v.pos < len(v.data) && (v.data[v.pos] == 'e' || v.data[v.pos] == 'E') {
		v.pos++
		if v.pos < len(v.data) && (v.data[v.pos] == '+' || v.data[v.pos] == '-') {
			v.pos++
		}
		if digits() == 0 {
			return errNotJSON
		}
	}
	if f, err := strconv.ParseFloat(string(v.data[start:v.pos]), 64); err != nil || math.IsInf(f, 0) {
		return errNotJSON
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// str returns the string member name. A missing member is M_MISSING_PARAMS
// when required, "" otherwise; any other type is M_INVALID_PARAM.
func (o object) str(name string, required bool) (string, error) {
	raw, ok := o[name]
	if !ok || string(raw) == "null" {
		if required {
			return "", errMissing(name)
		}
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errInvalid(name, "must be a string")
	}
	return s, nil
}

// has reports whether the member is present and not null.
func (o object) has(name string) bool {
	raw, ok := o[name]
	return ok && string(raw) != "null"
}

// integer returns an integer member. With allowString, a string holding a
// decimal integer is accepted too (real clients send send_attempt as "1").
func (o object) integer(name string, required, allowString bool) (int64, bool, error) {
	raw, ok := o[name]
	if !ok || string(raw) == "null" {
		if required {
			return 0, false, errMissing(name)
		}
		return 0, false, nil
	}
	text := string(raw)
	if allowString && len(text) > 0 && text[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false, errInvalid(name, "must be an integer")
		}
		text = s
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil || n > 1<<53-1 || n < -(1<<53-1) {
		return 0, false, errInvalid(name, "must be an integer")
	}
	return n, true, nil
}

// strList returns a member that must be an array of strings.
func (o object) strList(name string, required bool) ([]string, error) {
	raw, ok := o[name]
	if !ok || string(raw) == "null" {
		if required {
			return nil, errMissing(name)
		}
		return nil, nil
	}
	if list, ok := plainStrList(raw); ok {
		return list, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil || list == nil {
		return nil, errInvalid(name, "must be a list of strings")
	}
	return list, nil
}

// plainStrList decodes an array of strings without escapes (a lookup's
// 10,000 hashes) in one pass with one allocation for all the text; ok is
// false for anything else, which encoding/json then decodes. raw has passed
// the strict validator.
func plainStrList(raw json.RawMessage) ([]string, bool) {
	i, n := 0, len(raw)
	skip := func() {
		for i < n && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
			i++
		}
	}
	if n == 0 || raw[0] != '[' {
		return nil, false
	}
	text := string(raw) // one copy; the strings below share it
	i++
	list := make([]string, 0, bytes.Count(raw, []byte{','})+1)
	skip()
	if i < n && raw[i] == ']' {
		return list, i+1 == n
	}
	for {
		skip()
		if i >= n || raw[i] != '"' {
			return nil, false
		}
		start := i + 1
		j := bytes.IndexByte(raw[start:], '"')
		if j < 0 || bytes.IndexByte(raw[start:start+j], '\\') >= 0 {
			return nil, false
		}
		list = append(list, text[start:start+j])
		i = start + j + 1
		skip()
		if i >= n {
			return nil, false
		}
		if raw[i] == ']' {
			return list, i+1 == n
		}
		if raw[i] != ',' {
			return nil, false
		}
		i++
	}
}

// obj returns a member that must itself be an object.
func (o object) obj(name string, required bool) (object, error) {
	raw, ok := o[name]
	if !ok || string(raw) == "null" {
		if required {
			return nil, errMissing(name)
		}
		return nil, nil
	}
	var sub object
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &sub) != nil {
		return nil, errInvalid(name, "must be an object")
	}
	return sub, nil
}
