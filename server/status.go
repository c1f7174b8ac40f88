package server

import "net/http"

// specVersions are the Identity Service API versions mxid implements.
var specVersions = []string{
	"r0.3.0", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
	"v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
}

// getVersions implements GET /_matrix/identity/versions.
func (s *Server) getVersions(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{"versions": specVersions})
	return nil
}

// getStatus implements GET /_matrix/identity/v2 (status check).
func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
