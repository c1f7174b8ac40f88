package signing

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The canonical JSON examples of the spec's appendix.
func TestCanonicalSpecExamples(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{}`, `{}`},
		{`{"one": 1, "two": "Two"}`, `{"one":1,"two":"Two"}`},
		{`{"b": "2", "a": "1"}`, `{"a":"1","b":"2"}`},
		{`{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`},
		{`{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}`,
			`{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}`},
		{`{"a": "日本語"}`, `{"a":"日本語"}`},
		{`{"本": 2, "日": 1}`, `{"日":1,"本":2}`},
		{`{"a": "\u65E5"}`, `{"a":"日"}`},
		{`{"a": null}`, `{"a":null}`},
		{`{"a": -0, "b": 1e10}`, `{"a":0,"b":10000000000}`},
		{`{"a": "<&>\u2028\n\u0001"}`, `{"a":"<&>` + "\u2028" + `\n\u0001"}`},
	} {
		got, err := CanonicalBytes([]byte(c.in))
		if err != nil {
			t.Errorf("CanonicalBytes(%s): %v", c.in, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("CanonicalBytes(%s) = %s, want %s", c.in, got, c.want)
		}
	}
	// Trailing "}" or "]" too (found by FuzzCanonicalJSON's seeds).
	for _, bad := range []string{`{"a": 1.5}`, `{"a": 9007199254740992}`, `{"a": 1} x`, `{"a": 1}}`, `{"a": 1} ]`, `[1]]`} {
		if got, err := CanonicalBytes([]byte(bad)); err == nil {
			t.Errorf("CanonicalBytes(%s) = %s, want an error", bad, got)
		}
	}
}

// The JSON signing test vectors of the spec's appendix.
func TestSignSpecVectors(t *testing.T) {
	seed, err := DecodeBase64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
	if err != nil {
		t.Fatal(err)
	}
	key := &Key{ID: "ed25519:1", Private: ed25519.NewKeyFromSeed(seed)}
	for _, c := range []struct {
		in   string
		want string
	}{
		{`{}`, "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"},
		{`{"one": 1, "two": "Two"}`, "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"},
	} {
		var v map[string]any
		if err := json.Unmarshal([]byte(c.in), &v); err != nil {
			t.Fatal(err)
		}
		signed, err := key.Sign(v, "domain")
		if err != nil {
			t.Fatal(err)
		}
		got := signed["signatures"].(map[string]any)["domain"].(map[string]any)["ed25519:1"]
		if got != c.want {
			t.Errorf("signature of %s = %v, want %s", c.in, got, c.want)
		}
		if err := Verify(signed, "domain", "ed25519:1", key.Public()); err != nil {
			t.Errorf("Verify(own signature of %s): %v", c.in, err)
		}
		// unsigned is not covered; any other change is.
		signed["unsigned"] = map[string]any{"age_ts": 1}
		if err := Verify(signed, "domain", "ed25519:1", key.Public()); err != nil {
			t.Errorf("Verify after adding unsigned: %v", err)
		}
		signed["extra"] = "x"
		if err := Verify(signed, "domain", "ed25519:1", key.Public()); err == nil {
			t.Errorf("Verify accepted a modified object")
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("load: %v created=%v", err, created)
	}
	if k1.ID != "ed25519:0" || k2.ID != k1.ID || !k1.Public().Equal(k2.Public()) {
		t.Errorf("reloaded key differs: %s %s", k1.PublicBase64(), k2.PublicBase64())
	}
	os.Chmod(path, 0o644)
	if _, _, err := LoadOrCreateKey(path); err == nil {
		t.Error("a world-readable key file was accepted")
	}
}

// WriteKey and LoadKey move a key between places (mxid migrate-db writes
// the key kept in PostgreSQL to a file): same key, same id; an existing
// file is never overwritten.
func TestWriteAndLoadKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dir", "signing.key")
	if _, err := LoadKey(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	k, _ := NewKey("ed25519:3")
	if err := WriteKey(path, k); err != nil {
		t.Fatal(err)
	}
	got, err := LoadKey(path)
	if err != nil || got.ID != "ed25519:3" || !got.Private.Equal(k.Private) {
		t.Errorf("read back: %v %v", got, err)
	}
	if err := WriteKey(path, k); err == nil {
		t.Error("an existing key file was overwritten")
	}
	if err := WriteKey(path+".2", &Key{ID: "rsa:1", Private: k.Private}); err == nil {
		t.Error("a key id that is not ed25519:VERSION was written")
	}
}

func TestDecodeBase64Forms(t *testing.T) {
	raw := []byte{0xfb, 0xff, 0xfe, 0x01}
	for _, s := range []string{"+//+AQ", "-__-AQ", "+//+AQ=="} {
		got, err := DecodeBase64(s)
		if err != nil || string(got) != string(raw) {
			t.Errorf("DecodeBase64(%q) = %x, %v", s, got, err)
		}
	}
}

// An entity or key id that is not UTF-8 cannot travel in JSON (it would
// arrive as U+FFFD, and the signature would not be found): Sign refuses it
// (found by FuzzSignVerify).
func TestSignRefusesNonUTF8Names(t *testing.T) {
	key := &Key{ID: "ed25519:1", Private: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))}
	if _, err := key.Sign(map[string]any{}, "\xff"); err == nil {
		t.Error("Sign accepted an entity that is not UTF-8")
	}
	bad := &Key{ID: "ed25519:\xff", Private: key.Private}
	if _, err := bad.Sign(map[string]any{}, "domain"); err == nil {
		t.Error("Sign accepted a key id that is not UTF-8")
	}
}
