package mail

import "context"

// Invite is what an invite email says. Every field comes from the inviter's
// homeserver request (except Link, built by mxid from its own configuration),
// so templates must treat them as untrusted: escaped in HTML, never in a
// header but through encoding.
type Invite struct {
	To                string // the invited address, as given
	RoomID            string
	RoomName          string // truncated by the caller
	RoomAlias         string
	RoomAvatarURL     string
	RoomType          string // "space" or "room"
	SenderID          string // the verified sender MXID
	SenderDisplayName string // truncated by the caller
	SenderAvatarURL   string
	Link              string // where "join" points: the web client with the invite parameters
	Token             string // the invite token (the state key of the room's m.room.third_party_invite)
	ServerName        string
}

// SendInvite renders the invite email and sends it to inv.To (validated by
// the caller, its domain in ASCII). In log mode it is written to the log.
func (s *Sender) SendInvite(ctx context.Context, inv Invite) error {
	subject, err := s.templates.render(TemplateInviteSubject, inv)
	if err != nil {
		return err
	}
	subject = oneLine(subject)
	text, err := s.templates.render(TemplateInviteText, inv)
	if err != nil {
		return err
	}
	html, err := s.templates.render(TemplateInviteHTML, inv)
	if err != nil {
		return err
	}
	if s.email.Mode == "log" {
		s.log.Info("invite email not sent (email.mode = \"log\")", "to", inv.To, "subject", subject, "text", text)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.email.Timeout)
	defer cancel()
	return s.smtp.send(ctx, inv.To, subject, text, html)
}
