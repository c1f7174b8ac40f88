package server

import (
	"errors"
	"net/http"
	"strings"

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
	acct, err := s.store.AccountByToken(tok)
	if errors.Is(err, db.ErrNotFound) {
		return db.Account{}, errUnauthorized("Unrecognised access token")
	}
	if err != nil {
		return db.Account{}, errInternal(err)
	}
	if checkTerms && len(s.cfg.Terms.Policies) > 0 {
		ok, err := s.termsAccepted(acct.UserID)
		if err != nil {
			return db.Account{}, errInternal(err)
		}
		if !ok {
			return db.Account{}, errorf(http.StatusForbidden, "M_TERMS_NOT_SIGNED", "Terms of service have not been accepted; see GET /_matrix/identity/v2/terms")
		}
	}
	return acct, nil
}
