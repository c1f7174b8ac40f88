package lookup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"mxid/lookup/threepid"
	"mxid/server/matrixid"
)

// remote is another identity server mxid asks: with the v2 API (its
// /hash_details, then a sha256 lookup hashed with its pepper, so no
// plaintext leaves), and with the v1 API only where allowV1 is configured.
// Answers are validated: only the addresses asked for, only well-formed
// Matrix IDs.
type remote struct {
	base    string // "https://host:port", no trailing slash
	token   string
	allowV1 bool
	client  *http.Client

	mu     sync.Mutex
	pepper string // their current pepper, "" until fetched
}

// remoteBatch is how many addresses go into one request to another server
// (sydent refuses more than 10,000).
const remoteBatch = 1000

// maxRemoteAnswer bounds what is read from another server.
const maxRemoteAnswer = 8 << 20

// errNoV2 means the server does not offer (or let us use) v2 lookups.
var errNoV2 = errors.New("v2 lookup not available")

func (r *remote) lookup(ctx context.Context, tps []ThreePID) (map[ThreePID]string, error) {
	out, err := r.lookupV2(ctx, tps)
	if err != nil && r.allowV1 && errors.Is(err, errNoV2) {
		return r.lookupV1(ctx, tps)
	}
	return out, err
}

func (r *remote) lookupV2(ctx context.Context, tps []ThreePID) (map[ThreePID]string, error) {
	out := map[ThreePID]string{}
	for start := 0; start < len(tps); start += remoteBatch {
		batch := tps[start:min(len(tps), start+remoteBatch)]
		retried := false
		for {
			pepper, err := r.hashDetails(ctx)
			if err != nil {
				return out, err
			}
			byHash := make(map[string]ThreePID, len(batch))
			hashes := make([]string, 0, len(batch))
			for _, tp := range batch {
				h := threepid.Hash(tp.Address, tp.Medium, pepper)
				byHash[h] = tp
				hashes = append(hashes, h)
			}
			var ans struct {
				Mappings map[string]string `json:"mappings"`
				Errcode  string            `json:"errcode"`
				Pepper   string            `json:"lookup_pepper"`
			}
			status, err := r.do(ctx, "POST", "/_matrix/identity/v2/lookup", map[string]any{"algorithm": "sha256", "pepper": pepper, "addresses": hashes}, &ans)
			if err != nil {
				return out, err
			}
			if status == http.StatusBadRequest && ans.Errcode == "M_INVALID_PEPPER" && !retried {
				r.mu.Lock()
				r.pepper = "" // rotated: fetch it again (once)
				r.mu.Unlock()
				retried = true
				continue
			}
			if status != http.StatusOK {
				return out, r.statusErr(status, ans.Errcode)
			}
			for h, m := range ans.Mappings {
				tp, asked := byHash[h]
				if asked && matrixid.ValidUserID(m) {
					out[tp] = m
				}
			}
			break
		}
	}
	return out, nil
}

func (r *remote) statusErr(status int, errcode string) error {
	err := fmt.Errorf("%s answered %d %s", r.base, status, errcode)
	if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
		return fmt.Errorf("%w: %w", errNoV2, err)
	}
	return err
}

// hashDetails returns the server's pepper, fetching it when unknown.
func (r *remote) hashDetails(ctx context.Context) (string, error) {
	r.mu.Lock()
	p := r.pepper
	r.mu.Unlock()
	if p != "" {
		return p, nil
	}
	var hd struct {
		Pepper     string   `json:"lookup_pepper"`
		Algorithms []string `json:"algorithms"`
		Errcode    string   `json:"errcode"`
	}
	status, err := r.do(ctx, "GET", "/_matrix/identity/v2/hash_details", nil, &hd)
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", r.statusErr(status, hd.Errcode)
	}
	sha := false
	for _, a := range hd.Algorithms {
		sha = sha || a == "sha256"
	}
	if !sha || hd.Pepper == "" || strings.Trim(hd.Pepper, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") != "" {
		return "", fmt.Errorf("%w: %s offers no usable sha256 pepper", errNoV2, r.base)
	}
	r.mu.Lock()
	r.pepper = hd.Pepper
	r.mu.Unlock()
	return hd.Pepper, nil
}

// lookupV1 asks POST /_matrix/identity/api/v1/bulk_lookup.
func (r *remote) lookupV1(ctx context.Context, tps []ThreePID) (map[ThreePID]string, error) {
	out := map[ThreePID]string{}
	for start := 0; start < len(tps); start += remoteBatch {
		batch := tps[start:min(len(tps), start+remoteBatch)]
		asked := make(map[ThreePID]bool, len(batch))
		pairs := make([][2]string, 0, len(batch))
		for _, tp := range batch {
			asked[tp] = true
			pairs = append(pairs, [2]string{tp.Medium, tp.Address})
		}
		var ans struct {
			ThreePIDs [][]string `json:"threepids"`
			Errcode   string     `json:"errcode"`
		}
		status, err := r.do(ctx, "POST", "/_matrix/identity/api/v1/bulk_lookup", map[string]any{"threepids": pairs}, &ans)
		if err != nil {
			return out, err
		}
		if status != http.StatusOK {
			return out, fmt.Errorf("%s v1 bulk_lookup answered %d %s", r.base, status, ans.Errcode)
		}
		for _, row := range ans.ThreePIDs {
			if len(row) != 3 {
				continue
			}
			tp := ThreePID{row[0], row[1]}
			if asked[tp] && matrixid.ValidUserID(row[2]) {
				out[tp] = row[2]
			}
		}
	}
	return out, nil
}

// do sends one JSON request and decodes the JSON answer (of any status)
// into v.
func (r *remote) do(ctx context.Context, method, path string, body, v any) (int, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxRemoteAnswer+1))
	if err != nil {
		return 0, err
	}
	if len(raw) > maxRemoteAnswer {
		return 0, fmt.Errorf("%s: answer larger than %d bytes", r.base, maxRemoteAnswer)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, nil // a non-JSON error page: the status says enough
		}
		return 0, fmt.Errorf("%s%s: answer is not the expected JSON: %w", r.base, path, err)
	}
	return resp.StatusCode, nil
}

// Forwarders is the source of configured identity servers, asked in order
// for what earlier ones did not know.
type Forwarders struct{ remotes []*remote }

// NewForwarders builds the source from validated [[forwarders]].
func NewForwarders(cfgs []ForwarderConfig, client *http.Client) *Forwarders {
	f := &Forwarders{}
	for _, c := range cfgs {
		f.remotes = append(f.remotes, &remote{base: strings.TrimSuffix(c.URL, "/"), token: c.AccessToken, allowV1: c.AllowV1Fallback, client: client})
	}
	return f
}

// Name implements Source.
func (f *Forwarders) Name() string { return "forwarders" }

// Lookup implements Source.
func (f *Forwarders) Lookup(ctx context.Context, tps []ThreePID) (map[ThreePID]string, error) {
	out := map[ThreePID]string{}
	var errs []error
	todo := tps
	for _, r := range f.remotes {
		if len(todo) == 0 || ctx.Err() != nil {
			break
		}
		got, err := r.lookup(ctx, todo)
		if err != nil {
			errs = append(errs, err)
		}
		rest := todo[:0:0]
		for _, tp := range todo {
			if m, ok := got[tp]; ok {
				out[tp] = m
			} else {
				rest = append(rest, tp)
			}
		}
		todo = rest
	}
	return out, errors.Join(errs...)
}
