package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// canonicalSeeds are the documents the tests canonicalise and sign.
var canonicalSeeds = []string{
	`{}`, `{"one": 1, "two": "Two"}`, `{"b": "2", "a": "1"}`, `{"b":"2","a":"1"}`,
	`{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}`,
	`{"a": "日本語"}`, `{"本": 2, "日": 1}`, `{"a": "\u65E5"}`, `{"a": null}`, `{"a": -0, "b": 1e10}`,
	`{"a": "<&>\u2028\n\u0001"}`, `{"a": 1.5}`, `{"a": 9007199254740992}`, `{"a": 1} x`, `{"a": 1}}`, `[1,2]`, `"x"`,
	`{"a":1,"a":2}`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}", `{"signatures":{"domain":{"ed25519:1":"x"}},"unsigned":{"age_ts":1}}`,
	`{"a":1E2,"b":-1.0e0,"c":0.0}`,
}

// The canonical form is valid JSON, in valid UTF-8, that decodes to the
// same value as the input, and is its own canonical form; only valid JSON
// has one.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range canonicalSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := CanonicalBytes(raw)
		if err != nil {
			return
		}
		if !json.Valid(raw) {
			t.Fatalf("CanonicalBytes(%q) = %q, but the input is not JSON", raw, c)
		}
		if !json.Valid(c) || !utf8.Valid(c) {
			t.Fatalf("CanonicalBytes(%q) = %q: not JSON in UTF-8", raw, c)
		}
		again, err := CanonicalBytes(c)
		if err != nil || !bytes.Equal(again, c) {
			t.Fatalf("CanonicalBytes(%q) = %q, then %q, %v", raw, c, again, err)
		}
		var in, out any
		if err := json.Unmarshal(raw, &in); err != nil {
			t.Fatalf("input %q: %v", raw, err)
		}
		if err := json.Unmarshal(c, &out); err != nil || !reflect.DeepEqual(in, out) {
			t.Fatalf("CanonicalBytes(%q) = %q decodes to %v, the input to %v (%v)", raw, c, out, in, err)
		}
	})
}

var fuzzKey = &Key{ID: "ed25519:1", Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))}

// Verify never panics on what a peer may send (any JSON, any names, any
// key bytes) and accepts only what the key signed.
func FuzzVerify(f *testing.F) {
	signed, _ := fuzzKey.Sign(map[string]any{"one": 1, "two": "Two"}, "domain")
	signedJSON, _ := json.Marshal(signed)
	f.Add(signedJSON, "domain", "ed25519:1", []byte(fuzzKey.Public()))
	for _, s := range canonicalSeeds {
		f.Add([]byte(s), "domain", "ed25519:1", []byte(fuzzKey.Public()))
	}
	f.Add([]byte(`{"signatures":"x"}`), "domain", "ed25519:1", []byte{1, 2})
	f.Add([]byte(`{"signatures":{"domain":"x"}}`), "domain", "ed25519:1", []byte(fuzzKey.Public()))
	f.Add([]byte(`{"signatures":{"domain":{"ed25519:1":"!!"}}}`), "domain", "ed25519:1", []byte(fuzzKey.Public()))
	f.Fuzz(func(t *testing.T, doc []byte, entity, keyID string, pub []byte) {
		dec := json.NewDecoder(bytes.NewReader(doc))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) != nil {
			return
		}
		if Verify(v, entity, keyID, ed25519.PublicKey(pub)) != nil {
			return
		}
		// Accepted: the signature under entity and keyID is pub's over the
		// canonical object without signatures and unsigned.
		m := v.(map[string]any)
		sig, err := DecodeBase64(m["signatures"].(map[string]any)[entity].(map[string]any)[keyID].(string))
		if err != nil {
			t.Fatalf("Verify accepted %q with a malformed signature", doc)
		}
		rest := map[string]any{}
		for k, x := range m {
			if k != "signatures" && k != "unsigned" {
				rest[k] = x
			}
		}
		canon, err := Canonical(rest)
		if err != nil || !ed25519.Verify(pub, canon, sig) {
			t.Fatalf("Verify accepted %q, which pub did not sign (%v)", doc, err)
		}
	})
}

// Whatever object is signed verifies, also after the trip through JSON a
// receiver makes (numbers read as float64); with another entity, key id or
// key, or with a member changed, it does not.
func FuzzSignVerify(f *testing.F) {
	for _, s := range canonicalSeeds {
		f.Add([]byte(s), "domain")
	}
	f.Fuzz(func(t *testing.T, doc []byte, entity string) {
		var v map[string]any
		if json.Unmarshal(doc, &v) != nil || v == nil {
			return
		}
		signed, err := fuzzKey.Sign(v, entity)
		if err != nil {
			return // not canonicalisable (a fraction, a number out of range) or bad signatures
		}
		wire, err := json.Marshal(signed)
		if err != nil {
			t.Fatalf("marshal %v: %v", signed, err)
		}
		var received map[string]any
		if err := json.Unmarshal(wire, &received); err != nil {
			t.Fatalf("%s: %v", wire, err)
		}
		for _, got := range []map[string]any{signed, received} {
			if err := Verify(got, entity, fuzzKey.ID, fuzzKey.Public()); err != nil {
				t.Fatalf("Verify(Sign(%s)) = %v; on the wire %s", doc, err, wire)
			}
		}
		other := &Key{ID: "ed25519:1", Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, ed25519.SeedSize))}
		if Verify(received, entity+"x", fuzzKey.ID, fuzzKey.Public()) == nil ||
			Verify(received, entity, "ed25519:2", fuzzKey.Public()) == nil ||
			Verify(received, entity, fuzzKey.ID, other.Public()) == nil {
			t.Fatalf("a signature of %s verified under another entity, key id or key", doc)
		}
		received["\x00changed"] = true
		if Verify(received, entity, fuzzKey.ID, fuzzKey.Public()) == nil {
			t.Fatalf("a changed %s still verifies", doc)
		}
	})
}
