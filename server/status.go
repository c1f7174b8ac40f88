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

// getLive implements GET /health/live: the process answers requests.
func (s *Server) getLive(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]string{"status": "live"})
	return nil
}

// getReady implements GET /health/ready: this replica can serve, that is
// its lookup index is built (it is before the API listens), the database
// answers, and whatever else main asked to check (Deps.Ready: a replica's
// change-log follower keeping up). Otherwise 503, so a load balancer sends
// requests elsewhere.
func (s *Server) getReady(w http.ResponseWriter, r *http.Request) error {
	if p, ok := s.store.(interface{ Ping() error }); ok {
		if err := p.Ping(); err != nil {
			return errUnavailable(err)
		}
	}
	if s.ready != nil {
		if err := s.ready(); err != nil {
			e := errUnavailable(err)
			e.Message = "Not ready: " + err.Error()
			return e
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

// getStatus implements GET /_matrix/identity/v2 (status check).
func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}
