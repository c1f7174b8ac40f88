package server

import "net/http"

// Every route mxid serves, in one place. Patterns are Go 1.22 ServeMux
// patterns with their method; a GET pattern also answers HEAD. Unknown paths
// and wrong methods are answered by dispatch (404 / 405 M_UNRECOGNIZED).
func (s *Server) routes() {
	const v2 = "/_matrix/identity/v2"

	s.handle("GET /_matrix/identity/versions", public, s.getVersions)
	s.handle("GET "+v2, public, s.getStatus)

	// Keys.
	s.handle("GET "+v2+"/pubkey/isvalid", public, s.getPubkeyIsValid)
	s.handle("GET "+v2+"/pubkey/ephemeral/isvalid", public, s.getEphemeralPubkeyIsValid)
	s.handle("GET "+v2+"/pubkey/{keyId}", public, s.getPubkey)

	// Accounts and terms.
	s.handle("POST "+v2+"/account/register", public, s.postRegister)
	s.handle("GET "+v2+"/account", authedNoTerms, s.getAccount)
	s.handle("POST "+v2+"/account/logout", authedNoTerms, s.postLogout)
	s.handle("GET "+v2+"/terms", public, s.getTerms)
	s.handle("POST "+v2+"/terms", authedNoTerms, s.postTerms)

	// Invites.
	s.handle("POST "+v2+"/store-invite", authed, s.postStoreInvite)
	s.handle("POST "+v2+"/sign-ed25519", authed, s.postSignEd25519)

	// The legacy v1 API, without accounts, as sydent serves it.
	if s.cfg.V1 {
		const v1 = "/_matrix/identity/api/v1"
		s.handle("POST "+v1+"/store-invite", public, s.postStoreInvite)
		s.handle("POST "+v1+"/sign-ed25519", public, s.postSignEd25519)
	}
}

// adminRoutes are served only on the admin unix socket in data_dir (mode
// 0600), never on a network listener.
func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /backup", s.getBackup)
}
