package mail

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mxid/mail/smtptest"
)

var sample = Verification{
	Medium: "email", Address: "Alice@Example.org", Token: "tok123ABC",
	Link:       "https://id.example.org/_matrix/identity/v2/validate/email/submitToken?sid=s1&client_secret=c&token=tok123ABC",
	ServerName: "id.example.org", PublicBaseURL: "https://id.example.org",
}

func smtpConfig(srv *smtptest.Server, mode string) EmailConfig {
	c := DefaultEmailConfig()
	c.Mode, c.Host, c.Port = mode, srv.Host, srv.Port
	c.From = "Example ID <noreply@id.example.org>"
	c.Timeout = 5 * time.Second
	return c
}

func newSender(t *testing.T, email EmailConfig, sms SMSConfig, client *http.Client, log *slog.Logger) *Sender {
	t.Helper()
	if errs := email.Validate(); len(errs) > 0 {
		t.Fatalf("email config: %v", errs)
	}
	if errs := sms.Validate(); len(errs) > 0 {
		t.Fatalf("sms config: %v", errs)
	}
	s, err := New(email, sms, Options{HTTPClient: client, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Every SMTP mode delivers a multipart text+HTML message with the link and
// the token, to the right envelope recipient, certificate verified against
// the configured CA.
func TestSMTPModes(t *testing.T) {
	ca := smtptest.NewCA(t)
	caFile := ca.WritePEM(t)
	cert := ca.Issue(t, "127.0.0.1", "localhost")
	for _, tc := range []struct {
		mode, user, pass string
	}{
		{"plain", "", ""},
		{"plain", "relay", "secret"}, // AUTH in the clear is allowed to a loopback relay only
		{"starttls", "", ""},
		{"starttls", "alice", "s3cret"},
		{"tls", "", ""},
		{"tls", "alice", "s3cret"},
	} {
		t.Run(tc.mode+"/auth="+tc.user, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{Mode: tc.mode, Cert: cert, Username: tc.user, Password: tc.pass})
			cfg := smtpConfig(srv, tc.mode)
			cfg.CAFile = caFile
			cfg.Username, cfg.Password = tc.user, tc.pass
			s := newSender(t, cfg, DefaultSMSConfig(), nil, nil)
			if err := s.SendVerificationEmail(context.Background(), "Alice@Example.org", sample); err != nil {
				t.Fatalf("send: %v", err)
			}
			m := srv.Wait(t, 1)
			if m.From != "noreply@id.example.org" || len(m.To) != 1 || m.To[0] != "Alice@Example.org" {
				t.Errorf("envelope from %q to %q", m.From, m.To)
			}
			p, err := m.Parse()
			if err != nil {
				t.Fatal(err)
			}
			if p.Parts != 2 || !strings.Contains(p.Text, sample.Link) || !strings.Contains(p.Text, sample.Token) {
				t.Errorf("parts=%d text=%q", p.Parts, p.Text)
			}
			if !strings.Contains(p.HTML, `href="https://id.example.org/_matrix/identity/v2/validate/email/submitToken?sid=s1&amp;client_secret=c&amp;token=tok123ABC"`) {
				t.Errorf("HTML part lacks the link: %q", p.HTML)
			}
			if !strings.Contains(p.Subject, "id.example.org") || p.Header.Get("Message-Id") == "" || p.Header.Get("Date") == "" {
				t.Errorf("headers: %v", p.Header)
			}
			if got := p.Header.Get("From"); !strings.Contains(got, "noreply@id.example.org") {
				t.Errorf("From = %q", got)
			}
		})
	}
}

// A server certificate that is not trusted stops the send before any mail
// data (or even the envelope) is sent: CVE-2023-38686 in sydent.
func TestSMTPUntrustedCertificate(t *testing.T) {
	trusted := smtptest.NewCA(t)
	other := smtptest.NewCA(t)
	for _, mode := range []string{"starttls", "tls"} {
		t.Run(mode, func(t *testing.T) {
			srv := smtptest.Start(t, smtptest.Options{Mode: mode, Cert: other.Issue(t, "127.0.0.1")})
			cfg := smtpConfig(srv, mode)
			cfg.CAFile = trusted.WritePEM(t)
			s := newSender(t, cfg, DefaultSMSConfig(), nil, nil)
			err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample)
			if err == nil {
				t.Fatal("send to an untrusted server succeeded")
			}
			srv.WaitIdle(t)
			for _, verb := range []string{"MAIL", "RCPT", "DATA", "AUTH"} {
				if srv.SawCommand(verb) {
					t.Errorf("server saw %s after a failed handshake", verb)
				}
			}
			if len(srv.Messages()) != 0 {
				t.Error("a message was delivered")
			}
		})
	}
	// The right name matters too: a trusted certificate for another host.
	t.Run("wrong-name", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Options{Mode: "tls", Cert: trusted.Issue(t, "mail.example.org")})
		cfg := smtpConfig(srv, "tls")
		cfg.CAFile = trusted.WritePEM(t)
		s := newSender(t, cfg, DefaultSMSConfig(), nil, nil)
		if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err == nil {
			t.Fatal("send to a server with a certificate for another name succeeded")
		}
		if srv.SawCommand("DATA") {
			t.Error("DATA sent")
		}
	})
}

func TestSMTPFailures(t *testing.T) {
	t.Run("wrong-password", func(t *testing.T) {
		ca := smtptest.NewCA(t)
		srv := smtptest.Start(t, smtptest.Options{Mode: "tls", Cert: ca.Issue(t, "127.0.0.1"), Username: "alice", Password: "right"})
		cfg := smtpConfig(srv, "tls")
		cfg.CAFile, cfg.Username, cfg.Password = ca.WritePEM(t), "alice", "wrong"
		s := newSender(t, cfg, DefaultSMSConfig(), nil, nil)
		if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err == nil {
			t.Fatal("send with a wrong password succeeded")
		}
		if srv.SawCommand("DATA") {
			t.Error("DATA sent")
		}
	})
	t.Run("recipient-refused", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Options{Mode: "plain"})
		srv.FailNextRcpt(1)
		s := newSender(t, smtpConfig(srv, "plain"), DefaultSMSConfig(), nil, nil)
		if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err == nil {
			t.Fatal("send succeeded although RCPT was refused")
		}
		if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err != nil {
			t.Fatalf("second send: %v", err)
		}
	})
	t.Run("starttls-missing", func(t *testing.T) {
		srv := smtptest.Start(t, smtptest.Options{Mode: "plain"})
		s := newSender(t, smtpConfig(srv, "starttls"), DefaultSMSConfig(), nil, nil)
		if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err == nil {
			t.Fatal("starttls mode sent over a server without STARTTLS")
		}
		if srv.SawCommand("MAIL") {
			t.Error("MAIL sent in the clear")
		}
	})
	// A server that accepts the connection and never answers: the whole
	// send ends at the deadline.
	t.Run("deadline", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		cfg := DefaultEmailConfig()
		cfg.Mode, cfg.Host, cfg.Port, cfg.Timeout = "plain", "127.0.0.1", ln.Addr().(*net.TCPAddr).Port, time.Second
		s := newSender(t, cfg, DefaultSMSConfig(), nil, nil)
		start := time.Now()
		if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err == nil {
			t.Fatal("send to a silent server succeeded")
		}
		// Ended by the deadline; the upper bound only catches a send that
		// waits on regardless.
		if d := time.Since(start); d < time.Second || d > 10*time.Second+5*time.Second {
			t.Errorf("send took %v with a 1s deadline", d)
		}
	})
}

// No template value can add a header or a MIME part, and HTML values are
// escaped.
func TestMessageStructureSurvivesHostileValues(t *testing.T) {
	srv := smtptest.Start(t, smtptest.Options{Mode: "plain"})
	dir := t.TempDir()
	// An operator template that puts values in the subject.
	os.WriteFile(filepath.Join(dir, TemplateEmailSubject), []byte("Verify {{.Address}} on {{.ServerName}}\n"), 0o644)
	tmpl, err := LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(smtpConfig(srv, "plain"), DefaultSMSConfig(), Options{Templates: tmpl})
	if err != nil {
		t.Fatal(err)
	}
	v := sample
	v.Address = "a@b.org\r\nBcc: victim@evil.example\r\n\r\n--boundary\r\nContent-Type: text/html\r\n\r\n<h1>pwn</h1>"
	v.ServerName = "id.example.org\nX-Evil: 1"
	v.Token = `<script>alert(1)</script>`
	if err := s.SendVerificationEmail(context.Background(), "a@b.org", v); err != nil {
		t.Fatal(err)
	}
	m := srv.Wait(t, 1)
	p, err := m.Parse()
	if err != nil {
		t.Fatal(err)
	}
	if p.Parts != 2 {
		t.Errorf("%d parts, want 2", p.Parts)
	}
	if p.Header.Get("Bcc") != "" || p.Header.Get("X-Evil") != "" {
		t.Errorf("a value added a header: %v", p.Header)
	}
	if len(m.To) != 1 || m.To[0] != "a@b.org" {
		t.Errorf("recipients %v", m.To)
	}
	if strings.Contains(p.HTML, "<script>") || !strings.Contains(p.HTML, "&lt;script&gt;") {
		t.Errorf("HTML part not escaped: %q", p.HTML)
	}
	if strings.ContainsAny(p.Subject, "\r\n") || !strings.Contains(p.Subject, "Bcc: victim@evil.example") {
		t.Errorf("subject %q", p.Subject)
	}
	// RFC 2047: the raw Subject header is ASCII.
	for _, line := range bytes.Split(m.Data, []byte("\r\n")) {
		if bytes.HasPrefix(line, []byte("Subject:")) && bytes.ContainsAny(line, "\x00\x7f") {
			t.Errorf("raw subject %q", line)
		}
	}
	// A non-ASCII subject is encoded.
	v = sample
	v.ServerName = "idé.example.org"
	if err := s.SendVerificationEmail(context.Background(), "a@b.org", v); err != nil {
		t.Fatal(err)
	}
	m = srv.Wait(t, 2)
	if !bytes.Contains(m.Data, []byte("Subject: =?UTF-8?q?")) && !bytes.Contains(m.Data, []byte("Subject: =?UTF-8?Q?")) {
		t.Errorf("non-ASCII subject not RFC 2047-encoded:\n%s", m.Data[:min(len(m.Data), 600)])
	}
	if p, _ := m.Parse(); !strings.Contains(p.Subject, "idé.example.org") {
		t.Errorf("decoded subject %q", p.Subject)
	}
}

func TestLogMode(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	s := newSender(t, DefaultEmailConfig(), DefaultSMSConfig(), nil, log)
	if err := s.SendVerificationEmail(context.Background(), "alice@example.org", sample); err != nil {
		t.Fatal(err)
	}
	v := sample
	v.Token = "123456"
	if err := s.SendVerificationSMS(context.Background(), "447700900001", v); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, sample.Token) || !strings.Contains(out, "123456") || !strings.Contains(out, "447700900001") {
		t.Errorf("log mode did not write the messages: %s", out)
	}
	if e, sms := s.LogMode(); !e || !sms {
		t.Error("LogMode is false for the default")
	}
}

func TestTemplates(t *testing.T) {
	write := func(dir, name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	write(dir, TemplateSMS, "Code {{.Token}} for {{.ServerName}}")
	tmpl, err := LoadTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tmpl.render(TemplateSMS, sample); got != "Code tok123ABC for id.example.org" {
		t.Errorf("override not used: %q", got)
	}
	if got, _ := tmpl.render(TemplateEmailText, sample); !strings.Contains(got, sample.Link) {
		t.Errorf("embedded fallback: %q", got)
	}
	var page bytes.Buffer
	if err := tmpl.RenderPage(&page, TemplatePageFailure, Page{ServerName: "x", Message: "<b>bad</b>"}); err != nil || !strings.Contains(page.String(), "&lt;b&gt;bad") {
		t.Errorf("page: %v %q", err, page.String())
	}
	for name, files := range map[string]map[string]string{
		"unknown-file":  {"verify_emial.txt": "x"},
		"syntax":        {TemplateEmailText: "{{.Token"},
		"unknown-field": {TemplateEmailHTML: "{{.Nope}}"},
	} {
		d := t.TempDir()
		for f, text := range files {
			write(d, f, text)
		}
		if _, err := LoadTemplates(d); err == nil {
			t.Errorf("%s: LoadTemplates accepted it", name)
		}
	}
	if _, err := LoadTemplates(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing templates_dir was accepted")
	}
}

func TestSMSWebhook(t *testing.T) {
	type got struct {
		auth string
		body map[string]any
	}
	calls := make(chan got, 4)
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &body); err != nil || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook body %q: %v", b, err)
		}
		calls <- got{r.Header.Get("X-Api-Key"), body}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	cfg := DefaultSMSConfig()
	cfg.Provider = "webhook"
	cfg.Webhook.URL = srv.URL + "/send"
	cfg.Webhook.AuthHeader, cfg.Webhook.AuthValue = "X-Api-Key", "k3y"
	cfg.Webhook.BodyTemplate = `{"number": {{json .To}}, "e164": {{json .E164}}, "message": {{json .Text}}}`
	s := newSender(t, DefaultEmailConfig(), cfg, srv.Client(), nil)
	v := sample
	v.Token = "123456"
	v.ServerName = `id "quoted"`
	if err := s.SendVerificationSMS(context.Background(), "447700900001", v); err != nil {
		t.Fatal(err)
	}
	c := <-calls
	if c.auth != "k3y" || c.body["number"] != "447700900001" || c.body["e164"] != "+447700900001" || !strings.Contains(c.body["message"].(string), "123456") {
		t.Errorf("webhook got %+v", c)
	}
	status = http.StatusBadGateway
	if err := s.SendVerificationSMS(context.Background(), "447700900001", v); err == nil {
		t.Error("a 502 from the gateway was taken as success")
	}
}

func TestSMSTwilio(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		r.ParseForm()
		if r.URL.Path != "/2010-04-01/Accounts/AC123/Messages.json" || user != "AC123" || pass != "tok" ||
			r.PostForm.Get("To") != "+447700900001" || r.PostForm.Get("From") != "+15005550006" || !strings.Contains(r.PostForm.Get("Body"), "654321") {
			http.Error(w, `{"code": 20003, "message": "Authenticate"}`, http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"sid": "SM1", "status": "queued"}`)
	}))
	defer srv.Close()
	cfg := DefaultSMSConfig()
	cfg.Provider = "twilio"
	cfg.Twilio = TwilioConfig{AccountSID: "AC123", AuthToken: "tok", From: "+15005550006", BaseURL: srv.URL}
	s := newSender(t, DefaultEmailConfig(), cfg, srv.Client(), nil)
	v := sample
	v.Token = "654321"
	if err := s.SendVerificationSMS(context.Background(), "447700900001", v); err != nil {
		t.Fatal(err)
	}
	cfg.Twilio.AuthToken = "wrong"
	s = newSender(t, DefaultEmailConfig(), cfg, srv.Client(), nil)
	if err := s.SendVerificationSMS(context.Background(), "447700900001", v); err == nil {
		t.Error("a 401 from Twilio was taken as success")
	}
}

func TestConfigValidate(t *testing.T) {
	if errs := DefaultEmailConfig(); len(errs.Validate()) != 0 {
		t.Errorf("default email config: %v", errs.Validate())
	}
	d := DefaultSMSConfig()
	if errs := d.Validate(); len(errs) != 0 {
		t.Errorf("default sms config: %v", errs)
	}
	for name, mut := range map[string]func(*EmailConfig){
		"mode":           func(c *EmailConfig) { c.Mode = "ssl" },
		"from":           func(c *EmailConfig) { c.From = "not an address" },
		"from-crlf":      func(c *EmailConfig) { c.From = "a@b.org\r\nBcc: x@y.org" },
		"timeout":        func(c *EmailConfig) { c.Timeout = 0 },
		"host":           func(c *EmailConfig) { c.Mode, c.Host = "tls", "" },
		"auth-cleartext": func(c *EmailConfig) { c.Mode, c.Host, c.Username, c.Password = "plain", "smtp.example.org", "u", "p" },
		"user-no-pass":   func(c *EmailConfig) { c.Username = "u" },
		"ca":             func(c *EmailConfig) { c.CAFile = "/nonexistent.pem" },
	} {
		c := DefaultEmailConfig()
		mut(&c)
		if len(c.Validate()) == 0 {
			t.Errorf("email %s: accepted", name)
		}
	}
	for name, mut := range map[string]func(*SMSConfig){
		"provider":    func(c *SMSConfig) { c.Provider = "openmarket" },
		"country":     func(c *SMSConfig) { c.DenyCountries = []string{"gb"} },
		"twilio":      func(c *SMSConfig) { c.Provider = "twilio" },
		"webhook-url": func(c *SMSConfig) { c.Provider = "webhook" },
		"webhook-json": func(c *SMSConfig) {
			c.Provider, c.Webhook.URL, c.Webhook.BodyTemplate = "webhook", "https://x.org", `{"to": {{.To}}, "t": "{{.Text}}"}`
		},
		"webhook-field": func(c *SMSConfig) {
			c.Provider, c.Webhook.URL, c.Webhook.BodyTemplate = "webhook", "https://x.org", `{{json .Nope}}`
		},
	} {
		c := DefaultSMSConfig()
		mut(&c)
		if len(c.Validate()) == 0 {
			t.Errorf("sms %s: accepted", name)
		}
	}
	c := SMSConfig{AllowCountries: []string{"GB", "FR"}, DenyCountries: []string{"FR"}}
	if !c.CountryAllowed("GB") || c.CountryAllowed("FR") || c.CountryAllowed("US") {
		t.Error("CountryAllowed")
	}
}
