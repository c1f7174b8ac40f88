package mail

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/mail"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"

	"mxid/server/outbound"
)

// smtpSender sends one message per connection: dial, EHLO, STARTTLS or
// implicit TLS (certificate and host name verified), AUTH, MAIL, RCPT,
// DATA, QUIT, all within the caller's deadline.
type smtpSender struct {
	cfg  EmailConfig
	from *mail.Address
	addr string
	tls  *tls.Config
	now  func() time.Time
}

func newSMTPSender(cfg EmailConfig, from *mail.Address, now func() time.Time) (*smtpSender, error) {
	port := cfg.Port
	if port == 0 {
		port = map[string]int{"plain": 25, "starttls": 587, "tls": 465}[cfg.Mode]
	}
	roots, err := outbound.LoadRoots(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("email.ca_file: %w", err)
	}
	host := strings.Trim(cfg.Host, "[]")
	return &smtpSender{
		cfg:  cfg,
		from: from,
		addr: net.JoinHostPort(host, strconv.Itoa(port)),
		tls:  &tls.Config{ServerName: host, RootCAs: roots, MinVersion: tls.VersionTLS12},
		now:  now,
	}, nil
}

// build makes the MIME message: multipart/alternative text + HTML, every
// header value encoded by go-mail (RFC 2047 where needed), a random
// boundary and Message-ID.
func (s *smtpSender) build(to, subject, text, html string) (*gomail.Msg, error) {
	m := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	m.FromMailAddress(s.from)
	if err := m.To(to); err != nil {
		return nil, fmt.Errorf("recipient: %w", err)
	}
	m.Subject(subject)
	m.SetDateWithValue(s.now())
	domain := "localhost"
	if at := strings.LastIndexByte(s.from.Address, '@'); at >= 0 {
		domain = s.from.Address[at+1:]
	}
	m.SetMessageIDWithValue(randomID() + "@" + domain)
	m.SetBodyString(gomail.TypeTextPlain, text)
	m.AddAlternativeString(gomail.TypeTextHTML, html)
	return m, nil
}

func (s *smtpSender) send(ctx context.Context, to, subject, text, html string) error {
	msg, err := s.build(to, subject, text, html)
	if err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = s.now().Add(s.cfg.Timeout)
	}
	// Connections are closed when ctx ends (bounding the whole exchange,
	// which go-mail's per-command deadlines do not) and in any case when
	// the send returns (go-mail leaves a connection open when it fails
	// after dialing).
	var conns []net.Conn
	var stops []func() bool
	defer func() {
		for i, conn := range conns {
			stops[i]()
			conn.Close()
		}
	}()
	dial := func(dctx context.Context, network, addr string) (net.Conn, error) {
		d := &net.Dialer{Timeout: time.Until(deadline)}
		var conn net.Conn
		var err error
		if s.cfg.Mode == "tls" {
			conn, err = (&tls.Dialer{NetDialer: d, Config: s.tls.Clone()}).DialContext(dctx, network, addr)
		} else {
			conn, err = d.DialContext(dctx, network, addr)
		}
		if err != nil {
			return nil, err
		}
		conns = append(conns, conn)
		stops = append(stops, context.AfterFunc(ctx, func() { conn.Close() }))
		return conn, nil
	}
	policy := gomail.NoTLS
	if s.cfg.Mode == "starttls" {
		policy = gomail.TLSMandatory
	}
	host, portStr, _ := net.SplitHostPort(s.addr)
	port, _ := strconv.Atoi(portStr)
	opts := []gomail.Option{
		gomail.WithPort(port),
		gomail.WithTimeout(time.Until(deadline)),
		gomail.WithTLSPolicy(policy),
		gomail.WithTLSConfig(s.tls.Clone()),
		gomail.WithHELO(s.cfg.HELO),
		gomail.WithDialContextFunc(dial),
	}
	if s.cfg.Username != "" {
		// PLAIN and LOGIN refuse to run without TLS (except to
		// localhost); the challenge-response mechanisms come first.
		opts = append(opts,
			gomail.WithOpportunisticSMTPAuth(gomail.SMTPAuthSCRAMSHA256, gomail.SMTPAuthSCRAMSHA1, gomail.SMTPAuthCramMD5, gomail.SMTPAuthPlain, gomail.SMTPAuthLogin),
			gomail.WithUsername(s.cfg.Username), gomail.WithPassword(s.cfg.Password))
	}
	client, err := gomail.NewClient(host, opts...)
	if err != nil {
		return fmt.Errorf("smtp client: %w", err)
	}
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("smtp %s: %w (%v)", s.addr, ctx.Err(), err)
		}
		return fmt.Errorf("smtp %s: %w", s.addr, err)
	}
	return nil
}

func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
