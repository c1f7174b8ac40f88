package mail

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"net/url"
	"strings"
	"text/template"
	"time"

	"mxid/server/outbound"
)

// EmailConfig is the [email] section: how verification emails leave mxid.
type EmailConfig struct {
	// Mode is "log" (write the message to the log, send nothing: the
	// embedded default for local use), "plain", "starttls" or "tls"
	// (implicit TLS, "SMTPS").
	Mode string `toml:"mode"`
	// From is the sender, with an optional display name.
	From string `toml:"from"`
	// Host and Port are the SMTP server; port 0 means 25, 587 or 465 by mode.
	Host string `toml:"host"`
	Port int    `toml:"port"`
	// Username and Password turn on SMTP AUTH (SCRAM, CRAM-MD5, PLAIN or
	// LOGIN, whichever the server offers; PLAIN and LOGIN only over TLS).
	Username     string `toml:"username"`
	Password     string `toml:"password"`
	PasswordFile string `toml:"password_file"`
	// CAFile is a PEM file of roots trusted for the SMTP server besides the
	// system's (outbound.LoadRoots).
	CAFile string `toml:"ca_file"`
	// HELO is the name mxid gives in EHLO.
	HELO string `toml:"helo"`
	// Timeout bounds a whole send, from dial to QUIT.
	Timeout time.Duration `toml:"timeout"`
}

// SMSConfig is the [sms] section: how verification codes reach phones.
type SMSConfig struct {
	// Provider is "log" (write the SMS to the log, send nothing), "twilio"
	// or "webhook".
	Provider string `toml:"provider"`
	// AllowCountries, when not empty, are the only countries (ISO 3166-1
	// alpha-2 region of the number) SMS are sent to; DenyCountries are
	// never sent to.
	AllowCountries []string      `toml:"allow_countries"`
	DenyCountries  []string      `toml:"deny_countries"`
	Twilio         TwilioConfig  `toml:"twilio"`
	Webhook        WebhookConfig `toml:"webhook"`
}

// TwilioConfig is [sms.twilio]: Twilio's Programmable Messaging API.
type TwilioConfig struct {
	AccountSID    string `toml:"account_sid"`
	AuthToken     string `toml:"auth_token"`
	AuthTokenFile string `toml:"auth_token_file"`
	// From is the sending number (E.164, "+15005550006"); or set
	// MessagingServiceSID instead.
	From                string `toml:"from"`
	MessagingServiceSID string `toml:"messaging_service_sid"`
	// BaseURL is Twilio's API root (changed only for tests).
	BaseURL string `toml:"base_url"`
}

// WebhookConfig is [sms.webhook]: a POST of a JSON body to any gateway.
type WebhookConfig struct {
	URL string `toml:"url"`
	// AuthHeader names the header that carries AuthValue (e.g.
	// "Authorization" with "Bearer …"); nothing is sent when AuthValue is
	// empty.
	AuthHeader    string `toml:"auth_header"`
	AuthValue     string `toml:"auth_value"`
	AuthValueFile string `toml:"auth_value_file"`
	// BodyTemplate is a text/template producing the JSON body; .To is the
	// number as E.164 digits, .E164 the same with "+", .Text the message.
	// The json function quotes a value as a JSON string.
	BodyTemplate string `toml:"body_template"`
}

// DefaultEmailConfig is the embedded default: messages go to the log.
func DefaultEmailConfig() EmailConfig {
	return EmailConfig{
		Mode:    "log",
		From:    "Matrix identity server <noreply@localhost>",
		Host:    "localhost",
		HELO:    "localhost",
		Timeout: 30 * time.Second,
	}
}

// DefaultSMSConfig is the embedded default: SMS go to the log.
func DefaultSMSConfig() SMSConfig {
	return SMSConfig{
		Provider: "log",
		Twilio:   TwilioConfig{BaseURL: "https://api.twilio.com"},
		Webhook: WebhookConfig{
			AuthHeader:   "Authorization",
			BodyTemplate: `{"to": {{json .E164}}, "text": {{json .Text}}}`,
		},
	}
}

// Validate reports every problem in the [email] section.
func (c *EmailConfig) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Mode {
	case "log", "plain", "starttls", "tls":
	default:
		add("email.mode: %q must be one of log, plain, starttls, tls", c.Mode)
	}
	if _, err := parseFrom(c.From); err != nil {
		add("email.from: %v", err)
	}
	if c.Port < 0 || c.Port > 65535 {
		add("email.port: %d is not a port (0 picks 25, 587 or 465 by mode)", c.Port)
	}
	if c.Timeout < time.Second || c.Timeout > 10*time.Minute {
		add("email.timeout must be between 1s and 10m, not %v", c.Timeout)
	}
	if strings.ContainsAny(c.HELO, " \t\r\n") || c.HELO == "" {
		add("email.helo: %q must be a host name", c.HELO)
	}
	if c.Mode != "log" {
		if c.Host == "" || strings.ContainsAny(c.Host, " /\r\n") {
			add("email.host: %q must be the SMTP server's host name or IP", c.Host)
		}
		if c.Mode == "plain" && c.Username != "" && !outbound.IsLoopbackHost(c.Host) {
			add("email.username: SMTP AUTH over mode \"plain\" would send the password unencrypted to %s; use starttls or tls", c.Host)
		}
	}
	if (c.Username == "") != (c.Password == "") {
		add("email.username and email.password (or password_file) go together")
	}
	if c.CAFile != "" {
		if _, err := outbound.LoadRoots(c.CAFile); err != nil {
			add("email.ca_file: %v", err)
		}
	}
	return errs
}

// Validate reports every problem in the [sms] section.
func (c *SMSConfig) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, list := range []struct {
		name string
		cc   []string
	}{{"allow_countries", c.AllowCountries}, {"deny_countries", c.DenyCountries}} {
		for _, cc := range list.cc {
			if len(cc) != 2 || strings.ToUpper(cc) != cc || strings.Trim(cc, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
				add("sms.%s: %q must be an upper-case ISO 3166-1 alpha-2 code like \"GB\"", list.name, cc)
			}
		}
	}
	switch c.Provider {
	case "log":
	case "twilio":
		t := c.Twilio
		if t.AccountSID == "" || t.AuthToken == "" {
			add("sms.twilio: account_sid and auth_token (or auth_token_file) are required")
		}
		if (t.From == "") == (t.MessagingServiceSID == "") {
			add("sms.twilio: set exactly one of from and messaging_service_sid")
		}
		if !absHTTPURL(t.BaseURL) {
			add("sms.twilio.base_url: %q must be an absolute http(s) URL", t.BaseURL)
		}
	case "webhook":
		w := c.Webhook
		if !absHTTPURL(w.URL) {
			add("sms.webhook.url: %q must be an absolute http(s) URL", w.URL)
		}
		if w.AuthValue != "" && (w.AuthHeader == "" || strings.ContainsAny(w.AuthHeader, " :\r\n")) {
			add("sms.webhook.auth_header: %q must be a header name", w.AuthHeader)
		}
		if strings.ContainsAny(w.AuthValue, "\r\n") {
			add("sms.webhook.auth_value must be one line")
		}
		if _, err := webhookTemplate(w.BodyTemplate); err != nil {
			add("sms.webhook.body_template: %v", err)
		}
	default:
		add("sms.provider: %q must be one of log, twilio, webhook", c.Provider)
	}
	return errs
}

// CountryAllowed applies allow_countries and deny_countries to the region
// of a number.
func (c *SMSConfig) CountryAllowed(region string) bool {
	for _, cc := range c.DenyCountries {
		if cc == region {
			return false
		}
	}
	if len(c.AllowCountries) == 0 {
		return true
	}
	for _, cc := range c.AllowCountries {
		if cc == region {
			return true
		}
	}
	return false
}

func absHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// parseFrom parses the sender: one address, an optional display name, no
// line breaks.
func parseFrom(s string) (*mail.Address, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("must be one line")
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an address like \"Example ID <noreply@example.org>\"", s)
	}
	return a, nil
}

// webhookTemplate parses a webhook body template and checks that it gives
// valid JSON for a sample message.
func webhookTemplate(text string) (*template.Template, error) {
	t, err := template.New("body").Funcs(template.FuncMap{"json": jsonString}).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, smsBody{To: "447700900001", E164: "+447700900001", Text: "Your code is \"123456\"\n"}); err != nil {
		return nil, err
	}
	if !json.Valid(buf.Bytes()) {
		return nil, fmt.Errorf("does not produce valid JSON (got %q); quote values with json, e.g. {{json .Text}}", truncate(buf.String(), 80))
	}
	return t, nil
}

// smsBody is what a webhook body template sees.
type smsBody struct {
	To   string // E.164 digits without "+"
	E164 string // with "+"
	Text string
}

func jsonString(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
