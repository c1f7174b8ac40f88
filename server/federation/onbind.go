package federation

import (
	"context"
	"net/http"
)

// OnbindPath is where a homeserver takes the invites of a newly bound 3PID.
const OnbindPath = "/_matrix/federation/v1/3pid/onbind"

// Onbind sends an onbind body to serverName's homeserver as sydent does:
// POST, then PUT when the homeserver answers 404 or 405 (the method some
// implementations register). method is the one resp answers.
func (r *Resolver) Onbind(ctx context.Context, serverName string, body []byte, maxBytes int64) (resp *Response, method string, err error) {
	method = http.MethodPost
	resp, err = r.Do(ctx, serverName, method, OnbindPath, body, nil, maxBytes)
	if err == nil && (resp.Status == http.StatusNotFound || resp.Status == http.StatusMethodNotAllowed) {
		method = http.MethodPut
		resp, err = r.Do(ctx, serverName, method, OnbindPath, body, nil, maxBytes)
	}
	return resp, method, err
}
