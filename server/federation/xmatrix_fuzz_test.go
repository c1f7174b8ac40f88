package federation

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"mxid/server/matrixid"
	"mxid/server/signing"
)

// The X-Matrix Authorization header parser never panics; what it accepts
// names a valid origin, an ed25519 key id and a signature, and writing those
// back as a header (values quoted and escaped) parses to the same.
func FuzzParseXMatrix(f *testing.F) {
	for _, s := range []string{
		`X-Matrix origin=hs.example,key="ed25519:a",sig="c2ln"`,
		`X-Matrix origin="hs.example:8448", destination="id.example" , key="ed25519:a",sig="c2ln"`,
		`x-matrix ORIGIN=hs.example,Key=ed25519:a,SIG=c2ln,extra="a,b\"c"`,
		``, `Bearer x`, `X-Matrix`, `X-Matrix origin=hs.example,key="ed25519:a"`, `X-Matrix origin=hs.example,key="ed25519:a",sig="x`,
		`X-Matrix origin="hs example",key="ed25519:a",sig="x"`, `X-Matrix origin=hs.example,key="rsa:a",sig="x"`,
		`X-Matrix origin=hs.example key=ed25519:a sig=x`, `X-Matrix =x`,
		`X-Matrix origin=[::1]:8448,key="ed25519:a\\",sig="x\"y",destination=`, `X-Matrix origin=1.2.3.4,key=ed25519:,sig=,`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		x, err := ParseXMatrix(h)
		if err != nil {
			return
		}
		if x.Key == "" || x.Sig == "" || !matrixid.ValidServerName(x.Origin) || !strings.HasPrefix(x.Key, "ed25519:") {
			t.Fatalf("ParseXMatrix(%q) = %+v", h, x)
		}
		quote := func(s string) string {
			return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
		}
		again := "X-Matrix origin=" + quote(x.Origin) + ",key=" + quote(x.Key) + ",sig=" + quote(x.Sig)
		if x.Destination != "" {
			again += ",destination=" + quote(x.Destination)
		}
		if y, err := ParseXMatrix(again); err != nil || y != x {
			t.Fatalf("ParseXMatrix(%q) = %+v; written back as %q it parses to %+v, %v", h, x, again, y, err)
		}
	})
}

// A homeserver's key answer is checked without panicking; what is accepted
// holds 32-byte ed25519 keys, is valid now and for at most keysMaxCache, and
// carries the server's own signature by every key it signs with.
func FuzzParseServerKeys(f *testing.F) {
	now := time.UnixMilli(1_700_000_000_000)
	key := &signing.Key{ID: "ed25519:hs1", Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, ed25519.SeedSize))}
	doc := func(name string, until time.Time, keys map[string]any) []byte {
		signed, err := key.Sign(map[string]any{"server_name": name, "verify_keys": keys, "old_verify_keys": map[string]any{}, "valid_until_ts": until.UnixMilli()}, name)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := json.Marshal(signed)
		return b
	}
	mine := map[string]any{key.ID: map[string]string{"key": key.PublicBase64()}}
	f.Add(doc("hs.test", now.Add(time.Hour), mine), "hs.test")
	f.Add(doc("hs.test", now.Add(30*24*time.Hour), mine), "hs.test")
	f.Add(doc("hs.test", now.Add(-time.Hour), mine), "hs.test")
	f.Add(doc("other.test", now.Add(time.Hour), mine), "hs.test")
	f.Add(doc("hs.test", now.Add(time.Hour), map[string]any{"ed25519:x": map[string]string{"key": key.PublicBase64()}}), "hs.test")
	f.Add(doc("hs.test", now.Add(time.Hour), map[string]any{key.ID: map[string]string{"key": "short"}}), "hs.test")
	for _, s := range []string{`{}`, `null`, `[]`, `{"server_name":"hs.test","verify_keys":{},"valid_until_ts":1e20}`,
		`{"server_name":"hs.test","verify_keys":{"ed25519:a":"x"},"valid_until_ts":"1"}`} {
		f.Add([]byte(s), "hs.test")
	}
	f.Fuzz(func(t *testing.T, body []byte, server string) {
		sk, err := parseServerKeys(body, server, now)
		if err != nil {
			if !errors.Is(err, ErrBadKeys) {
				t.Fatalf("parseServerKeys(%q): %v is not ErrBadKeys", body, err)
			}
			return
		}
		if len(sk.keys) == 0 || !now.Before(sk.validUntil) || sk.validUntil.After(now.Add(keysMaxCache)) {
			t.Fatalf("parseServerKeys(%q) = %+v", body, sk)
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var v map[string]any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		signed := false
		for id, pub := range sk.keys {
			if len(pub) != ed25519.PublicKeySize || !strings.HasPrefix(id, "ed25519:") {
				t.Fatalf("key %s = %x", id, pub)
			}
			signed = signed || signing.Verify(v, server, id, pub) == nil
		}
		if !signed {
			t.Fatalf("parseServerKeys(%q) accepted keys the server did not sign with", body)
		}
	})
}
