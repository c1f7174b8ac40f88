package server

import (
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"mxid/db"
)

// maxTokenLen bounds access tokens before any store work.
const maxTokenLen = 255

// accessToken takes the token from "Authorization: Bearer" or, deprecated but
// still required by the spec, from ?access_token=. The header wins.
func accessToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

// authenticate resolves the caller's account; with checkTerms it also
// requires every current policy to be accepted (403 M_TERMS_NOT_SIGNED).
func (s *Server) authenticate(r *http.Request, checkTerms bool) (db.Account, error) {
	tok := accessToken(r)
	if tok == "" {
		return db.Account{}, errUnauthorized("Missing access token")
	}
	if len(tok) > maxTokenLen {
		return db.Account{}, errUnauthorized("Unrecognised access token")
	}
	// A token that passed a moment ago passes without the database: the
	// hot path (lookups) never touches it. A removed token is forgotten
	// by every replica (logout here; ForgetToken from the change log).
	if acct, ok := s.authMemory.get(tok, authCacheTTL); ok {
		return acct, nil
	}
	acct, err := s.store.AccountByToken(tok)
	if errors.Is(err, db.ErrNotFound) {
		return db.Account{}, errUnauthorized("Unrecognised access token")
	}
	if errors.Is(err, db.ErrUnavailable) {
		// The database is down: a token that passed (with the terms) a
		// little while ago still does, for what needs no database.
		if acct, ok := s.authMemory.get(tok, authMemoryTTL); ok {
			return acct, nil
		}
	}
	if err != nil {
		return db.Account{}, errInternal(err)
	}
	s.touch(r, tok, acct)
	if checkTerms && len(s.cfg.Terms.Policies) > 0 {
		ok, err := s.termsAccepted(acct.UserID)
		if err != nil {
			return db.Account{}, errInternal(err)
		}
		if !ok {
			return db.Account{}, errorf(http.StatusForbidden, "M_TERMS_NOT_SIGNED", "Terms of service have not been accepted; see GET /_matrix/identity/v2/terms")
		}
	}
	if checkTerms {
		s.authMemory.put(tok, acct)
	}
	return acct, nil
}

// tokenTouchEvery is how often a token's use is recorded: idle tokens are
// swept ([accounts] token_lifetime), and a day is precise enough for that.
const tokenTouchEvery = 24 * time.Hour

// touch records the token's use when its last recorded use (or creation)
// is more than tokenTouchEvery ago. A failure is logged, not fatal: the
// request needs no write.
func (s *Server) touch(r *http.Request, tok string, acct db.Account) {
	now := s.now()
	if now.UnixMilli()-acct.LastActive() < tokenTouchEvery.Milliseconds() {
		return
	}
	if err := s.store.TouchAccountToken(tok, now.UnixMilli()); err != nil {
		s.log.Warn("recording an access token's use", "request_id", requestID(r), "err", err)
	}
}

// authCacheTTL is how long a token that passed authentication (and the
// terms) passes again without asking the database; authMemoryTTL, how long
// it keeps passing while the database is unavailable.
const (
	authCacheTTL  = 5 * time.Minute
	authMemoryTTL = time.Hour
)

// ForgetToken makes this server forget a removed access token it may
// remember (hash: db.TokenHash in hex, as a ChangeToken carries it).
func (s *Server) ForgetToken(hashHex string) {
	if b, err := hex.DecodeString(hashHex); err == nil {
		s.authMemory.forgetKey(string(b))
	}
}

// ForgetAllTokens makes this server ask the database about every token
// again (a replica that missed part of the change log).
func (s *Server) ForgetAllTokens() { s.authMemory.forgetAll() }
