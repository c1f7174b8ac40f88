package server

import "net/http"

// getTerms implements GET /_matrix/identity/v2/terms.
func (s *Server) getTerms(w http.ResponseWriter, r *http.Request) error {
	policies := map[string]any{}
	for _, p := range s.cfg.Terms.Policies {
		doc := map[string]any{"version": p.Version}
		for lang, t := range p.Languages {
			doc[lang] = map[string]string{"name": t.Name, "url": t.URL}
		}
		policies[p.Name] = doc
	}
	writeJSON(w, http.StatusOK, map[string]any{"policies": policies})
	return nil
}

// postTerms implements POST /_matrix/identity/v2/terms. Each URL accepts the
// current version of the policy it belongs to; URLs of no current policy
// (an older version, another server's) are ignored, since clients send every
// URL the user ever accepted.
func (s *Server) postTerms(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readObject(r, false)
	if err != nil {
		return err
	}
	urls, err := body.strList("user_accepts", true)
	if err != nil {
		return err
	}
	accepted := map[string]string{}
	for _, u := range urls {
		for _, p := range s.cfg.Terms.Policies {
			for _, t := range p.Languages {
				if t.URL == u {
					accepted[p.Name] = p.Version
				}
			}
		}
	}
	if len(accepted) > 0 {
		if err := s.store.AcceptTerms(account(r).UserID, accepted); err != nil {
			return errInternal(err)
		}
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// termsAccepted reports whether userID accepted the current version of every
// configured policy.
func (s *Server) termsAccepted(userID string) (bool, error) {
	got, err := s.store.AcceptedTerms(userID)
	if err != nil {
		return false, err
	}
	for _, p := range s.cfg.Terms.Policies {
		if got[p.Name] != p.Version {
			return false, nil
		}
	}
	return true, nil
}
