package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"mxid/lookup"
)

// lookupAPI is the server's side of lookups: the lookup service and the
// address budgets.
type lookupAPI struct {
	svc     *lookup.Service
	cfg     lookup.Config
	perAcct *limiter
	perIP   *limiter
	perHS   *limiter
}

// newLookupAPI wires the lookup service; without one (tests of other
// areas) it builds a local-only service over the store.
func newLookupAPI(svc *lookup.Service, d Deps) (*lookupAPI, BindingListener, error) {
	var listener BindingListener
	if svc == nil {
		ls, ok := d.Store.(lookup.Store)
		if !ok {
			return nil, nil, errors.New("server: Deps.Lookup is required with this store")
		}
		var err error
		svc, err = lookup.New(lookup.DefaultConfig(), lookup.DefaultLDAPConfig(), lookup.DefaultDNSConfig(), nil,
			lookup.Deps{Store: ls, Logger: d.Logger, Now: d.Now})
		if err != nil {
			return nil, nil, err
		}
		listener = svc.Index
	}
	cfg := svc.Config()
	return &lookupAPI{
		svc:     svc,
		cfg:     cfg,
		perAcct: newLimiter(Rate{Burst: cfg.RatePerAccount.Burst, Every: cfg.RatePerAccount.Every}, d.Now, "lookup.rate_per_account", "addresses looked up by this account"),
		perIP:   newLimiter(Rate{Burst: cfg.RatePerIP.Burst, Every: cfg.RatePerIP.Every}, d.Now, "lookup.rate_per_ip", "addresses looked up from this IP"),
		perHS:   newLimiter(Rate{Burst: cfg.RatePerHomeserver.Burst, Every: cfg.RatePerHomeserver.Every}, d.Now, "lookup.rate_per_homeserver", "addresses looked up by users of this homeserver"),
	}, listener, nil
}

// maxNoneAddress bounds one plaintext lookup entry ("<address> <medium>").
const maxNoneAddress = 512

// getHashDetails implements GET /_matrix/identity/v2/hash_details.
func (s *Server) getHashDetails(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{"lookup_pepper": s.lk.svc.Index.Pepper(), "algorithms": s.lk.algorithms()})
	return nil
}

func (l *lookupAPI) algorithms() []string {
	if l.cfg.NoneEnabled() {
		return []string{"sha256", "none"}
	}
	return []string{"sha256"}
}

// spendLookups charges n addresses to the caller's budgets: the client IP
// and, when there is an account, the account and its homeserver.
func (s *Server) spendLookups(r *http.Request, n int) error {
	if err := s.lk.perIP.spend("ip:"+s.clientIP(r).String(), n); err != nil {
		return err
	}
	if user := account(r).UserID; user != "" {
		if err := s.lk.perAcct.spend("user:"+user, n); err != nil {
			return err
		}
		if _, hs, ok := strings.Cut(user, ":"); ok {
			if err := s.lk.perHS.spend("hs:"+hs, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// postLookup implements POST /_matrix/identity/v2/lookup. Checks run in
// this order, each before any work: body, algorithm, pepper, addresses and
// their count, the address budget.
func (s *Server) postLookup(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readObject(r, false)
	if err != nil {
		return err
	}
	alg, err := body.str("algorithm", true)
	if err != nil {
		return err
	}
	if alg != "sha256" && (alg != "none" || !s.lk.cfg.NoneEnabled()) {
		return errInvalid("algorithm", "not supported; see /hash_details")
	}
	pepper, err := body.str("pepper", true)
	if err != nil {
		return err
	}
	if !s.lk.svc.Index.PepperAccepted(pepper) {
		return &Error{Status: http.StatusBadRequest, Code: "M_INVALID_PEPPER", Message: "Unknown or invalid pepper - has it been rotated?",
			Extra: map[string]any{"algorithm": "sha256", "lookup_pepper": s.lk.svc.Index.Pepper()}}
	}
	addresses, err := body.strList("addresses", true)
	if err != nil {
		return err
	}
	if len(addresses) > s.lk.cfg.MaxAddresses {
		return errorf(http.StatusBadRequest, "M_TOO_LARGE", "At most %d addresses per lookup", s.lk.cfg.MaxAddresses)
	}
	if err := s.spendLookups(r, len(addresses)); err != nil {
		return err
	}
	var mxids []string
	if alg == "sha256" {
		mxids, err = s.lk.svc.Index.LookupHashes(pepper, addresses)
		if errors.Is(err, lookup.ErrPepper) { // expired between the check and now
			return &Error{Status: http.StatusBadRequest, Code: "M_INVALID_PEPPER", Message: "Unknown or invalid pepper - has it been rotated?",
				Extra: map[string]any{"algorithm": "sha256", "lookup_pepper": s.lk.svc.Index.Pepper()}}
		}
		if err != nil {
			return errInternal(err)
		}
	} else {
		mxids = s.lookupPlain(r.Context(), addresses, s.lk.svc.MayRecurse(s.clientIP(r)))
	}
	writeMappings(w, addresses, mxids)
	return nil
}

// lookupPlain answers "none" lookups ("<address> <medium>") through the
// cascade; the answer's keys are the client's strings.
func (s *Server) lookupPlain(ctx context.Context, addresses []string, recurse bool) []string {
	tps := make([]lookup.ThreePID, len(addresses))
	valid := make([]bool, len(addresses))
	var ask []lookup.ThreePID
	for i, a := range addresses {
		if tps[i], valid[i] = noneAddress(a); valid[i] {
			ask = append(ask, tps[i])
		}
	}
	found := s.lk.svc.Chain.Lookup(ctx, ask, recurse)
	out := make([]string, len(addresses))
	for i := range addresses {
		if valid[i] {
			out[i] = found[tps[i]].MXID
		}
	}
	return out
}

// noneAddress reads one address of a "none" lookup, "<address> <medium>"
// (split at the last space), in canonical form; ok is false for anything
// else.
func noneAddress(a string) (tp lookup.ThreePID, ok bool) {
	if len(a) > maxNoneAddress {
		return tp, false
	}
	sp := strings.LastIndexByte(a, ' ')
	if sp <= 0 {
		return tp, false
	}
	canon, ok := lookup.Canonical(a[sp+1:], a[:sp])
	if !ok {
		return tp, false
	}
	return lookup.ThreePID{Medium: a[sp+1:], Address: canon}, true
}

// writeMappings writes {"mappings": {address: mxid}} for the addresses that
// matched, by hand: a 1,000-address answer is the hot path.
func writeMappings(w http.ResponseWriter, addresses, mxids []string) {
	n := 0
	for _, m := range mxids {
		n += len(m) + 50
	}
	buf := make([]byte, 0, n+16)
	buf = append(buf, `{"mappings":{`...)
	first := true
	seen := map[string]bool(nil)
	for i, m := range mxids {
		if m == "" {
			continue
		}
		if seen == nil {
			seen = make(map[string]bool, len(mxids))
		}
		if seen[addresses[i]] { // an address asked twice answers once (no duplicate keys)
			continue
		}
		seen[addresses[i]] = true
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = appendJSONString(buf, addresses[i])
		buf = append(buf, ':')
		buf = appendJSONString(buf, m)
	}
	buf = append(buf, "}}"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(http.StatusOK)
	w.Write(buf)
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf && c != '<' && c != '>' && c != '&' {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			if r == utf8.RuneError {
				buf = append(buf, `\ufffd`...)
			} else {
				buf = append(buf, '\\', 'u', '2', '0', '2', hex[r&0xf])
			}
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// v1 lookups (only with v1 = true). They are unauthenticated, so only the
// per-IP budget applies; the cap and the cascade are the same as v2's.

// getV1Lookup implements GET /_matrix/identity/api/v1/lookup: a signed
// association, or {}.
func (s *Server) getV1Lookup(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	medium, address := q.Get("medium"), q.Get("address")
	if medium == "" {
		return errMissing("medium")
	}
	if address == "" {
		return errMissing("address")
	}
	if err := s.spendLookups(r, 1); err != nil {
		return err
	}
	canon, ok := lookup.Canonical(medium, address)
	if !ok {
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	tp := lookup.ThreePID{Medium: medium, Address: canon}
	res, found := s.lk.svc.Chain.Lookup(r.Context(), []lookup.ThreePID{tp}, s.lk.svc.MayRecurse(s.clientIP(r)))[tp]
	if !found {
		writeJSON(w, http.StatusOK, struct{}{})
		return nil
	}
	now := s.now()
	assoc := map[string]any{"medium": medium, "address": canon, "mxid": res.MXID,
		"ts": now.UnixMilli(), "not_before": now.UnixMilli(), "not_after": now.Add(24 * time.Hour).UnixMilli()}
	if res.Source == "local" {
		if b, err := s.store.GetBinding(medium, canon); err == nil && b.MXID == res.MXID {
			assoc["ts"], assoc["not_before"], assoc["not_after"] = b.TS, b.NotBefore, b.NotAfter
		}
	}
	signed, err := s.key.Sign(assoc, s.cfg.ServerName)
	if err != nil {
		return errInternal(err)
	}
	writeJSON(w, http.StatusOK, signed)
	return nil
}

// postV1BulkLookup implements POST /_matrix/identity/api/v1/bulk_lookup:
// {"threepids": [[medium, address], ...]} -> the found ones as
// [medium, address, mxid] with the addresses as asked.
func (s *Server) postV1BulkLookup(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readParams(r, false)
	if err != nil {
		return err
	}
	if !body.has("threepids") {
		return errMissing("threepids")
	}
	var pairs [][]string
	if err := json.Unmarshal(body["threepids"], &pairs); err != nil || pairs == nil {
		return errInvalid("threepids", "must be a list of [medium, address] pairs")
	}
	for _, p := range pairs {
		if len(p) != 2 {
			return errInvalid("threepids", "must be a list of [medium, address] pairs")
		}
	}
	if len(pairs) > s.lk.cfg.MaxAddresses {
		return errorf(http.StatusBadRequest, "M_TOO_LARGE", "At most %d threepids per lookup", s.lk.cfg.MaxAddresses)
	}
	if err := s.spendLookups(r, len(pairs)); err != nil {
		return err
	}
	tps := make([]lookup.ThreePID, len(pairs))
	valid := make([]bool, len(pairs))
	var ask []lookup.ThreePID
	for i, p := range pairs {
		if canon, ok := lookup.Canonical(p[0], p[1]); ok {
			tps[i], valid[i] = lookup.ThreePID{Medium: p[0], Address: canon}, true
			ask = append(ask, tps[i])
		}
	}
	found := s.lk.svc.Chain.Lookup(r.Context(), ask, s.lk.svc.MayRecurse(s.clientIP(r)))
	out := [][]string{}
	seen := map[[2]string]bool{}
	for i, p := range pairs {
		if res, ok := found[tps[i]]; valid[i] && ok && !seen[[2]string{p[0], p[1]}] {
			seen[[2]string{p[0], p[1]}] = true
			out = append(out, []string{p[0], p[1], res.MXID})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"threepids": out})
	return nil
}
