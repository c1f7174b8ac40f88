package server

import "net/http"

// Every route mxid serves, in one place. Patterns are Go 1.22 ServeMux
// patterns with their method; a GET pattern also answers HEAD. Unknown paths
// and wrong methods are answered by dispatch (404 / 405 M_UNRECOGNIZED).
func (s *Server) routes() {
	const v2 = "/_matrix/identity/v2"

	s.handle("GET /_matrix/identity/versions", public, s.getVersions)
	s.handle("GET "+v2, public, s.getStatus)

	// Health checks for load balancers and supervisors (not Matrix API).
	s.handle("GET /health/live", public, s.getLive)
	s.handle("GET /health/ready", public, s.getReady)

	// Keys.
	s.handle("GET "+v2+"/pubkey/isvalid", public, s.getPubkeyIsValid)
	s.handle("GET "+v2+"/pubkey/ephemeral/isvalid", public, s.getEphemeralPubkeyIsValid)
	s.handle("GET "+v2+"/pubkey/{keyId}", public, s.getPubkey)

	// Accounts and terms.
	s.handle("POST "+v2+"/account/register", public, s.postRegister)
	// GET /account checks the terms (the spec lists M_TERMS_NOT_SIGNED for
	// it, and Element asks it to learn whether to show the terms); logout
	// and accepting the terms must work without.
	s.handle("GET "+v2+"/account", authed, s.getAccount)
	s.handle("POST "+v2+"/account/logout", authedNoTerms, s.postLogout)
	s.handle("GET "+v2+"/terms", public, s.getTerms)
	s.handle("POST "+v2+"/terms", authedNoTerms, s.postTerms)

	// Invites.
	s.handle("POST "+v2+"/store-invite", authed, s.postStoreInvite)
	s.handle("POST "+v2+"/sign-ed25519", optionalAuth, s.postSignEd25519)

	// Lookups.
	s.handle("GET "+v2+"/hash_details", authed, s.getHashDetails)
	s.handle("POST "+v2+"/lookup", authed, s.postLookup)

	// 3PID validation sessions and associations. GET submitToken is the
	// link opened from the message (no token); unbind is authorised by
	// the session or by the homeserver's X-Matrix signature.
	s.handle("POST "+v2+"/validate/email/requestToken", authed, s.postEmailRequestToken)
	s.handle("POST "+v2+"/validate/email/submitToken", authed, s.postSubmitToken("email"))
	s.handle("GET "+v2+"/validate/email/submitToken", public, s.getSubmitToken("email"))
	s.handle("POST "+v2+"/validate/msisdn/requestToken", authed, s.postMSISDNRequestToken)
	s.handle("POST "+v2+"/validate/msisdn/submitToken", authed, s.postSubmitToken("msisdn"))
	s.handle("GET "+v2+"/validate/msisdn/submitToken", public, s.getSubmitToken("msisdn"))
	s.handle("GET "+v2+"/3pid/getValidated3pid", authed, s.getValidated3pid)
	s.handle("POST "+v2+"/3pid/bind", authed, s.postBind)
	s.handle("POST "+v2+"/3pid/unbind", optionalAuth, s.postUnbind)

	// The user directory search of the client-server API, which the
	// homeserver's reverse proxy routes to mxid: the homeserver's own
	// results with the LDAP directory's (directory.go). Its token is the
	// homeserver's, checked there.
	if s.dir != nil {
		s.handle("POST /_matrix/client/v3/user_directory/search", public, s.postUserDirectorySearch)
		s.handle("POST /_matrix/client/r0/user_directory/search", public, s.postUserDirectorySearch)
	}

	// The legacy v1 API (removed from the spec), off unless v1 = true: the
	// same handlers without account auth, as sydent serves them.
	if s.cfg.V1 {
		const v1p = "/_matrix/identity/api/v1"
		s.handle("GET "+v1p, public, s.getStatus)
		s.handle("GET "+v1p+"/{$}", public, s.getStatus)
		s.handle("GET "+v1p+"/pubkey/isvalid", public, s.getPubkeyIsValid)
		s.handle("GET "+v1p+"/pubkey/ephemeral/isvalid", public, s.getEphemeralPubkeyIsValid)
		s.handle("GET "+v1p+"/pubkey/{keyId}", public, s.getPubkey)
		s.handle("POST "+v1p+"/validate/email/requestToken", public, v1(s.postEmailRequestToken))
		s.handle("POST "+v1p+"/validate/email/submitToken", public, v1(s.postSubmitToken("email")))
		s.handle("GET "+v1p+"/validate/email/submitToken", public, v1(s.getSubmitToken("email")))
		s.handle("POST "+v1p+"/validate/msisdn/requestToken", public, v1(s.postMSISDNRequestToken))
		s.handle("POST "+v1p+"/validate/msisdn/submitToken", public, v1(s.postSubmitToken("msisdn")))
		s.handle("GET "+v1p+"/validate/msisdn/submitToken", public, v1(s.getSubmitToken("msisdn")))
		s.handle("GET "+v1p+"/3pid/getValidated3pid", public, v1(s.getValidated3pid))
		s.handle("POST "+v1p+"/3pid/bind", public, v1(s.postBind))
		s.handle("POST "+v1p+"/3pid/unbind", public, v1(s.postUnbind))
		s.handle("POST "+v1p+"/store-invite", public, v1(s.postStoreInvite))
		s.handle("POST "+v1p+"/sign-ed25519", public, v1(s.postSignEd25519))
		s.handle("GET "+v1p+"/lookup", public, v1(s.getV1Lookup))
		s.handle("POST "+v1p+"/bulk_lookup", public, v1(s.postV1BulkLookup))
	}
}

// adminRoutes are served only on the admin unix socket in data_dir (mode
// 0600), never on a network listener. The /admin/ routes are `mxid admin`
// (admin_actions.go); addresses travel in them, so they are never logged.
func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /backup", s.getBackup)
	mux.HandleFunc("GET /check", s.getCheck)

	mux.Handle("GET /admin/show", s.adminJSON(s.adminShow))               // ?address=
	mux.Handle("POST /admin/unbind", s.adminJSON(s.adminUnbind))          // {"address"}
	mux.Handle("POST /admin/erase", s.adminJSON(s.adminErase))            // {"subject": Matrix ID or address}
	mux.Handle("GET /admin/invites", s.adminJSON(s.adminInvites))         // [?address=]
	mux.Handle("GET /admin/queue", s.adminJSON(s.adminQueue))             //
	mux.Handle("POST /admin/queue/retry", s.adminJSON(s.adminQueueRetry)) // {"id"}
	mux.Handle("POST /admin/queue/drop", s.adminJSON(s.adminQueueDrop))   // {"id"}
	mux.Handle("GET /admin/stats", s.adminJSON(s.adminStats))             //
	mux.Handle("GET /admin/audit", s.adminJSON(s.adminAudit))             // [?since=ms][&address=]
}
