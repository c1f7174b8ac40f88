package federation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"mxid/server/matrixid"
)

// userinfoMaxBytes is sydent's cap on the userinfo answer (A4).
const userinfoMaxBytes = 5 << 10

// ErrTokenRejected means the homeserver answered and did not accept the
// OpenID token.
var ErrTokenRejected = errors.New("the homeserver did not accept the OpenID token")

// ErrBadUserinfo means the homeserver's answer was not a usable userinfo.
var ErrBadUserinfo = errors.New("the homeserver's userinfo answer was not valid")

// UserInfo exchanges an OpenID access token with the homeserver of
// serverName and returns the user ID it vouches for, which must be a valid
// user ID on exactly that server.
func (r *Resolver) UserInfo(ctx context.Context, serverName, accessToken string) (string, error) {
	path := "/_matrix/federation/v1/openid/userinfo?access_token=" + url.QueryEscape(accessToken)
	resp, err := r.Do(ctx, serverName, http.MethodGet, path, nil, nil, userinfoMaxBytes)
	if err != nil {
		return "", err
	}
	switch {
	case resp.Status == http.StatusUnauthorized || resp.Status == http.StatusForbidden:
		return "", ErrTokenRejected
	case resp.Status != http.StatusOK:
		return "", fmt.Errorf("%w: HTTP status %d", ErrUnreachable, resp.Status)
	}
	var doc struct {
		Sub any `json:"sub"`
	}
	if err := json.Unmarshal(resp.Body, &doc); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadUserinfo, err)
	}
	sub, ok := doc.Sub.(string)
	if !ok {
		return "", fmt.Errorf("%w: no string sub", ErrBadUserinfo)
	}
	_, server, ok := matrixid.SplitUserID(sub)
	if !ok {
		return "", fmt.Errorf("%w: sub is not a user ID", ErrBadUserinfo)
	}
	if server != serverName {
		return "", fmt.Errorf("%w: sub %q is not on %s", ErrBadUserinfo, sub, serverName)
	}
	return sub, nil
}
