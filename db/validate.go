package db

import "errors"

// Shared by every backend, so that what one stores another reads (a copy
// between backends keeps working tokens working).

// Validate reports why b cannot be stored (an empty medium, address or
// mxid, a NUL), so that every backend refuses the same bindings.
func (b Binding) Validate() error { return b.check() }

// Validate reports why s cannot be stored (an empty sid, medium, address or
// client_secret, a NUL), so that every backend refuses the same sessions.
func (s Session) Validate() error { return s.check() }

// CheckRequested checks what RequestSession's decide returned for the
// (3PID, client_secret) it was asked about: the session must be for the
// same 3PID and client_secret.
func CheckRequested(next Session, medium, address, clientSecret string) error {
	if next.Medium != medium || next.Address != address || next.ClientSecret != clientSecret {
		return errors.New("session does not match its 3PID and client_secret")
	}
	return nil
}

// TokenHash is what a store keeps of an access token: its SHA-256.
func TokenHash(token string) []byte { return tokenKey(token) }
