package server

import (
	"sync"
	"time"

	"mxid/db"
)

// maxCachedTokens bounds each tokenCache.
const maxCachedTokens = 100000

// tokenCache remembers a value per access token, by the hash mxid keeps of
// a token (db.TokenHash, never the token), with the time it was put. It
// holds at most maxCachedTokens: when full, entries older than keep go
// first, then any (asking again costs only a round trip).
type tokenCache[V any] struct {
	now  func() time.Time
	keep time.Duration

	mu      sync.Mutex
	entries map[string]cachedToken[V]
}

type cachedToken[V any] struct {
	v  V
	at time.Time
}

func newTokenCache[V any](now func() time.Time, keep time.Duration) *tokenCache[V] {
	return &tokenCache[V]{now: now, keep: keep, entries: map[string]cachedToken[V]{}}
}

// tokenCacheKey is the key of tok: db.TokenHash, the hash a ChangeToken
// carries (in hex), so that a token removed on another replica is
// forgotten here.
func tokenCacheKey(tok string) string { return string(db.TokenHash(tok)) }

func (c *tokenCache[V]) put(tok string, v V) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= maxCachedTokens {
		for k, e := range c.entries {
			if now.Sub(e.at) >= c.keep {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < maxCachedTokens {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[tokenCacheKey(tok)] = cachedToken[V]{v, now}
}

// get returns the value put for tok less than maxAge ago.
func (c *tokenCache[V]) get(tok string, maxAge time.Duration) (V, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[tokenCacheKey(tok)]
	if !ok || now.Sub(e.at) >= maxAge {
		var zero V
		return zero, false
	}
	return e.v, true
}

// forget drops the entry of tok.
func (c *tokenCache[V]) forget(tok string) { c.forgetKey(tokenCacheKey(tok)) }

// forgetKey drops the entry of the token whose db.TokenHash is key.
func (c *tokenCache[V]) forgetKey(key string) {
	c.mu.Lock()
	delete(c.entries, key)
	c.mu.Unlock()
}

// forgetIf drops every entry whose value drop reports.
func (c *tokenCache[V]) forgetIf(drop func(V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if drop(e.v) {
			delete(c.entries, k)
		}
	}
}

func (c *tokenCache[V]) forgetAll() {
	c.mu.Lock()
	clear(c.entries)
	c.mu.Unlock()
}
