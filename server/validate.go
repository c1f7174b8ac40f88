package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"mxid/db"
	"mxid/lookup/threepid"
	"mxid/mail"
)

// Validation sessions (the spec's "Establishing associations"): requestToken
// creates or finds the session of (3PID, client_secret) and sends a token,
// submitToken checks it, getValidated3pid reports it, bind publishes it.
// Every read-check-write runs in one store transaction; messages are sent
// after it, never inside.

const (
	// sessionLifetime: a session can be validated or used within this long
	// of its last modification (creation, a real resend, validation).
	sessionLifetime = 24 * time.Hour
	// sessionSweepGrace: expired sessions are kept this much longer so
	// clients get M_SESSION_EXPIRED rather than M_NO_VALID_SESSION.
	sessionSweepGrace = 24 * time.Hour
	// SessionKept is how long a session is stored after its last
	// modification, validated or not, bound or not: then the sweep
	// removes it.
	SessionKept = sessionLifetime + sessionSweepGrace
	// sessionSweepEvery is how often expired sessions are deleted.
	sessionSweepEvery = 10 * time.Minute
	// maxTokenFailures wrong tokens burn a session's token.
	maxTokenFailures = 5
	// burntRetryAfter is the retry_after_ms hint once a token is burnt:
	// the client must request a new token anyway.
	burntRetryAfter = time.Minute

	emailTokenLen = 32 // alphanumerics, about 190 bits, URL-safe
	smsTokenLen   = 6  // digits, typed by hand; bounded by maxTokenFailures
	sidLen        = 24 // alphanumerics
	maxOpaqueLen  = 255
	maxNextLink   = 2048
	maxAddressLen = 500
)

// validOpaqueID checks client_secret and sid against the spec's grammar:
// 1 to 255 characters of [0-9a-zA-Z.=_-].
func validOpaqueID(s string) bool {
	if s == "" || len(s) > maxOpaqueLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '.' || c == '=' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func errNoSession() *Error {
	return errorf(http.StatusNotFound, "M_NO_VALID_SESSION", "No valid session was found matching that sid and client secret")
}

func errSessionExpired() *Error {
	return errorf(http.StatusBadRequest, "M_SESSION_EXPIRED", "This validation session has expired: start a new one")
}

func errSessionNotValidated() *Error {
	return errorf(http.StatusBadRequest, "M_SESSION_NOT_VALIDATED", "This validation session has not yet been completed")
}

func errTokenIncorrect() *Error {
	return errorf(http.StatusBadRequest, "M_TOKEN_INCORRECT", "The token is incorrect")
}

func errTokenBurnt() *Error {
	e := errLimited(burntRetryAfter)
	e.Message = "Too many wrong tokens: request a new token (with a higher send_attempt) first"
	return e
}

func errForbidden(format string, args ...any) *Error {
	return errorf(http.StatusForbidden, "M_FORBIDDEN", format, args...)
}

// ctxV1 marks requests that came in through the legacy v1 API.
const ctxV1 ctxKey = 100

// v1 marks a handler as serving the legacy /_matrix/identity/api/v1 API.
func v1(fn apiFunc) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		return fn(w, r.WithContext(context.WithValue(r.Context(), ctxV1, true)))
	}
}

func isV1(r *http.Request) bool {
	v, _ := r.Context().Value(ctxV1).(bool)
	return v
}

// readParams reads the parameters of a POST. On v1 it reads what sydent
// reads: a JSON body, a form body (Dendrite sends every v1 POST as
// application/x-www-form-urlencoded), or the query string when the body is
// empty. On v2 the body is JSON; v2Form also accepts a (deprecated) form
// body on the routes that have always taken one (requestToken, submitToken,
// bind).
func (s *Server) readParams(r *http.Request, v2Form bool) (object, error) {
	body, err := s.readBody(r)
	if err != nil {
		return nil, err
	}
	if !isV1(r) {
		return decodeBody(r, body, v2Form)
	}
	if emptyBody(body) && r.URL.RawQuery != "" {
		return formObject([]byte(r.URL.RawQuery))
	}
	return decodeBody(r, body, true)
}

// trustedCaller reports whether the request comes from an address listed
// in [ratelimit] trusted_callers (a homeserver).
func (s *Server) trustedCaller(r *http.Request) bool {
	ip := s.clientIP(r)
	for _, p := range s.limits.trustedCallers {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// forHomeserver reports whether a request is budgeted as a homeserver's: a
// v1 request from a trusted caller, which speaks for many users from one
// IP. Such requests are charged per address, session or invite sender,
// never per IP.
func (s *Server) forHomeserver(r *http.Request) bool {
	return isV1(r) && s.trustedCaller(r)
}

// limitAttempt charges one attempt to the client's IP, before the request
// is read. A homeserver's request is charged by limitSubject instead.
func (s *Server) limitAttempt(r *http.Request) error {
	if s.forHomeserver(r) {
		return nil
	}
	if err := s.limits.attempts.spend("ip:"+s.clientIP(r).String(), 1); err != nil {
		return err
	}
	return nil
}

// limitSubject charges a homeserver's request (forHomeserver) to what it is
// about: an address ("email:a@b.org") or a session ("sid:…").
func (s *Server) limitSubject(r *http.Request, subject string) error {
	if !s.forHomeserver(r) {
		return nil
	}
	if err := s.limits.attempts.spend("subject:"+subject, 1); err != nil {
		return err
	}
	return nil
}

// senderKey is who a requestToken is charged to: the account on v2, the
// client IP on v1, nobody ("") for a homeserver, whose users are budgeted
// by the per-address limits alone.
func (s *Server) senderKey(r *http.Request) string {
	if u := account(r).UserID; u != "" {
		return budgetSenderAccount + u
	}
	if s.forHomeserver(r) {
		return ""
	}
	return "ip:" + s.clientIP(r).String()
}

func (s *Server) expired(sess db.Session, now time.Time) bool {
	return now.UnixMilli() >= sess.ModifiedTS+sessionLifetime.Milliseconds()
}

// checkNextLink accepts only an absolute http(s) URL with a host, in
// printable ASCII, without user info, on an allowed host when
// validation.next_link_hosts is set.
func (s *Server) checkNextLink(link string) error {
	if len(link) > maxNextLink {
		return errInvalid("next_link", "too long")
	}
	for i := 0; i < len(link); i++ {
		if link[i] <= 0x20 || link[i] >= 0x7f {
			return errInvalid("next_link", "must be a URL in printable ASCII (percent-encode the rest)")
		}
	}
	u, err := url.Parse(link)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Opaque != "" {
		return errInvalid("next_link", "must be an absolute http or https URL")
	}
	if u.User != nil {
		return errInvalid("next_link", "must not contain user info")
	}
	if hosts := s.cfg.Validation.NextLinkHosts; len(hosts) > 0 {
		h := strings.ToLower(u.Hostname())
		for _, allowed := range hosts {
			if h == strings.ToLower(allowed) {
				return nil
			}
		}
		return errInvalid("next_link", "this host is not allowed by the identity server")
	}
	return nil
}

// tokenRequest is a parsed requestToken.
type tokenRequest struct {
	medium       string
	address      string // canonical
	sendTo       string // where the message goes (email as given, domain in ASCII; msisdn)
	display      string // what the message calls the address
	region       string // msisdn: the number's country
	clientSecret string
	sendAttempt  int64
	nextLink     string
}

// readTokenRequest reads the fields every requestToken shares; the caller
// reads the address.
func (s *Server) readTokenRequest(body object) (tokenRequest, error) {
	var tr tokenRequest
	var err error
	if tr.clientSecret, err = body.str("client_secret", true); err != nil {
		return tr, err
	}
	if !validOpaqueID(tr.clientSecret) {
		return tr, errInvalid("client_secret", "must be 1 to 255 characters of [0-9a-zA-Z.=_-]")
	}
	if tr.sendAttempt, _, err = body.integer("send_attempt", true, true); err != nil {
		return tr, err
	}
	if tr.nextLink, err = body.str("next_link", false); err != nil {
		return tr, err
	}
	if tr.nextLink != "" {
		if err := s.checkNextLink(tr.nextLink); err != nil {
			return tr, err
		}
	}
	return tr, nil
}

// chargeSend spends the budgets of one message, all or none (Server.charge).
// It runs inside the session transaction and only when a message is going
// to be sent, so retries that send nothing cost nothing.
func (s *Server) chargeSend(r *http.Request, tr tokenRequest) error {
	var charges []budgetCharge
	if sender := s.senderKey(r); sender != "" {
		charges = append(charges, budgetCharge{s.limits.requestToken, sender})
	}
	if tr.medium == threepid.Email {
		charges = append(charges, budgetCharge{s.limits.emailAddress, tr.address})
	} else {
		charges = append(charges, budgetCharge{s.limits.msisdnNumber, tr.address}, budgetCharge{s.limits.msisdnCountry, tr.region})
	}
	return s.charge(charges...)
}

func newToken(medium string) string {
	if medium == threepid.MSISDN {
		return randomString(smsTokenLen, digits)
	}
	return randomString(emailTokenLen, alphanumeric)
}

// requestToken finds or creates the session and sends its token when
// send_attempt asks for it. It returns the session.
func (s *Server) requestToken(r *http.Request, tr tokenRequest) (db.Session, error) {
	if err := s.limitSubject(r, tr.medium+":"+tr.address); err != nil {
		return db.Session{}, err
	}
	now := s.now()
	ms := now.UnixMilli()
	send := false
	sess, err := s.store.RequestSession(tr.medium, tr.address, tr.clientSecret, func(ex *db.Session) (db.Session, bool, error) {
		if ex == nil || s.expired(*ex, now) {
			if err := s.chargeSend(r, tr); err != nil {
				return db.Session{}, false, err
			}
			send = true
			return db.Session{
				ID: randomString(sidLen, alphanumeric), Medium: tr.medium, Address: tr.address, ClientSecret: tr.clientSecret,
				Token: newToken(tr.medium), Attempted: true, SendAttempt: tr.sendAttempt,
				NextLink: tr.nextLink, CreatedTS: ms, ModifiedTS: ms,
			}, true, nil
		}
		if ex.ValidatedTS != 0 || (ex.Attempted && tr.sendAttempt <= ex.SendAttempt) {
			// Already validated, or a retry of a request already served:
			// the same sid, nothing sent, nothing modified (so the
			// session's lifetime is not extended either).
			return *ex, false, nil
		}
		if err := s.chargeSend(r, tr); err != nil {
			return db.Session{}, false, err
		}
		send = true
		ex.UndoAttempted, ex.UndoSendAttempt = ex.Attempted, ex.SendAttempt
		ex.Attempted, ex.SendAttempt = true, tr.sendAttempt
		if ex.Failures >= maxTokenFailures {
			ex.Token, ex.Failures = newToken(tr.medium), 0
		}
		if tr.nextLink != "" {
			ex.NextLink = tr.nextLink
		}
		ex.ModifiedTS = ms
		return *ex, true, nil
	})
	if err != nil {
		return db.Session{}, asStoreError(err)
	}
	if !send {
		return sess, nil
	}
	if err := s.deliver(r, tr, sess); err != nil {
		// Forget the send_attempt that failed, so the client's retry (with
		// the same or a higher send_attempt) sends again.
		if _, uerr := s.store.UpdateSession(sess.ID, func(x *db.Session) (bool, error) {
			if !x.Attempted || x.SendAttempt != tr.sendAttempt || x.Token != sess.Token {
				return false, nil
			}
			x.Attempted, x.SendAttempt = x.UndoAttempted, x.UndoSendAttempt
			return true, nil
		}); uerr != nil && !errors.Is(uerr, db.ErrNotFound) {
			s.log.Error("recording a failed send", "request_id", requestID(r), "err", uerr)
		}
		return db.Session{}, err
	}
	return sess, nil
}

// asStoreError passes *Error through (a rate limit refused inside the
// transaction) and turns anything else into a 500.
func asStoreError(err error) error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return errInternal(err)
}

// deliver sends the session's token by email or SMS, with a deadline and
// not tied to the client's connection: a client that goes away does not cut
// a send in half.
func (s *Server) deliver(r *http.Request, tr tokenRequest, sess db.Session) error {
	v := mail.Verification{
		Medium: tr.medium, Address: tr.display, Token: sess.Token,
		ServerName: s.cfg.ServerName, PublicBaseURL: s.cfg.PublicBaseURL,
		Link: s.submitTokenLink(tr.medium, sess),
	}
	ctx := context.WithoutCancel(r.Context())
	if tr.medium == threepid.Email {
		err := s.mail.SendVerificationEmail(ctx, tr.sendTo, v)
		s.metrics.Delivery("email", outcome(err))
		if err != nil {
			return errorf(http.StatusInternalServerError, "M_EMAIL_SEND_ERROR", "The verification email could not be sent").withCause(err)
		}
		s.log.Info("verification email sent", "request_id", requestID(r), "sid", sess.ID)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.policy.Timeout())
	defer cancel()
	err := s.mail.SendVerificationSMS(ctx, tr.sendTo, v)
	s.metrics.Delivery("sms", outcome(err))
	if err != nil {
		return errorf(http.StatusInternalServerError, "M_SEND_ERROR", "The verification SMS could not be sent").withCause(err)
	}
	s.log.Info("verification SMS sent", "request_id", requestID(r), "sid", sess.ID, "country", tr.region)
	return nil
}

// submitTokenLink is the link in the message: GET submitToken under the
// configured public base URL (never the request's Host).
func (s *Server) submitTokenLink(medium string, sess db.Session) string {
	q := url.Values{"sid": {sess.ID}, "client_secret": {sess.ClientSecret}, "token": {sess.Token}}
	return strings.TrimSuffix(s.cfg.PublicBaseURL, "/") + "/_matrix/identity/v2/validate/" + medium + "/submitToken?" + q.Encode()
}

// postEmailRequestToken implements POST /_matrix/identity/v2/validate/email/requestToken.
func (s *Server) postEmailRequestToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.limitAttempt(r); err != nil {
		return err
	}
	body, err := s.readParams(r, true)
	if err != nil {
		return err
	}
	email, err := body.str("email", true)
	if err != nil {
		return err
	}
	tr, err := s.readTokenRequest(body)
	if err != nil {
		return err
	}
	if len(email) > maxAddressLen {
		return errorf(http.StatusBadRequest, "M_INVALID_EMAIL", "The email address is not valid")
	}
	canonical, err := threepid.CanonicalEmail(email)
	if err != nil {
		return errorf(http.StatusBadRequest, "M_INVALID_EMAIL", "The email address is not valid")
	}
	sendTo, err := threepid.SMTPAddress(email)
	if err != nil {
		return errorf(http.StatusBadRequest, "M_INVALID_EMAIL", "The email address is not valid")
	}
	tr.medium, tr.address, tr.display, tr.sendTo = threepid.Email, canonical, email, sendTo
	sess, err := s.requestToken(r, tr)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]string{"sid": sess.ID})
	return nil
}

// postMSISDNRequestToken implements POST /_matrix/identity/v2/validate/msisdn/requestToken.
func (s *Server) postMSISDNRequestToken(w http.ResponseWriter, r *http.Request) error {
	if err := s.limitAttempt(r); err != nil {
		return err
	}
	body, err := s.readParams(r, true)
	if err != nil {
		return err
	}
	country, err := body.str("country", true)
	if err != nil {
		return err
	}
	number, err := body.str("phone_number", true)
	if err != nil {
		return err
	}
	tr, err := s.readTokenRequest(body)
	if err != nil {
		return err
	}
	msisdn, intl, region, err := threepid.ParsePhone(country, number)
	switch {
	case errors.Is(err, threepid.ErrInvalidCountry):
		return errInvalid("country", "must be an upper-case ISO 3166-1 alpha-2 country code like \"GB\"")
	case err != nil:
		return errorf(http.StatusBadRequest, "M_INVALID_ADDRESS", "The phone number is not valid")
	}
	if !s.mail.SMSCountryAllowed(region) {
		return errorf(http.StatusBadRequest, "M_DESTINATION_REJECTED", "This identity server cannot send SMS to this country")
	}
	tr.medium, tr.address, tr.sendTo, tr.display, tr.region = threepid.MSISDN, msisdn, msisdn, intl, region
	sess, err := s.requestToken(r, tr)
	if err != nil {
		return err
	}
	// "success" too: sydent sends it and some clients read it.
	writeJSON(w, http.StatusOK, map[string]any{"success": true, "sid": sess.ID, "msisdn": msisdn, "intl_fmt": intl})
	return nil
}

// submitParams are the three values of a submitToken.
type submitParams struct{ sid, clientSecret, token string }

func checkSubmitParams(p submitParams) error {
	if !validOpaqueID(p.sid) {
		return errInvalid("sid", "must be 1 to 255 characters of [0-9a-zA-Z.=_-]")
	}
	if !validOpaqueID(p.clientSecret) {
		return errInvalid("client_secret", "must be 1 to 255 characters of [0-9a-zA-Z.=_-]")
	}
	if p.token == "" || len(p.token) > maxOpaqueLen {
		return errInvalid("token", "must be 1 to 255 characters")
	}
	return nil
}

// submitToken checks a token against its session, in one transaction:
// wrong tokens are counted and burn the token after maxTokenFailures; the
// correct token validates the session (again: a replay succeeds). It
// returns the session's next_link.
func (s *Server) submitToken(medium string, p submitParams) (string, error) {
	now := s.now()
	var outcome error
	sess, err := s.store.UpdateSession(p.sid, func(x *db.Session) (bool, error) {
		if subtle.ConstantTimeCompare([]byte(x.ClientSecret), []byte(p.clientSecret)) != 1 || x.Medium != medium {
			return false, errNoSession()
		}
		if s.expired(*x, now) {
			return false, errSessionExpired()
		}
		correct := subtle.ConstantTimeCompare([]byte(x.Token), []byte(p.token)) == 1
		if correct && x.ValidatedTS != 0 {
			return false, nil
		}
		if x.Failures >= maxTokenFailures {
			return false, errTokenBurnt()
		}
		if !correct {
			x.Failures++
			outcome = errTokenIncorrect()
			return true, nil
		}
		x.ValidatedTS, x.ModifiedTS = now.UnixMilli(), now.UnixMilli()
		return true, nil
	})
	if errors.Is(err, db.ErrNotFound) {
		return "", errNoSession()
	}
	if err != nil {
		return "", asStoreError(err)
	}
	if outcome != nil {
		return "", outcome
	}
	return sess.NextLink, nil
}

// postSubmitToken implements POST /_matrix/identity/v2/validate/{email,msisdn}/submitToken.
func (s *Server) postSubmitToken(medium string) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := s.limitAttempt(r); err != nil {
			return err
		}
		body, err := s.readParams(r, true)
		if err != nil {
			return err
		}
		var p submitParams
		if p.sid, err = body.str("sid", true); err != nil {
			return err
		}
		if p.clientSecret, err = body.str("client_secret", true); err != nil {
			return err
		}
		if p.token, err = body.str("token", true); err != nil {
			return err
		}
		if err := checkSubmitParams(p); err != nil {
			return err
		}
		if err := s.limitSubject(r, "sid:"+p.sid); err != nil {
			return err
		}
		if _, err := s.submitToken(medium, p); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]bool{"success": true})
		return nil
	}
}

// getSubmitToken implements GET /_matrix/identity/v2/validate/{email,msisdn}/submitToken:
// the link a person opens from the message. It answers an HTML page, or
// redirects to the next_link stored at requestToken (a next_link in this
// URL is ignored: it would make the link an open redirect).
func (s *Server) getSubmitToken(medium string) apiFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		q := r.URL.Query()
		p := submitParams{sid: q.Get("sid"), clientSecret: q.Get("client_secret"), token: q.Get("token")}
		err := s.limitAttempt(r)
		if err == nil {
			err = checkSubmitParams(p)
		}
		if err == nil {
			err = s.limitSubject(r, "sid:"+p.sid)
		}
		var next string
		if err == nil {
			next, err = s.submitToken(medium, p)
		}
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Referrer-Policy", "no-referrer") // the URL holds the token
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'")
		if err == nil && next != "" {
			http.Redirect(w, r, next, http.StatusFound)
			return nil
		}
		page, status := mail.Page{ServerName: s.cfg.ServerName}, http.StatusOK
		name := mail.TemplatePageSuccess
		what := "email address"
		if medium == threepid.MSISDN {
			what = "phone number"
		}
		page.Message = "Your " + what + " has been verified. Return to your Matrix client to continue."
		if err != nil {
			e := asError(err)
			if e.Status >= 500 {
				return e
			}
			name, status = mail.TemplatePageFailure, e.Status
			page.Message = "Verification failed: " + e.Message + "."
			if ms, ok := e.Extra["retry_after_ms"].(int64); ok {
				h.Set("Retry-After", strconv.FormatInt((ms+999)/1000, 10))
			}
			s.logError(r, e)
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		if rerr := s.mail.RenderPage(w, name, page); rerr != nil {
			s.log.Error("rendering the submitToken page", "request_id", requestID(r), "err", rerr)
		}
		return nil
	}
}

// validatedSession returns the session sid if client_secret matches, it is
// unexpired and validated.
func (s *Server) validatedSession(sid, clientSecret string) (db.Session, error) {
	if !validOpaqueID(sid) {
		return db.Session{}, errInvalid("sid", "must be 1 to 255 characters of [0-9a-zA-Z.=_-]")
	}
	if !validOpaqueID(clientSecret) {
		return db.Session{}, errInvalid("client_secret", "must be 1 to 255 characters of [0-9a-zA-Z.=_-]")
	}
	sess, err := s.store.GetSession(sid)
	if errors.Is(err, db.ErrNotFound) {
		return db.Session{}, errNoSession()
	}
	if err != nil {
		return db.Session{}, errInternal(err)
	}
	if subtle.ConstantTimeCompare([]byte(sess.ClientSecret), []byte(clientSecret)) != 1 {
		return db.Session{}, errNoSession()
	}
	if s.expired(sess, s.now()) {
		return db.Session{}, errSessionExpired()
	}
	if sess.ValidatedTS == 0 {
		return db.Session{}, errSessionNotValidated()
	}
	return sess, nil
}

// getValidated3pid implements GET /_matrix/identity/v2/3pid/getValidated3pid.
func (s *Server) getValidated3pid(w http.ResponseWriter, r *http.Request) error {
	if err := s.limitAttempt(r); err != nil {
		return err
	}
	q := r.URL.Query()
	if !q.Has("sid") {
		return errMissing("sid")
	}
	if !q.Has("client_secret") {
		return errMissing("client_secret")
	}
	if err := s.limitSubject(r, "sid:"+q.Get("sid")); err != nil {
		return err
	}
	sess, err := s.validatedSession(q.Get("sid"), q.Get("client_secret"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"medium": sess.Medium, "address": sess.Address, "validated_at": sess.ValidatedTS})
	return nil
}

// sweepSessions deletes sessions that expired more than sessionSweepGrace ago.
func (s *Server) sweepSessions() (int, error) {
	cutoff := s.now().Add(-sessionLifetime - sessionSweepGrace).UnixMilli()
	return s.store.SweepSessions(func(sess db.Session) bool { return sess.ModifiedTS < cutoff })
}
