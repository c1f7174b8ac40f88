package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"mxid/db"
	"mxid/lookup/threepid"
	"mxid/server/federation"
	"mxid/server/matrixid"
)

// associationLifetime is not_after - not_before of a binding (sydent: 100 years).
const associationLifetime = 100 * 365 * 24 * time.Hour

// bind publishes medium/address (canonical) -> mxid: one transaction writes
// the binding and its reverse index, then the binding listener (the lookup
// index) is told. validatedAt is the validation time of the session behind
// the bind: a binding of the same user made since then is kept as it is, so
// retried or parallel binds store one binding and return one association.
//
// Everything that must happen on a bind (e.g. delivering pending invites)
// belongs here, right after the store write.
func (s *Server) bind(ctx context.Context, medium, address, mxid string, validatedAt int64) (db.Binding, error) {
	now := s.now().UnixMilli()
	b := db.Binding{Medium: medium, Address: address, MXID: mxid, TS: now, NotBefore: now, NotAfter: now + associationLifetime.Milliseconds()}
	// The onbind delivery (with the 3PID's pending invites) is queued in
	// the same transaction as the binding, and sent by the delivery worker.
	stored, changed, queued, err := s.store.Bind(b, validatedAt, func(pending []db.Invite) (string, []byte, error) {
		return s.onbindBody(b, pending)
	})
	if err != nil {
		return db.Binding{}, err
	}
	if changed && s.binds != nil {
		s.binds.Bound(medium, address, mxid)
	}
	if queued != nil {
		s.kickDelivery()
	}
	return stored, nil
}

// unbind removes medium/address -> mxid if it is bound so, recording actor
// (the user, or the homeserver that signed the request) in the audit log;
// idempotent. It reports whether it removed the binding.
func (s *Server) unbind(medium, address, mxid, actor string) (bool, error) {
	return s.admin.unbind(medium, address, mxid, actor)
}

// deactivated is called after a homeserver's signed unbind removed a
// binding of mxid: when that was the user's last binding here, mxid takes
// the sequence of unbinds as the homeserver's erasure of the user (Synapse
// sends one per 3PID when it deactivates an account) and withdraws the
// invites the user sent that are still pending: they carry other people's
// addresses and could only ever be exchanged by the user's own account.
// Delivered invites stay (the invitee's room holds them). Withdrawn
// invites are one audit entry, by the homeserver.
func (s *Server) deactivated(r *http.Request, mxid, origin string) error {
	left, err := s.store.BindingsOf(mxid)
	if err != nil || len(left) > 0 {
		return err
	}
	n, err := s.store.WithdrawInvites(mxid, func(n int) []db.AuditEntry {
		if n == 0 {
			return nil
		}
		return []db.AuditEntry{s.admin.audit.entry(origin, actionWithdrawInvites, mxid, fmt.Sprintf("%d pending invites sent, withdrawn with the user's last binding", n))}
	})
	if err != nil {
		return err
	}
	if n > 0 {
		s.metrics.Erased("homeserver", db.Erased{InvitesSent: n})
		s.log.Info("the homeserver unbound a user's last 3PID: pending invites the user sent withdrawn", "request_id", requestID(r), "origin", origin, "invites", n)
	}
	return nil
}

// signedAssociation is a binding as the spec's bind answer: signed with the
// long-term key under server_name.
func (s *Server) signedAssociation(b db.Binding) (map[string]any, error) {
	return s.key.Sign(association(b), s.cfg.ServerName)
}

// association is the spec's 3PID association, unsigned.
func association(b db.Binding) map[string]any {
	return map[string]any{
		"medium": b.Medium, "address": b.Address, "mxid": b.MXID,
		"ts": b.TS, "not_before": b.NotBefore, "not_after": b.NotAfter,
	}
}

// postBind implements POST /_matrix/identity/v2/3pid/bind (and v1's, where
// there is no account and mxid is taken as given, as sydent does).
func (s *Server) postBind(w http.ResponseWriter, r *http.Request) error {
	if err := s.limitAttempt(r); err != nil {
		return err
	}
	body, err := s.readParams(r, true)
	if err != nil {
		return err
	}
	sid, err := body.str("sid", true)
	if err != nil {
		return err
	}
	clientSecret, err := body.str("client_secret", true)
	if err != nil {
		return err
	}
	mxid, err := body.str("mxid", true)
	if err != nil {
		return err
	}
	if !matrixid.ValidUserID(mxid) {
		return errInvalid("mxid", "not a valid Matrix user ID")
	}
	if !isV1(r) && mxid != account(r).UserID {
		return errForbidden("mxid does not match the user of the access token")
	}
	if err := s.limitSubject(r, "sid:"+sid); err != nil {
		return err
	}
	sess, err := s.validatedSession(sid, clientSecret)
	if err != nil {
		return err
	}
	b, err := s.bind(r.Context(), sess.Medium, sess.Address, mxid, sess.ValidatedTS)
	if err != nil {
		return errInternal(err)
	}
	s.log.Info("3PID bound", "request_id", requestID(r), "medium", b.Medium, "sid", sess.ID)
	signed, err := s.signedAssociation(b)
	if err != nil {
		return errInternal(err)
	}
	writeJSON(w, http.StatusOK, signed)
	return nil
}

// postUnbind implements POST /_matrix/identity/v2/3pid/unbind. It is
// authorised either by sid + client_secret of a validated session for the
// same 3PID, or by the homeserver of mxid signing the request (X-Matrix).
func (s *Server) postUnbind(w http.ResponseWriter, r *http.Request) error {
	if err := s.limitAttempt(r); err != nil {
		return err
	}
	body, err := s.readObject(r, false)
	if err != nil {
		return err
	}
	mxid, err := body.str("mxid", true)
	if err != nil {
		return err
	}
	tp, err := body.obj("threepid", true)
	if err != nil {
		return err
	}
	medium, err := tp.str("medium", true)
	if err != nil {
		return err
	}
	address, err := tp.str("address", true)
	if err != nil {
		return err
	}
	if !matrixid.ValidUserID(mxid) {
		return errInvalid("mxid", "not a valid Matrix user ID")
	}
	if medium != threepid.Email && medium != threepid.MSISDN {
		return errInvalid("threepid.medium", `must be "email" or "msisdn"`)
	}
	canonical, err := threepid.Canonical(medium, address)
	if err != nil {
		return errInvalid("threepid.address", "not a valid "+medium+" address")
	}
	if err := s.limitSubject(r, medium+":"+canonical); err != nil {
		return err
	}
	var actor string // who removes it: the user, or the homeserver that signed
	signed := false
	if body.has("sid") || body.has("client_secret") {
		sid, err := body.str("sid", true)
		if err != nil {
			return err
		}
		clientSecret, err := body.str("client_secret", true)
		if err != nil {
			return err
		}
		sess, err := s.validatedSession(sid, clientSecret)
		if err != nil {
			return err
		}
		if sess.Medium != medium || sess.Address != canonical {
			return errForbidden("The session is for another 3PID")
		}
		// The user who proved control of the 3PID: the account's, or on
		// v1 (no account) the Matrix ID of the binding.
		actor = cmp.Or(account(r).UserID, mxid)
	} else {
		origin, err := s.verifyXMatrix(r, body)
		if err != nil {
			return err
		}
		if _, server, _ := matrixid.SplitUserID(mxid); server != origin {
			return errForbidden("%s may not unbind users of another server", origin)
		}
		actor, signed = origin, true
	}
	deleted, err := s.unbind(medium, canonical, mxid, actor)
	if err != nil {
		return err
	}
	if deleted && signed {
		if err := s.deactivated(r, mxid, actor); err != nil {
			return errInternal(err)
		}
	}
	s.log.Info("3PID unbound", "request_id", requestID(r), "medium", medium, "by", unbindBy(actor), "removed", deleted)
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

// verifyXMatrix checks the request's X-Matrix signature and returns the
// origin server that made it.
func (s *Server) verifyXMatrix(r *http.Request, body object) (string, error) {
	var headers []string
	for _, h := range r.Header.Values("Authorization") {
		if scheme, _, _ := strings.Cut(h, " "); strings.EqualFold(scheme, "X-Matrix") {
			headers = append(headers, h)
		}
	}
	if len(headers) == 0 {
		return "", errUnauthorized("Unbind needs sid and client_secret, or a homeserver's X-Matrix signature")
	}
	origin, err := s.keys.VerifyRequest(r.Context(), federation.SignedRequest{
		Method: r.Method, URI: r.RequestURI, Content: body, Destinations: s.destinations(),
	}, headers)
	switch {
	case err == nil:
		return origin, nil
	case errors.Is(err, federation.ErrMalformedAuth):
		return "", errUnauthorized("Malformed X-Matrix authorization").withCause(err)
	case errors.Is(err, federation.ErrUnreachable):
		return "", errorf(http.StatusBadGateway, "M_UNKNOWN", "Unable to contact the Matrix homeserver to check its signature").withCause(err)
	default:
		return "", errForbidden("Invalid homeserver signature").withCause(err)
	}
}

// destinations are the names a homeserver may address this identity server
// by in a signed request: server_name and the host[:port] of the public
// base URL (Synapse uses the identity server name its user configured).
func (s *Server) destinations() []string {
	out := []string{s.cfg.ServerName}
	add := func(name string) {
		if name != "" && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	if name, ok := s.cfg.IdentityServerName(); ok {
		add(name)
	}
	if u, err := url.Parse(s.cfg.PublicBaseURL); err == nil {
		add(u.Host) // as written, with an explicit default port
	}
	return out
}
