package server

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

	// Lookups.
	s.handle("GET "+v2+"/hash_details", authed, s.getHashDetails)
	s.handle("POST "+v2+"/lookup", authed, s.postLookup)
	if s.cfg.V1 {
		const v1 = "/_matrix/identity/api/v1"
		s.handle("GET "+v1+"/lookup", public, s.getV1Lookup)
		s.handle("POST "+v1+"/bulk_lookup", public, s.postV1BulkLookup)
	}
}
