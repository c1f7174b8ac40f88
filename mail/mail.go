// Package mail owns delivering validation tokens and invites: verification
// and invite emails over
// SMTP (plain, STARTTLS or implicit TLS, certificate verified, optional
// AUTH, one deadline on the whole send), SMS through Twilio or a generic
// JSON webhook, a "log" mode for both that writes the message to the log
// instead, and rendering every user-facing template (the emails, the SMS and
// the submitToken result pages) from the web package's embedded files or
// their replacements in a configured directory.
//
// It imports web and the leaf server/outbound (CA files, TLS descriptions,
// loopback hosts) only, and go-mail, which is used nowhere else. HTTP to
// SMS gateways goes through the *http.Client main builds from the outbound
// policy.
package mail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/mail"
	"time"
)

// Sender delivers verification messages and renders the pages.
type Sender struct {
	email     EmailConfig
	sms       SMSConfig
	from      *mail.Address
	templates *Templates
	http      *http.Client
	log       *slog.Logger
	now       func() time.Time
	smtp      *smtpSender
	gateway   smsGateway
}

// Options are a Sender's collaborators; every field may be left zero.
type Options struct {
	// Templates are the parsed templates; nil means the embedded ones.
	Templates *Templates
	// HTTPClient carries SMS gateway requests; it should come from the
	// outbound policy. Required for the twilio and webhook providers.
	HTTPClient *http.Client
	Logger     *slog.Logger
	Now        func() time.Time
}

// New builds a Sender from validated configuration.
func New(email EmailConfig, sms SMSConfig, o Options) (*Sender, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Templates == nil {
		t, err := LoadTemplates("")
		if err != nil {
			return nil, err
		}
		o.Templates = t
	}
	from, err := parseFrom(email.From)
	if err != nil {
		return nil, fmt.Errorf("email.from: %w", err)
	}
	s := &Sender{email: email, sms: sms, from: from, templates: o.Templates, http: o.HTTPClient, log: o.Logger, now: o.Now}
	if email.Mode != "log" {
		if s.smtp, err = newSMTPSender(email, from, o.Now); err != nil {
			return nil, err
		}
	}
	switch sms.Provider {
	case "twilio", "webhook":
		if o.HTTPClient == nil {
			return nil, errors.New("mail: an HTTP client is required for SMS provider " + sms.Provider)
		}
		if sms.Provider == "twilio" {
			s.gateway = &twilio{cfg: sms.Twilio, client: o.HTTPClient}
		} else {
			tmpl, err := webhookTemplate(sms.Webhook.BodyTemplate)
			if err != nil {
				return nil, fmt.Errorf("sms.webhook.body_template: %w", err)
			}
			s.gateway = &webhook{cfg: sms.Webhook, body: tmpl, client: o.HTTPClient}
		}
	}
	return s, nil
}

// Describe says, for the start-up log, where email and SMS go.
func (s *Sender) Describe() (email, sms string) {
	email = "written to the log, not sent (email.mode = \"log\")"
	if s.email.Mode != "log" {
		email = fmt.Sprintf("SMTP %s via %s", s.email.Mode, s.smtp.addr)
	}
	sms = "written to the log, not sent (sms.provider = \"log\")"
	if s.sms.Provider != "log" {
		sms = "sent through " + s.sms.Provider
	}
	return email, sms
}

// LogMode reports whether email and SMS are only written to the log.
func (s *Sender) LogMode() (email, sms bool) {
	return s.email.Mode == "log", s.sms.Provider == "log"
}

// SendVerificationEmail renders the verification email for v and sends it
// to the address to (already validated by the caller, its domain in ASCII).
func (s *Sender) SendVerificationEmail(ctx context.Context, to string, v Verification) error {
	subject, err := s.templates.render(TemplateEmailSubject, v)
	if err != nil {
		return err
	}
	subject = oneLine(subject)
	text, err := s.templates.render(TemplateEmailText, v)
	if err != nil {
		return err
	}
	html, err := s.templates.render(TemplateEmailHTML, v)
	if err != nil {
		return err
	}
	if s.email.Mode == "log" {
		// The local-development default: the token is in the log on
		// purpose, so a developer can finish the flow without SMTP.
		s.log.Info("email not sent (email.mode = \"log\")", "to", to, "subject", subject, "text", text)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.email.Timeout)
	defer cancel()
	return s.smtp.send(ctx, to, subject, text, html)
}

// SMSCountryAllowed applies [sms] allow_countries / deny_countries to the
// region (ISO 3166-1 alpha-2) of a number.
func (s *Sender) SMSCountryAllowed(region string) bool { return s.sms.CountryAllowed(region) }

// SendVerificationSMS renders the verification SMS for v and sends it to
// msisdn (E.164 digits without "+").
func (s *Sender) SendVerificationSMS(ctx context.Context, msisdn string, v Verification) error {
	text, err := s.templates.render(TemplateSMS, v)
	if err != nil {
		return err
	}
	if s.gateway == nil {
		s.log.Info("SMS not sent (sms.provider = \"log\")", "to", msisdn, "text", text)
		return nil
	}
	return s.gateway.send(ctx, msisdn, text)
}

// RenderPage writes a submitToken result page (TemplatePageSuccess or
// TemplatePageFailure).
func (s *Sender) RenderPage(w io.Writer, name string, p Page) error {
	return s.templates.RenderPage(w, name, p)
}
