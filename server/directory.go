package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"mxid/lookup"
	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// The user directory search for Matrix clients (POST
// /_matrix/client/{v3,r0}/user_directory/search), which the homeserver's
// reverse proxy routes to mxid when [directory] is enabled. Only the
// homeserver's own users may search: mxid asks the homeserver's whoami
// with the client's token (remembered briefly by its SHA-256) and passes a
// 401 or 403 back unchanged. It then asks the homeserver's own search with
// the same token and adds the directory's matches (lookup.SearchIndex:
// display names and Matrix IDs, nothing else): one entry per user ID, the
// homeserver's winning (it has the avatar, and its ranking knows who shares
// rooms with the searcher), its results first, then the directory's best
// matches, limit and limited counted across both. A homeserver search that
// fails after the token passed leaves the directory's results alone, and
// the log says why.

const (
	// directoryDefaultLimit and directoryMaxLimit bound a search's
	// results: the spec's default, and mxid's cap.
	directoryDefaultLimit = 10
	directoryMaxLimit     = 50
	// maxSearchTerm bounds search_term, in bytes.
	maxSearchTerm = 1000
	// maxHomeserverToken bounds a token passed on to the homeserver.
	maxHomeserverToken = 8 << 10
	// homeserverAnswerCap bounds what is read of the homeserver's answers.
	homeserverAnswerCap = 1 << 20
)

// directoryAPI is the server's side of the directory search.
type directoryAPI struct {
	search  *lookup.SearchIndex
	base    string // homeserver_url without a trailing /
	client  *http.Client
	timeout time.Duration
	whoami  *tokenCache[string] // the user of each token whoami accepted, for its keep ([directory] whoami_cache)
	perUser *limiter
	perIP   *limiter
}

// newDirectoryAPI wires the directory search when [directory] is enabled
// (nil otherwise).
func newDirectoryAPI(svc *lookup.Service, policy *outbound.Policy, now func() time.Time) (*directoryAPI, error) {
	cfg := svc.Directory()
	if !cfg.Enabled {
		return nil, nil
	}
	if svc.Search == nil {
		return nil, errors.New("server: [directory] is enabled but the lookup service has no search index")
	}
	return &directoryAPI{
		search:  svc.Search,
		base:    strings.TrimSuffix(cfg.HomeserverURL, "/"),
		client:  policy.Client(outbound.ClientOptions{MaxResponseBytes: homeserverAnswerCap}),
		timeout: cfg.HomeserverTimeout,
		whoami:  newTokenCache[string](now, cfg.WhoamiCache),
		perUser: newLimiter(cfg.RatePerUser, now, "directory.rate_per_user", "directory searches by this user"),
		perIP:   newLimiter(cfg.RatePerIP, now, "directory.rate_per_ip", "directory searches from this IP"),
	}, nil
}

// directoryResult is one entry of a search's results: exactly the spec's
// fields. Directory matches fill UserID and DisplayName only.
type directoryResult struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// directoryResults is a search's answer.
type directoryResults struct {
	Results []directoryResult `json:"results"`
	Limited bool              `json:"limited"`
}

// homeserverAnswer is an answer of the homeserver mxid passes back to the
// client as it is (a refused token).
type homeserverAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (a *homeserverAnswer) write(w http.ResponseWriter) {
	for _, h := range []string{"Content-Type", "WWW-Authenticate", "Retry-After"} {
		if v := a.header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(a.status)
	w.Write(a.body)
}

// postUserDirectorySearch implements POST
// /_matrix/client/{v3,r0}/user_directory/search. Checks run in this order,
// each before any work: the IP's budget, the token (whoami), the user's
// budget, the body.
func (s *Server) postUserDirectorySearch(w http.ResponseWriter, r *http.Request) error {
	d := s.dir
	if err := d.perIP.spend("ip:"+s.clientIP(r).String(), 1); err != nil {
		return err
	}
	token := accessToken(r)
	if len(token) > maxHomeserverToken {
		return errorf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unrecognised access token")
	}
	user, refused, err := d.checkToken(r.Context(), token)
	switch {
	case refused != nil:
		s.metrics.DirectorySearch("refused", 0, 0)
		refused.write(w)
		return nil
	case err != nil:
		s.metrics.DirectorySearch("unverified", 0, 0)
		return err
	}
	if err := d.perUser.spend("user:"+user, 1); err != nil {
		return err
	}
	body, err := s.readObject(r, false)
	if err != nil {
		return err
	}
	term, err := body.str("search_term", true)
	if err != nil {
		return err
	}
	if len(term) > maxSearchTerm {
		return errInvalid("search_term", fmt.Sprintf("longer than %d bytes", maxSearchTerm))
	}
	limit, given, err := body.integer("limit", false, false)
	switch {
	case err != nil:
		return err
	case !given:
		limit = directoryDefaultLimit
	case limit < 0:
		return errInvalid("limit", "must not be negative")
	}
	limit = min(limit, directoryMaxLimit)

	hs, refused, err := d.searchHomeserver(r, token, term, int(limit))
	if refused != nil {
		s.metrics.DirectorySearch("refused", 0, 0)
		refused.write(w)
		return nil
	}
	outcome := "merged"
	if err != nil {
		outcome = "directory_only"
		s.log.Warn("directory search: the homeserver's own search failed after it accepted the token; answering from the directory alone",
			"request_id", requestID(r), "user", user, "err", err)
		hs = &directoryResults{}
	}
	found, more := d.search.Search(term, int(limit)+min(len(hs.Results), int(limit))+1)
	out, fromHS, fromDir := mergeResults(hs, found, more, int(limit))
	s.metrics.DirectorySearch(outcome, fromHS, fromDir)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// mergeResults puts the homeserver's results first and the directory's
// matches after them, one entry per user ID (the homeserver's winning),
// limit in all. dirMore says the directory had more matches than found.
func mergeResults(hs *directoryResults, found []lookup.Person, dirMore bool, limit int) (out directoryResults, fromHS, fromDir int) {
	out.Results = make([]directoryResult, 0, limit)
	out.Limited = hs.Limited || dirMore
	seen := make(map[string]bool, len(hs.Results)+len(found))
	add := func(rs []directoryResult) (added int) {
		for _, r := range rs {
			if seen[r.UserID] {
				continue
			}
			seen[r.UserID] = true
			if len(out.Results) == limit {
				out.Limited = true
				break
			}
			out.Results = append(out.Results, r)
			added++
		}
		return added
	}
	fromHS = add(hs.Results)
	dir := make([]directoryResult, len(found))
	for i, p := range found {
		dir[i] = directoryResult{UserID: p.UserID, DisplayName: p.DisplayName}
	}
	return out, fromHS, add(dir)
}

// checkToken asks the homeserver who the token belongs to, or remembers
// it: a refusal comes back as the homeserver's answer; a homeserver that
// cannot say is 502.
func (d *directoryAPI) checkToken(ctx context.Context, token string) (user string, refused *homeserverAnswer, err error) {
	if token != "" {
		if user, ok := d.whoami.get(token, d.whoami.keep); ok {
			return user, nil, nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/_matrix/client/v3/account/whoami", nil)
	if err != nil {
		return "", nil, errInternal(err)
	}
	setToken(req, token)
	ans, err := d.ask(req)
	if err != nil {
		return "", nil, errHomeserverDown(err)
	}
	if ans.status == http.StatusUnauthorized || ans.status == http.StatusForbidden {
		return "", ans, nil
	}
	if ans.status != http.StatusOK {
		return "", nil, errHomeserverDown(fmt.Errorf("whoami: HTTP status %d", ans.status))
	}
	var who struct {
		UserID  string `json:"user_id"`
		IsGuest bool   `json:"is_guest"`
	}
	if err := json.Unmarshal(ans.body, &who); err != nil || !matrixid.ValidUserID(who.UserID) {
		return "", nil, errHomeserverDown(fmt.Errorf("whoami: the answer names no valid user ID: %s", truncate(string(ans.body), 200)))
	}
	if who.IsGuest {
		return "", nil, errorf(http.StatusForbidden, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed to search the user directory")
	}
	if d.whoami.keep > 0 {
		d.whoami.put(token, who.UserID)
	}
	return who.UserID, nil, nil
}

// searchHomeserver asks the homeserver's own search (the path the client
// used) with the client's token. A refusal comes back as the homeserver's
// answer; err says why the search failed otherwise.
func (d *directoryAPI) searchHomeserver(r *http.Request, token, term string, limit int) (*directoryResults, *homeserverAnswer, error) {
	body, err := json.Marshal(map[string]any{"search_term": term, "limit": limit})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.base+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	setToken(req, token)
	req.Header.Set("Content-Type", "application/json")
	if lang := r.Header.Get("Accept-Language"); lang != "" && len(lang) < 256 {
		req.Header.Set("Accept-Language", lang)
	}
	ans, err := d.ask(req)
	if err != nil {
		return nil, nil, err
	}
	if ans.status == http.StatusUnauthorized || ans.status == http.StatusForbidden {
		return nil, ans, nil
	}
	if ans.status != http.StatusOK {
		return nil, nil, fmt.Errorf("HTTP status %d: %s", ans.status, truncate(string(ans.body), 200))
	}
	res, err := parseHomeserverResults(ans.body)
	return res, nil, err
}

// parseHomeserverResults reads the homeserver's search answer, keeping of
// each result only the spec's fields, and only results whose user ID is
// valid.
func parseHomeserverResults(body []byte) (*directoryResults, error) {
	var doc struct {
		Results []json.RawMessage `json:"results"`
		Limited bool              `json:"limited"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("the answer is not a search result: %w", err)
	}
	out := &directoryResults{Limited: doc.Limited}
	for _, raw := range doc.Results {
		var r struct {
			UserID      string  `json:"user_id"`
			DisplayName *string `json:"display_name"`
			AvatarURL   *string `json:"avatar_url"`
		}
		if json.Unmarshal(raw, &r) != nil || !matrixid.ValidUserID(r.UserID) {
			continue
		}
		res := directoryResult{UserID: r.UserID}
		if r.DisplayName != nil {
			res.DisplayName = *r.DisplayName
		}
		if r.AvatarURL != nil {
			res.AvatarURL = *r.AvatarURL
		}
		out.Results = append(out.Results, res)
	}
	return out, nil
}

// ask sends req to the homeserver and reads its answer (capped).
func (d *directoryAPI) ask(req *http.Request) (*homeserverAnswer, error) {
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &homeserverAnswer{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// setToken passes the client's token on (none when it sent none: the
// homeserver then says what is missing).
func setToken(req *http.Request, token string) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
}

// errHomeserverDown is 502: the homeserver could not say whether the
// token is good, so nothing is searched.
func errHomeserverDown(cause error) *Error {
	return errorf(http.StatusBadGateway, "M_UNKNOWN", "Unable to contact the Matrix homeserver to check the access token; try again").withCause(cause)
}
