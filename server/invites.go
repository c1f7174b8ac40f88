package server

import (
	"context"
	"crypto/ed25519"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"mxid/db"
	"mxid/lookup/threepid"
	"mxid/mail"
	"mxid/server/matrixid"
	"mxid/server/signing"
)

// InvitesConfig is the [invites] section: third-party invites and their
// delivery to homeservers on bind.
type InvitesConfig struct {
	// Lifetime is how long a stored invite waits for its invitee to bind.
	Lifetime time.Duration `toml:"lifetime"`
	// WebClientURL is where the invite email's link points.
	WebClientURL string `toml:"web_client_url"`
	// WebClientAllowlist lists web client base URLs a homeserver may choose
	// instead through org.matrix.web_client_location.
	WebClientAllowlist []string `toml:"web_client_allowlist"`
	// RoomBlocklist, HomeserverBlocklist and KeywordBlocklist refuse
	// invites for these rooms, from these senders' homeservers, or
	// mentioning these words (case-insensitive) in any field.
	RoomBlocklist       []string `toml:"room_blocklist"`
	HomeserverBlocklist []string `toml:"homeserver_blocklist"`
	KeywordBlocklist    []string `toml:"keyword_blocklist"`
	// RateLimit is per sender (per client IP on v1).
	RateLimit Rate `toml:"rate_limit"`
	// AddressRateLimit is per invited address, whoever sends.
	AddressRateLimit Rate `toml:"address_rate_limit"`
	// DeliveryMaxAttempts bounds onbind retries; the wait between attempts
	// starts at DeliveryBackoff and doubles up to DeliveryMaxBackoff.
	DeliveryMaxAttempts int           `toml:"delivery_max_attempts"`
	DeliveryBackoff     time.Duration `toml:"delivery_backoff"`
	DeliveryMaxBackoff  time.Duration `toml:"delivery_max_backoff"`
}

// DefaultInvitesConfig is the [invites] default.
func DefaultInvitesConfig() InvitesConfig {
	return InvitesConfig{
		Lifetime:            30 * 24 * time.Hour,
		WebClientURL:        "https://app.element.io",
		RateLimit:           Rate{Burst: 5, Every: 5 * time.Minute},
		AddressRateLimit:    Rate{Burst: 10, Every: 6 * time.Minute},
		DeliveryMaxAttempts: 20,
		DeliveryBackoff:     10 * time.Second,
		DeliveryMaxBackoff:  time.Hour,
	}
}

func (c *InvitesConfig) validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Lifetime < time.Minute {
		add("invites.lifetime must be at least 1m")
	}
	for _, u := range append([]string{c.WebClientURL}, c.WebClientAllowlist...) {
		if !absoluteHTTPURL(u) {
			add("invites: %q must be an absolute http(s) URL", u)
		}
	}
	for _, hs := range c.HomeserverBlocklist {
		if !matrixid.ValidServerName(hs) {
			add("invites.homeserver_blocklist: %q is not a server name", hs)
		}
	}
	if err := c.RateLimit.Validate(budgetInvites); err != nil {
		errs = append(errs, err)
	}
	if err := c.AddressRateLimit.Validate(budgetInviteAddress); err != nil {
		errs = append(errs, err)
	}
	if c.DeliveryMaxAttempts < 1 {
		add("invites.delivery_max_attempts must be at least 1")
	}
	if c.DeliveryBackoff < time.Second || c.DeliveryMaxBackoff < c.DeliveryBackoff {
		add("invites.delivery_backoff must be at least 1s and at most delivery_max_backoff")
	}
	return errs
}

func absoluteHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && !strings.ContainsAny(s, "\r\n\t ")
}

// InviteMailer sends invite emails; *mail.Mailer implements it.
type InviteMailer interface {
	SendInvite(ctx context.Context, inv mail.Invite) error
}

const (
	inviteTokenLen     = 64
	maxRoomNameLen     = 30 // sydent's caps since CVE-2021-29432
	maxDisplayNameLen  = 20
	maxInviteFieldLen  = 64 << 10 // longer display values are clipped, not refused
	onbindResponseCap  = 64 << 10
	webClientLocation  = "org.matrix.web_client_location"
	deliveryBatch      = 16
	deliveryPollPeriod = 5 * time.Second
)

// postStoreInvite implements POST /_matrix/identity/v2/store-invite (and the
// v1 route, where there is no account and sender is taken as given).
func (s *Server) postStoreInvite(w http.ResponseWriter, r *http.Request) error {
	body, err := s.readParams(r, false)
	if err != nil {
		return err
	}
	req := map[string]string{}
	for _, f := range []string{"medium", "address", "room_id", "sender"} {
		v, err := body.str(f, true)
		if err != nil {
			return err
		}
		req[f] = v
	}
	for _, f := range []string{"room_alias", "room_avatar_url", "room_join_rules", "room_name", "sender_display_name", "sender_avatar_url", "room_type", webClientLocation} {
		v, err := body.str(f, false)
		if err != nil {
			return err
		}
		if len(v) > maxInviteFieldLen {
			return errInvalid(f, "too long")
		}
		req[f] = v
	}
	_, senderServer, ok := matrixid.SplitUserID(req["sender"])
	if !ok {
		return errInvalid("sender", "not a valid user ID")
	}
	if acct := account(r); acct.UserID != "" && req["sender"] != acct.UserID {
		return errorf(http.StatusForbidden, "M_FORBIDDEN", "sender must be the user the access token belongs to")
	}
	if req["medium"] != threepid.Email {
		return errorf(http.StatusBadRequest, "M_UNRECOGNIZED", "Only email invites are supported")
	}
	if !validRoomID(req["room_id"]) {
		return errInvalid("room_id", "not a valid room ID")
	}
	for _, f := range []string{"room_avatar_url", "sender_avatar_url"} {
		if v := req[f]; v != "" && (!strings.HasPrefix(v, "mxc://") || !printable(v)) {
			req[f] = "" // shown nowhere rather than refusing the invite over a profile detail
		}
	}
	address, err := threepid.CanonicalEmail(req["address"])
	if err != nil {
		return errorf(http.StatusBadRequest, "M_INVALID_EMAIL", "Invalid email address")
	}
	sendTo, err := threepid.SMTPAddress(req["address"])
	if err != nil {
		return errorf(http.StatusBadRequest, "M_INVALID_EMAIL", "Invalid email address")
	}
	if s.inviteRefused(req, senderServer) {
		return errorf(http.StatusForbidden, "M_FORBIDDEN", "Invite not allowed")
	}
	// Per sender (v2: the account's user; v1, where sender is unchecked:
	// the client IP, unless a trusted homeserver vouches for its user) and
	// per invited address, so neither many senders nor cheap accounts can
	// flood one mailbox.
	sender := budgetSenderInvites + req["sender"]
	if isV1(r) && !s.forHomeserver(r) {
		sender = "ip:" + s.clientIP(r).String()
	}
	if err := s.charge(budgetCharge{s.inviteLimit, sender}, budgetCharge{s.inviteAddrLimit, address}); err != nil {
		return err
	}
	switch b, err := s.store.GetBinding(threepid.Email, address); {
	case err == nil:
		return &Error{Status: http.StatusBadRequest, Code: "M_THREEPID_IN_USE", Message: "This address is already bound to a Matrix user", Extra: map[string]any{"mxid": b.MXID}}
	case !errors.Is(err, db.ErrNotFound):
		return errInternal(err)
	}
	if s.inviteMail == nil {
		return errorf(http.StatusInternalServerError, "M_EMAIL_SEND_ERROR", "This identity server cannot send email")
	}

	ephemeral, err := signing.NewKey(signing.LongTermKeyID)
	if err != nil {
		return errInternal(err)
	}
	now := s.now()
	inv := db.Invite{
		Token: randomString(inviteTokenLen, alphanumeric), Medium: threepid.Email, Address: address,
		RoomID: req["room_id"], Sender: req["sender"], Ephemeral: signing.EncodeBase64URL(ephemeral.Public()),
		CreatedTS: now.UnixMilli(), ExpiresTS: now.Add(s.cfg.Invites.Lifetime).UnixMilli(),
	}
	if err := s.store.PutInvite(inv); err != nil {
		return errInternal(err)
	}
	msg := mail.Invite{
		To:                sendTo,
		RoomID:            inv.RoomID,
		RoomName:          clip(req["room_name"], maxRoomNameLen),
		RoomAlias:         clip(req["room_alias"], 255),
		RoomAvatarURL:     req["room_avatar_url"],
		RoomType:          "room",
		SenderID:          inv.Sender,
		SenderDisplayName: clip(req["sender_display_name"], maxDisplayNameLen),
		SenderAvatarURL:   req["sender_avatar_url"],
		ServerName:        s.cfg.ServerName,
		Token:             inv.Token,
	}
	if req["room_type"] == "m.space" {
		msg.RoomType = "space"
	}
	msg.Link = s.inviteLink(req, inv, ephemeral, msg)
	err = s.inviteMail.SendInvite(r.Context(), msg)
	s.metrics.Delivery("email", outcome(err))
	if err != nil {
		if derr := s.store.DeleteInvite(inv.Token); derr != nil {
			s.log.Error("removing an invite whose email failed", "request_id", requestID(r), "err", derr)
		}
		return (&Error{Status: http.StatusInternalServerError, Code: "M_EMAIL_SEND_ERROR", Message: "Could not send the invite email"}).withCause(err)
	}
	s.log.Info("invite stored", "request_id", requestID(r), "room_id", inv.RoomID, "sender_server", senderServer)
	base := strings.TrimSuffix(s.cfg.PublicBaseURL, "/") + s.apiPrefix(r)
	writeJSON(w, http.StatusOK, map[string]any{
		"token":      inv.Token,
		"public_key": s.key.PublicBase64(),
		"public_keys": []map[string]string{
			{"public_key": s.key.PublicBase64(), "key_validity_url": base + "/pubkey/isvalid"},
			{"public_key": inv.Ephemeral, "key_validity_url": base + "/pubkey/ephemeral/isvalid"},
		},
		"display_name": redactEmail(req["address"]),
	})
	return nil
}

// readSignParams takes sign-ed25519's parameters: from the query string when
// the body is empty (the invite link's form: Element follows the mailed
// signing URL with a bodiless POST and adds mxid to its query), else from a
// JSON body (on v1 a form body too, as sydent reads). link reports the
// first form.
func (s *Server) readSignParams(r *http.Request) (params object, link bool, err error) {
	body, err := s.readBody(r)
	if err != nil {
		return nil, false, err
	}
	if emptyBody(body) {
		params, err = formObject([]byte(r.URL.RawQuery))
		return params, true, err
	}
	params, err = decodeBody(r, body, isV1(r))
	return params, false, err
}

// apiPrefix is the API root the request came in on (v1 or v2).
func (s *Server) apiPrefix(r *http.Request) string {
	if strings.HasPrefix(r.URL.Path, "/_matrix/identity/api/v1/") {
		return "/_matrix/identity/api/v1"
	}
	return "/_matrix/identity/v2"
}

// inviteLink is the web client link of the invite email: the configured
// client (or an allowlisted one the homeserver named), opening the room with
// the parameters Element understands, including the URL that signs the
// invite with its ephemeral key.
func (s *Server) inviteLink(req map[string]string, inv db.Invite, ephemeral *signing.Key, msg mail.Invite) string {
	web := s.cfg.Invites.WebClientURL
	if loc := req[webClientLocation]; loc != "" {
		for _, allowed := range s.cfg.Invites.WebClientAllowlist {
			if strings.TrimSuffix(loc, "/") == strings.TrimSuffix(allowed, "/") {
				web = allowed
			}
		}
	}
	// The client signs by POSTing to this URL (Element adds mxid to its
	// query and sends no body and no access token).
	signPath := "/_matrix/identity/v2/sign-ed25519"
	sign := url.Values{"token": {inv.Token}, "private_key": {signing.EncodeBase64URL(ephemeral.Private.Seed())}}
	q := url.Values{
		"email":   {req["address"]},
		"signurl": {strings.TrimSuffix(s.cfg.PublicBaseURL, "/") + signPath + "?" + sign.Encode()},
	}
	for k, v := range map[string]string{"room_name": msg.RoomName, "room_avatar_url": msg.RoomAvatarURL, "inviter_name": msg.SenderDisplayName, "room_type": req["room_type"]} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return strings.TrimSuffix(web, "/") + "/#/room/" + url.PathEscape(inv.RoomID) + "?" + q.Encode()
}

// inviteRefused applies the blocklists.
func (s *Server) inviteRefused(req map[string]string, senderServer string) bool {
	c := s.cfg.Invites
	for _, room := range c.RoomBlocklist {
		if req["room_id"] == room {
			return true
		}
	}
	for _, hs := range c.HomeserverBlocklist {
		if strings.EqualFold(senderServer, hs) {
			return true
		}
	}
	for _, kw := range c.KeywordBlocklist {
		kw = strings.ToLower(kw)
		for _, v := range req {
			if kw != "" && strings.Contains(strings.ToLower(v), kw) {
				return true
			}
		}
	}
	return false
}

// validRoomID accepts "!" followed by printable ASCII (room IDs of every
// room version), at most 255 bytes.
func validRoomID(s string) bool {
	return len(s) >= 2 && len(s) <= 255 && s[0] == '!' && printable(s)
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f || s[i] == '"' || s[i] == '<' || s[i] == '>' {
			return false
		}
	}
	return true
}

// clip cuts s to n characters (not bytes), marking the cut with "…", and
// removes control and format characters, which have no place in a mail.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	runes := []rune(s)
	return strings.TrimSpace(string(runes[:n-1])) + "…"
}

// redactEmail hides most of an address for display: "alice@example.org"
// becomes "ali...@exa...", as sydent does.
func redactEmail(address string) string {
	local, domain, _ := strings.Cut(address, "@")
	return redactPart(local) + "@" + redactPart(domain)
}

func redactPart(s string) string {
	r := []rune(s)
	switch {
	case len(r) > 3:
		return string(r[:3]) + "..."
	case len(r) > 1:
		return string(r[:1]) + "..."
	default:
		return "..."
	}
}

// postSignEd25519 implements POST /_matrix/identity/v2/sign-ed25519: it signs
// {mxid, sender, token} with the private key the invitee was mailed. The
// spec requires an access token; with one, the supplied key is used as
// given, as sydent does. Without one, only the invite link's form is served
// (every parameter in the query string, no body: what Element sends when it
// follows the mailed signing URL), and there holding the invite's own
// ephemeral key is the proof. v1 needs no token (sydent) and checks the key
// the same way.
func (s *Server) postSignEd25519(w http.ResponseWriter, r *http.Request) error {
	body, link, err := s.readSignParams(r)
	if err != nil {
		return err
	}
	authed := account(r).UserID != ""
	if !authed && !link && !isV1(r) {
		return errUnauthorized("sign-ed25519 needs an access token (only the invite link's form, parameters in the query string and no body, is served without one)")
	}
	mxid, err := body.str("mxid", true)
	if err != nil {
		return err
	}
	token, err := body.str("token", true)
	if err != nil {
		return err
	}
	privB64, err := body.str("private_key", true)
	if err != nil {
		return err
	}
	if !matrixid.ValidUserID(mxid) {
		return errInvalid("mxid", "not a valid user ID")
	}
	seed, err := signing.DecodeBase64(privB64)
	if err != nil || len(seed) != ed25519.SeedSize {
		return errInvalid("private_key", "not an ed25519 private key in unpadded base64")
	}
	if token == "" || len(token) > 255 {
		return errorf(http.StatusNotFound, "M_UNRECOGNIZED", "Unknown invite token")
	}
	inv, err := s.store.GetInvite(token)
	if errors.Is(err, db.ErrNotFound) {
		return errorf(http.StatusNotFound, "M_UNRECOGNIZED", "Unknown invite token")
	}
	if err != nil {
		return errInternal(err)
	}
	key := &signing.Key{ID: signing.LongTermKeyID, Private: ed25519.NewKeyFromSeed(seed)}
	if !authed && subtle.ConstantTimeCompare([]byte(signing.EncodeBase64URL(key.Public())), []byte(inv.Ephemeral)) != 1 {
		return errInvalid("private_key", "not the key of this invite")
	}
	signed, err := key.Sign(map[string]any{"mxid": mxid, "sender": inv.Sender, "token": inv.Token}, s.cfg.ServerName)
	if err != nil {
		return errInternal(err)
	}
	writeJSON(w, http.StatusOK, signed)
	return nil
}
