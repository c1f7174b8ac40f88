package federation

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"mxid/server/matrixid"
	"mxid/server/signing"
)

// X-Matrix request authentication, as identity servers see it: a homeserver
// signs {method, uri, origin, destination or destination_is, content} with
// its server key and sends
//
//	Authorization: X-Matrix origin="hs.example",destination="id.example",key="ed25519:a",sig="…"
//
// The verifier fetches the origin's keys from /_matrix/key/v2/server
// through the outbound policy, checks that answer (its own self-signature
// included), caches it until valid_until_ts (at most 7 days, as the
// server-server spec says), and checks the request signature.

var (
	// ErrMalformedAuth: an X-Matrix header without origin, key or sig, or
	// with an invalid origin.
	ErrMalformedAuth = errors.New("malformed X-Matrix authorization")
	// ErrBadSignature: the signature does not verify with the origin's key.
	ErrBadSignature = errors.New("X-Matrix signature does not verify")
	// ErrWrongDestination: the request was addressed to another server.
	ErrWrongDestination = errors.New("X-Matrix destination is not this server")
	// ErrBadKeys: the origin's key answer is malformed, unsigned, stale or
	// lacks the key used.
	ErrBadKeys = errors.New("the homeserver's signing keys are not valid")
)

const (
	keysMaxBytes = 50 << 10
	keysMaxCache = 7 * 24 * time.Hour
	// keysRefetch: how soon an origin's keys may be fetched again when a
	// request names a key we do not know (bounds what a bad signer costs).
	keysRefetch  = time.Minute
	keysMaxCount = 10000
	maxXMatrix   = 4 // headers looked at per request
)

// KeyCache fetches, checks and caches homeservers' signing keys and
// verifies X-Matrix signed requests with them.
type KeyCache struct {
	r   *Resolver
	now func() time.Time

	mu      sync.Mutex
	servers map[string]*serverKeys
}

type serverKeys struct {
	keys       map[string]ed25519.PublicKey
	validUntil time.Time
	fetched    time.Time
}

// NewKeyCache builds a cache that fetches through r. now may be nil.
func NewKeyCache(r *Resolver, now func() time.Time) *KeyCache {
	if now == nil {
		now = time.Now
	}
	return &KeyCache{r: r, now: now, servers: map[string]*serverKeys{}}
}

// XMatrix is one parsed X-Matrix Authorization header.
type XMatrix struct {
	Origin, Destination, Key, Sig string
}

// ParseXMatrix parses `X-Matrix origin=…,key="…",sig="…"[,destination="…"]`.
// Values may be quoted (with backslash escapes) or bare tokens; parameter
// names are case-insensitive; unknown parameters are ignored.
func ParseXMatrix(h string) (XMatrix, error) {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "X-Matrix") {
		return XMatrix{}, fmt.Errorf("%w: not an X-Matrix header", ErrMalformedAuth)
	}
	var x XMatrix
	for rest = strings.TrimSpace(rest); rest != ""; {
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return XMatrix{}, fmt.Errorf("%w: expected name=value", ErrMalformedAuth)
		}
		name := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimSpace(rest[eq+1:])
		var value string
		if strings.HasPrefix(rest, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				b.WriteByte(rest[i])
			}
			if i >= len(rest) {
				return XMatrix{}, fmt.Errorf("%w: unterminated quoted value", ErrMalformedAuth)
			}
			value, rest = b.String(), strings.TrimSpace(rest[i+1:])
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			value, rest = strings.TrimSpace(rest[:end]), rest[end:]
		}
		if rest != "" {
			if rest[0] != ',' {
				return XMatrix{}, fmt.Errorf("%w: expected a comma", ErrMalformedAuth)
			}
			rest = strings.TrimSpace(rest[1:])
		}
		switch name {
		case "origin":
			x.Origin = value
		case "destination":
			x.Destination = value
		case "key":
			x.Key = value
		case "sig":
			x.Sig = value
		}
	}
	if x.Origin == "" || x.Key == "" || x.Sig == "" {
		return XMatrix{}, fmt.Errorf("%w: origin, key and sig are required", ErrMalformedAuth)
	}
	if !matrixid.ValidServerName(x.Origin) {
		return XMatrix{}, fmt.Errorf("%w: origin is not a valid server name", ErrMalformedAuth)
	}
	if !strings.HasPrefix(x.Key, "ed25519:") {
		return XMatrix{}, fmt.Errorf("%w: key is not an ed25519 key id", ErrMalformedAuth)
	}
	return x, nil
}

// SignedRequest is what a homeserver signed.
type SignedRequest struct {
	Method string
	URI    string // path and query as sent
	// Content is the JSON body (anything json.Marshal accepts); nil for
	// none.
	Content any
	// Destinations are the names this server answers to; the signed
	// destination (or Synapse's destination_is) must be one of them.
	Destinations []string
}

// VerifyRequest checks the X-Matrix headers of a request; the first that
// verifies gives the origin. Errors wrap ErrMalformedAuth, ErrBadSignature,
// ErrWrongDestination, ErrBadKeys or ErrUnreachable.
func (c *KeyCache) VerifyRequest(ctx context.Context, req SignedRequest, headers []string) (string, error) {
	if len(headers) > maxXMatrix {
		headers = headers[:maxXMatrix]
	}
	var firstErr error
	for _, h := range headers {
		origin, err := c.verifyOne(ctx, req, h)
		if err == nil {
			return origin, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("%w: no X-Matrix header", ErrMalformedAuth)
	}
	return "", firstErr
}

func (c *KeyCache) verifyOne(ctx context.Context, req SignedRequest, header string) (string, error) {
	x, err := ParseXMatrix(header)
	if err != nil {
		return "", err
	}
	sig, err := signing.DecodeBase64(x.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return "", fmt.Errorf("%w: sig is not a base64 ed25519 signature", ErrMalformedAuth)
	}
	dests := req.Destinations
	if x.Destination != "" {
		found := false
		for _, d := range req.Destinations {
			if strings.EqualFold(d, x.Destination) {
				found = true
			}
		}
		if !found {
			return "", fmt.Errorf("%w: %q", ErrWrongDestination, x.Destination)
		}
		dests = []string{x.Destination}
	}
	pub, err := c.Key(ctx, x.Origin, x.Key)
	if err != nil {
		return "", err
	}
	for _, d := range dests {
		for _, field := range []string{"destination", "destination_is"} {
			obj := map[string]any{"method": req.Method, "uri": req.URI, "origin": x.Origin, field: d}
			if req.Content != nil {
				obj["content"] = req.Content
			}
			canon, err := signing.Canonical(obj)
			if err != nil {
				return "", fmt.Errorf("%w: content cannot be canonicalised: %v", ErrBadSignature, err)
			}
			if ed25519.Verify(pub, canon, sig) {
				return x.Origin, nil
			}
		}
	}
	return "", fmt.Errorf("%w (origin %s, key %s)", ErrBadSignature, x.Origin, x.Key)
}

// Key returns the verified public key keyID of server, fetching the
// server's keys when they are not cached, expired, or lack keyID (at most
// once a minute for the latter).
func (c *KeyCache) Key(ctx context.Context, server, keyID string) (ed25519.PublicKey, error) {
	c.mu.Lock()
	now := c.now()
	e := c.servers[server]
	if e != nil && now.Before(e.validUntil) {
		if k, ok := e.keys[keyID]; ok {
			c.mu.Unlock()
			return k, nil
		}
		if now.Sub(e.fetched) < keysRefetch {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: %s has no key %s", ErrBadKeys, server, keyID)
		}
	}
	c.mu.Unlock()

	fetched, err := c.fetch(ctx, server, now)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.servers) >= keysMaxCount {
		clear(c.servers)
	}
	c.servers[server] = fetched
	c.mu.Unlock()
	k, ok := fetched.keys[keyID]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no key %s", ErrBadKeys, server, keyID)
	}
	return k, nil
}

// fetch gets and checks GET /_matrix/key/v2/server: server_name must be
// the server, verify_keys an object of 32-byte ed25519 keys,
// valid_until_ts an integer in the future, and the answer signed by the
// server with every key it signs with listed in verify_keys (and at least
// one signature).
func (c *KeyCache) fetch(ctx context.Context, server string, now time.Time) (*serverKeys, error) {
	resp, err := c.r.Do(ctx, server, http.MethodGet, "/_matrix/key/v2/server", nil, nil, keysMaxBytes)
	if err != nil {
		if errors.Is(err, ErrUnreachable) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("%w: key request answered HTTP %d", ErrUnreachable, resp.Status)
	}
	return parseServerKeys(resp.Body, server, now)
}

// parseServerKeys checks a /_matrix/key/v2/server answer of server, as
// fetch describes.
func parseServerKeys(body []byte, server string, now time.Time) (*serverKeys, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil || doc == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrBadKeys)
	}
	if name, _ := doc["server_name"].(string); name != server {
		return nil, fmt.Errorf("%w: server_name %q is not %q", ErrBadKeys, name, server)
	}
	vk, ok := doc["verify_keys"].(map[string]any)
	if !ok || len(vk) == 0 {
		return nil, fmt.Errorf("%w: verify_keys is not a non-empty object", ErrBadKeys)
	}
	keys := map[string]ed25519.PublicKey{}
	for id, v := range vk {
		m, _ := v.(map[string]any)
		b64, _ := m["key"].(string)
		raw, err := signing.DecodeBase64(b64)
		if !strings.HasPrefix(id, "ed25519:") || err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: verify_keys.%s is not an ed25519 key", ErrBadKeys, id)
		}
		keys[id] = ed25519.PublicKey(raw)
	}
	num, ok := doc["valid_until_ts"].(json.Number)
	if !ok {
		return nil, fmt.Errorf("%w: valid_until_ts is not an integer", ErrBadKeys)
	}
	until, err := strconv.ParseInt(num.String(), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: valid_until_ts is not an integer", ErrBadKeys)
	}
	validUntil := time.UnixMilli(until)
	if !now.Before(validUntil) {
		return nil, fmt.Errorf("%w: the keys expired at %s", ErrBadKeys, validUntil.UTC().Format(time.RFC3339))
	}
	sigs, _ := doc["signatures"].(map[string]any)
	own, _ := sigs[server].(map[string]any)
	if len(own) == 0 {
		return nil, fmt.Errorf("%w: not signed by %s", ErrBadKeys, server)
	}
	for id := range own {
		pub, ok := keys[id]
		if !ok {
			return nil, fmt.Errorf("%w: signed with %s, which verify_keys does not list", ErrBadKeys, id)
		}
		if err := signing.Verify(doc, server, id, pub); err != nil {
			return nil, fmt.Errorf("%w: self-signature %s: %v", ErrBadKeys, id, err)
		}
	}
	if validUntil.After(now.Add(keysMaxCache)) {
		validUntil = now.Add(keysMaxCache)
	}
	return &serverKeys{keys: keys, validUntil: validUntil, fetched: now}, nil
}
