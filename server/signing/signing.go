// Package signing owns mxid's ed25519 keys and the Matrix JSON signing
// rules: canonical JSON, signing and verifying JSON objects, and unpadded
// base64 (standard and URL-safe).
//
// It imports only the standard library and is a leaf (DESIGN.md section
// 1): any mxid package may import it.
package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// LongTermKeyID is the key id of the server's long-term signing key.
const LongTermKeyID = "ed25519:0"

// Key is a named ed25519 key pair.
type Key struct {
	ID      string
	Private ed25519.PrivateKey
}

// Public returns the public half.
func (k *Key) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// PublicBase64 is the public key as unpadded standard base64, the form the
// pubkey endpoints publish.
func (k *Key) PublicBase64() string { return EncodeBase64(k.Public()) }

// LoadOrCreateKey reads the long-term key from path (LoadKey) or, when the
// file does not exist, creates one from crypto/rand and writes it
// (WriteKey).
func LoadOrCreateKey(path string) (*Key, bool, error) {
	k, err := LoadKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return k, false, err
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, false, err
	}
	k = &Key{ID: LongTermKeyID, Private: ed25519.NewKeyFromSeed(seed)}
	if err := WriteKey(path, k); err != nil {
		return nil, false, err
	}
	return k, true, nil
}

// LoadKey reads a key file: a 32-byte seed in unpadded base64 on one line,
// as "ed25519 0 <seed>" (key id ed25519:0), readable by its owner only. A
// missing file satisfies errors.Is(err, os.ErrNotExist).
func LoadKey(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	fields := strings.Fields(string(data))
	if len(fields) != 3 || fields[0] != "ed25519" {
		return nil, fmt.Errorf("%s: not an ed25519 signing key file", path)
	}
	seed, err := DecodeBase64(fields[2])
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: malformed key seed", path)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v); run chmod 600 on it", path, st.Mode().Perm())
	}
	return &Key{ID: "ed25519:" + fields[1], Private: ed25519.NewKeyFromSeed(seed)}, nil
}

// WriteKey writes k to a new key file at path (LoadKey's format), with
// mode 0600 and synced; an existing file is an error.
func WriteKey(path string, k *Key) error {
	algorithm, version, ok := strings.Cut(k.ID, ":")
	if !ok || algorithm != "ed25519" || version == "" || strings.ContainsAny(version, " \t\n") {
		return fmt.Errorf("key id %q is not ed25519:VERSION", k.ID)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create signing key: %w", err)
	}
	_, err = f.WriteString("ed25519 " + version + " " + EncodeBase64(k.Private.Seed()) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// NewKey makes a fresh key with the given id from crypto/rand.
func NewKey(id string) (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Key{ID: id, Private: priv}, nil
}

// EncodeBase64 is unpadded standard base64.
func EncodeBase64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// EncodeBase64URL is unpadded URL-safe base64.
func EncodeBase64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// DecodeBase64 accepts standard or URL-safe base64, padded or not, as the
// spec allows for keys (v1.15).
func DecodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// Canonical encodes a JSON value (as produced by encoding/json decoding into
// any, or any Go value that marshals to JSON) as Matrix canonical JSON:
// sorted keys, no insignificant white space, UTF-8 unescaped, integers only.
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return CanonicalBytes(raw)
}

// CanonicalBytes re-encodes a JSON document canonically.
func CanonicalBytes(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	// Not dec.More, which takes a stray "]" or "}" for the end of a value.
	if len(bytes.TrimLeft(raw[dec.InputOffset():], " \t\r\n")) != 0 {
		return nil, errors.New("trailing data after JSON value")
	}
	var buf bytes.Buffer
	if err := writeCanonical(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeCanonical(buf *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		if x {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
	case json.Number:
		n, err := canonicalNumber(string(x))
		if err != nil {
			return err
		}
		buf.WriteString(n)
	case string:
		writeString(buf, x)
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeCanonical(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		// Go compares strings bytewise, and UTF-8 byte order is code point order.
		sort.Strings(keys)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := writeCanonical(buf, x[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("canonical JSON: unexpected %T", v)
	}
	return nil
}

// canonicalNumber accepts integral values in the safe range, also when
// written with an exponent or a zero fraction (1e10, 1.0), and refuses the
// rest; -0 becomes 0.
func canonicalNumber(s string) (string, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n > 1<<53-1 || n < -(1<<53-1) {
			return "", fmt.Errorf("canonical JSON: integer %s out of range", s)
		}
		return strconv.FormatInt(n, 10), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53-1 {
		return "", fmt.Errorf("canonical JSON: %s is not an integer in range", s)
	}
	return strconv.FormatInt(int64(f), 10), nil
}

func writeString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '"':
			buf.WriteString(`\"`)
		case r == '\\':
			buf.WriteString(`\\`)
		case r == '\b':
			buf.WriteString(`\b`)
		case r == '\f':
			buf.WriteString(`\f`)
		case r == '\n':
			buf.WriteString(`\n`)
		case r == '\r':
			buf.WriteString(`\r`)
		case r == '\t':
			buf.WriteString(`\t`)
		case r < 0x20:
			buf.WriteString(`\u00`)
			buf.WriteByte(hex[r>>4])
			buf.WriteByte(hex[r&0xF])
		default:
			buf.WriteString(s[i : i+size])
		}
		i += size
	}
	buf.WriteByte('"')
}

// signable returns obj without its signatures and unsigned members, and the
// signatures it carried.
func signable(obj map[string]any) (map[string]any, map[string]any, error) {
	body := make(map[string]any, len(obj))
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			body[k] = v
		}
	}
	sigs := map[string]any{}
	if raw, ok := obj["signatures"]; ok {
		m, ok := raw.(map[string]any)
		if !ok {
			return nil, nil, errors.New("signatures is not an object")
		}
		sigs = m
	}
	return body, sigs, nil
}

// toMap round-trips v through JSON so any struct or map can be signed.
func toMap(v any) (map[string]any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("can only sign JSON objects")
	}
	return m, nil
}

// Sign adds this key's signature, under entity, to the JSON object v and
// returns the signed object (v itself is not modified).
func (k *Key) Sign(v any, entity string) (map[string]any, error) {
	// JSON would carry such a name as U+FFFD: the signature could not be found.
	if !utf8.ValidString(entity) || !utf8.ValidString(k.ID) {
		return nil, errors.New("signing entity and key id must be UTF-8")
	}
	obj, err := toMap(v)
	if err != nil {
		return nil, err
	}
	body, sigs, err := signable(obj)
	if err != nil {
		return nil, err
	}
	canon, err := Canonical(body)
	if err != nil {
		return nil, err
	}
	sig := EncodeBase64(ed25519.Sign(k.Private, canon))
	mine, _ := sigs[entity].(map[string]any)
	if mine == nil {
		mine = map[string]any{}
	}
	mine[k.ID] = sig
	sigs[entity] = mine
	obj["signatures"] = sigs
	return obj, nil
}

// Verify checks that v carries a valid signature by entity with key id keyID
// and public key pub.
func Verify(v any, entity, keyID string, pub ed25519.PublicKey) error {
	obj, err := toMap(v)
	if err != nil {
		return err
	}
	body, sigs, err := signable(obj)
	if err != nil {
		return err
	}
	mine, _ := sigs[entity].(map[string]any)
	sigB64, _ := mine[keyID].(string)
	if sigB64 == "" {
		return fmt.Errorf("no signature by %s with %s", entity, keyID)
	}
	sig, err := DecodeBase64(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return errors.New("malformed signature")
	}
	if len(pub) != ed25519.PublicKeySize {
		return errors.New("malformed public key")
	}
	canon, err := Canonical(body)
	if err != nil {
		return err
	}
	if !ed25519.Verify(pub, canon, sig) {
		return errors.New("signature does not verify")
	}
	return nil
}
