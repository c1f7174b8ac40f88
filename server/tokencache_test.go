package server

import (
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"mxid/db"
)

// The token cache answers for maxAge, forgets a token by the hash a
// ChangeToken carries, and when full drops the entries older than keep
// before any fresh one.
func TestTokenCache(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	c := newTokenCache[string](func() time.Time { return now }, time.Hour)
	c.put("syt_old", "@old:hs")
	now = now.Add(2 * time.Hour)
	for i := range maxCachedTokens - 1 {
		c.put(fmt.Sprint("syt_", i), "@u:hs")
	}
	if got, ok := c.get("syt_old", 3*time.Hour); !ok || got != "@old:hs" {
		t.Fatalf("within maxAge: %q %v", got, ok)
	}
	if _, ok := c.get("syt_old", time.Hour); ok {
		t.Error("an entry older than maxAge is answered")
	}
	c.put("syt_new", "@new:hs")
	if _, ok := c.get("syt_old", 3*time.Hour); ok {
		t.Error("the full cache kept an entry older than keep")
	}
	if n := len(c.entries); n != maxCachedTokens {
		t.Errorf("fresh entries dropped while a stale one could go: %d left", n)
	}
	c.put("syt_newer", "@newer:hs")
	if n := len(c.entries); n > maxCachedTokens {
		t.Errorf("%d entries, bound %d", n, maxCachedTokens)
	}
	for _, tok := range []string{"syt_new", "syt_newer"} {
		if got, ok := c.get(tok, time.Minute); !ok || got != "@"+tok[4:]+":hs" {
			t.Errorf("%s: %q %v", tok, got, ok)
		}
	}

	// Another replica removed syt_new: the change log names its db.TokenHash in hex.
	s := &Server{authMemory: newTokenCache[db.Account](func() time.Time { return now }, time.Hour)}
	s.authMemory.put("syt_new", db.Account{UserID: "@new:hs"})
	s.authMemory.put("syt_kept", db.Account{UserID: "@kept:hs"})
	s.ForgetToken(hex.EncodeToString(db.TokenHash("syt_new")))
	if _, ok := s.authMemory.get("syt_new", time.Minute); ok {
		t.Error("a token removed on another replica is still remembered")
	}
	if _, ok := s.authMemory.get("syt_kept", time.Minute); !ok {
		t.Error("ForgetToken forgot another token")
	}
	s.authMemory.forgetIf(func(a db.Account) bool { return a.UserID == "@kept:hs" })
	if _, ok := s.authMemory.get("syt_kept", time.Minute); ok {
		t.Error("an erased user's token is still remembered")
	}
}
