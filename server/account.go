package server

import (
	"errors"
	"net/http"
	"slices"

	"mxid/server/federation"
	"mxid/server/matrixid"
)

// accessTokenLen is the length of the access tokens mxid issues (64
// alphanumerics, about 381 bits, as sydent).
const accessTokenLen = 64

// postRegister implements POST /_matrix/identity/v2/account/register: the
// OpenID token is exchanged with the homeserver of matrix_server_name for the
// user ID it vouches for, and a new access token is issued for that user.
func (s *Server) postRegister(w http.ResponseWriter, r *http.Request) error {
	// Each register makes mxid call a homeserver: limited per client IP
	// ([ratelimit] register).
	if err := s.limits.register.spend("ip:"+s.clientIP(r).String(), 1); err != nil {
		return err
	}
	body, err := s.readObject(r, false)
	if err != nil {
		return err
	}
	openIDToken, err := body.str("access_token", true)
	if err != nil {
		return err
	}
	serverName, err := body.str("matrix_server_name", true)
	if err != nil {
		return err
	}
	tokenType, err := body.str("token_type", false)
	if err != nil {
		return err
	}
	if _, _, err := body.integer("expires_in", false, false); err != nil {
		return err
	}
	if tokenType != "" && tokenType != "Bearer" {
		return errInvalid("token_type", `must be "Bearer"`)
	}
	if openIDToken == "" || len(openIDToken) > 1024 {
		return errInvalid("access_token", "must be a non-empty OpenID token")
	}
	if !matrixid.ValidServerName(serverName) {
		return errInvalid("matrix_server_name", "not a valid server name")
	}
	if allow := s.cfg.Accounts.HomeserverAllowlist; len(allow) > 0 && !slices.Contains(allow, serverName) {
		return errorf(http.StatusForbidden, "M_FORBIDDEN", "Users of %s may not register with this identity server", serverName)
	}
	userID, err := s.fed.UserInfo(r.Context(), serverName, openIDToken)
	switch {
	case errors.Is(err, federation.ErrTokenRejected):
		return errUnauthorized("The homeserver did not accept the OpenID token").withCause(err)
	case errors.Is(err, federation.ErrBadUserinfo):
		return errorf(http.StatusBadGateway, "M_UNKNOWN", "The homeserver's answer did not name a user on %s", serverName).withCause(err)
	case err != nil:
		return errorf(http.StatusBadGateway, "M_UNKNOWN", "Unable to contact the Matrix homeserver %s", serverName).withCause(err)
	}
	token := randomString(accessTokenLen, alphanumeric)
	if err := s.store.CreateAccountToken(token, userID, s.now()); err != nil {
		return errInternal(err)
	}
	s.log.Info("account registered", "request_id", requestID(r), "homeserver", serverName)
	// "access_token" too: sydent answers both and clients read either.
	writeJSON(w, http.StatusOK, map[string]string{"token": token, "access_token": token})
	return nil
}

// getAccount implements GET /_matrix/identity/v2/account.
func (s *Server) getAccount(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"user_id": account(r).UserID})
	return nil
}

// postLogout implements POST /_matrix/identity/v2/account/logout: it ends the
// token the request was made with.
func (s *Server) postLogout(w http.ResponseWriter, r *http.Request) error {
	s.authMemory.forget(accessToken(r))
	if err := s.store.DeleteAccountToken(accessToken(r)); err != nil {
		return errInternal(err)
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
