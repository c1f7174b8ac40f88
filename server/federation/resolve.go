// Package federation is mxid's client side of the Matrix server-server API:
// homeserver discovery (pins, IP literals and explicit ports,
// /.well-known/matrix/server, SRV _matrix-fed._tcp then _matrix._tcp, port
// 8448), and the calls mxid makes to homeservers (OpenID userinfo; key
// fetching and X-Matrix verification and onbind build on the same Resolver).
// The grammar of server names and user IDs is server/matrixid's.
//
// It imports the leaves server/matrixid, server/outbound and server/signing
// only; every request goes through the outbound policy.
package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// Target is where requests for a server name go: the base URL dialled, the
// Host header sent and the name its TLS certificate must be valid for.
type Target struct {
	BaseURL string // e.g. "https://10.0.0.5:8448"
	Host    string // Host header
	TLSName string // SNI and certificate name
}

// Resolver finds homeservers as the server-server spec describes and makes
// requests to them through the outbound policy.
type Resolver struct {
	policy *outbound.Policy
	now    func() time.Time

	// Ports of the well-known lookup (443) and of federation (8448); tests
	// change them.
	wellKnownPort, fedPort string

	wkClient *http.Client // for /.well-known/matrix/server (redirects, 50 KiB)

	mu        sync.Mutex
	wellKnown map[string]wellKnownEntry // at most maxCached entries
	clients   map[string]*http.Client   // by TLS name, at most maxClients
}

type wellKnownEntry struct {
	server  string // "" when the lookup failed or there is none
	expires time.Time
}

const (
	wellKnownMaxBytes = 50 << 10
	wellKnownOK       = 24 * time.Hour
	wellKnownFailed   = time.Hour
	defaultFedPort    = "8448"

	// Server names come from requests (register, unbind, onbind), so
	// the caches keyed by them are bounded: an attacker naming endless
	// servers must not grow memory.
	maxCached  = 10000
	maxClients = 128
)

// NewResolver builds a resolver over the outbound policy. now may be nil.
func NewResolver(p *outbound.Policy, now func() time.Time) *Resolver {
	if now == nil {
		now = time.Now
	}
	return &Resolver{policy: p, now: now, wellKnownPort: "443", fedPort: defaultFedPort,
		wkClient:  p.Client(outbound.ClientOptions{MaxResponseBytes: wellKnownMaxBytes, MaxRedirects: 5}),
		wellKnown: map[string]wellKnownEntry{}, clients: map[string]*http.Client{}}
}

// ErrInvalidServerName is returned for names outside the grammar; nothing is
// contacted for them.
var ErrInvalidServerName = errors.New("invalid server name")

// Resolve locates the homeserver for serverName.
func (r *Resolver) Resolve(ctx context.Context, serverName string) (Target, error) {
	if !matrixid.ValidServerName(serverName) {
		return Target{}, ErrInvalidServerName
	}
	if base, ok := r.policy.Pin(serverName); ok {
		host := strings.TrimPrefix(strings.TrimPrefix(base, "https://"), "http://")
		h, _, _ := matrixid.SplitServerName(host)
		return Target{BaseURL: base, Host: host, TLSName: strings.Trim(h, "[]")}, nil
	}
	host, port, _ := matrixid.SplitServerName(serverName)
	// 1. IP literal, 2. explicit port: direct.
	if _, isIP := matrixid.IPLiteral(host); isIP || port != 0 {
		return r.direct(host, port, serverName), nil
	}
	// 3. /.well-known/matrix/server delegation.
	if delegated := r.lookupWellKnown(ctx, host); delegated != "" {
		dhost, dport, _ := matrixid.SplitServerName(delegated)
		if _, isIP := matrixid.IPLiteral(dhost); isIP || dport != 0 {
			return r.direct(dhost, dport, delegated), nil
		}
		if t, ok := r.srv(ctx, dhost); ok {
			return t, nil
		}
		return r.direct(dhost, 0, dhost), nil
	}
	// 4, 5. SRV records, 6. port 8448.
	if t, ok := r.srv(ctx, host); ok {
		return t, nil
	}
	return r.direct(host, 0, host), nil
}

func (r *Resolver) direct(host string, port int, hostHeader string) Target {
	p := r.fedPort
	if port != 0 {
		p = strconv.Itoa(port)
	}
	return Target{BaseURL: "https://" + joinHostPort(host, p), Host: hostHeader, TLSName: strings.Trim(host, "[]")}
}

func joinHostPort(host, port string) string {
	if strings.HasPrefix(host, "[") {
		return host + ":" + port
	}
	return net.JoinHostPort(host, port)
}

// srv tries _matrix-fed._tcp then the deprecated _matrix._tcp.
func (r *Resolver) srv(ctx context.Context, host string) (Target, bool) {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, addrs, err := r.policy.LookupSRV(ctx, service, "tcp", host)
		if err != nil || len(addrs) == 0 {
			continue
		}
		a := addrs[0]
		target := strings.TrimSuffix(a.Target, ".")
		if target == "" || a.Port == 0 { // "." means the service is not available here
			continue
		}
		return Target{BaseURL: "https://" + joinHostPort(target, strconv.Itoa(int(a.Port))), Host: host, TLSName: host}, true
	}
	return Target{}, false
}

// lookupWellKnown returns the delegated server name, or "" (cached for an
// hour on failure, a day on success).
func (r *Resolver) lookupWellKnown(ctx context.Context, host string) string {
	now := r.now()
	r.mu.Lock()
	if e, ok := r.wellKnown[host]; ok && now.Before(e.expires) {
		r.mu.Unlock()
		return e.server
	}
	r.mu.Unlock()

	server := r.fetchWellKnown(ctx, host)
	ttl := wellKnownOK
	if server == "" {
		ttl = wellKnownFailed
	}
	r.mu.Lock()
	if len(r.wellKnown) >= maxCached {
		for h, e := range r.wellKnown {
			if !now.Before(e.expires) {
				delete(r.wellKnown, h)
			}
		}
		if len(r.wellKnown) >= maxCached {
			clear(r.wellKnown)
		}
	}
	r.wellKnown[host] = wellKnownEntry{server: server, expires: now.Add(ttl)}
	r.mu.Unlock()
	return server
}

func (r *Resolver) fetchWellKnown(ctx context.Context, host string) string {
	ctx, cancel := context.WithTimeout(ctx, r.policy.Timeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.wellKnownURL(host), nil)
	if err != nil {
		return ""
	}
	resp, err := r.wkClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return ""
	}
	var doc struct {
		Server string `json:"m.server"`
	}
	if json.Unmarshal(body, &doc) != nil || !matrixid.ValidServerName(doc.Server) {
		return ""
	}
	return doc.Server
}

func (r *Resolver) wellKnownURL(host string) string {
	if r.wellKnownPort != "443" {
		host = joinHostPort(host, r.wellKnownPort)
	}
	return "https://" + host + "/.well-known/matrix/server"
}

func (r *Resolver) client(tlsName string) *http.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.clients[tlsName]
	if !ok {
		if len(r.clients) >= maxClients {
			for _, old := range r.clients {
				old.CloseIdleConnections()
			}
			clear(r.clients)
		}
		c = r.policy.Client(outbound.ClientOptions{TLSServerName: tlsName})
		r.clients[tlsName] = c
	}
	return c
}

// Response is what a homeserver answered.
type Response struct {
	Status int
	Body   []byte
}

// ErrUnreachable wraps every failure to get an answer from a homeserver. Its
// text is safe to show: it names neither addresses nor dial errors.
var ErrUnreachable = errors.New("unable to contact the Matrix homeserver")

// Do sends a request to serverName's homeserver at pathQuery (which starts
// with "/") and reads at most maxBytes of the answer. header may be nil.
func (r *Resolver) Do(ctx context.Context, serverName, method, pathQuery string, body []byte, header http.Header, maxBytes int64) (*Response, error) {
	t, err := r.Resolve(ctx, serverName)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.policy.Timeout())
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.BaseURL+pathQuery, rd)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Host = t.Host
	resp, err := r.client(t.TLSName).Do(req)
	if err != nil {
		// *url.Error quotes the URL, whose query may hold a token: keep only
		// the cause, and name the URL without its query.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		path, _, _ := strings.Cut(pathQuery, "?")
		return nil, fmt.Errorf("%w: %s %s%s: %w", ErrUnreachable, method, t.BaseURL, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if int64(len(data)) > maxBytes {
		return nil, fmt.Errorf("%w: response larger than %d bytes", ErrUnreachable, maxBytes)
	}
	return &Response{Status: resp.StatusCode, Body: data}, nil
}
