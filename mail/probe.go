package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"time"

	"mxid/server/outbound"
)

// ProbeSMTP tries the configured SMTP settings one step at a time for
// `mxid check smtp`: TCP connection, the server's greeting, TLS (implicit
// or STARTTLS, certificate verified as for real sends), authentication, and
// finally a real test message to `to` through the same code that sends
// verification emails. step runs one named step and reports whether it
// passed; ProbeSMTP stops at the first failure.
func (s *Sender) ProbeSMTP(ctx context.Context, to string, step func(what string, fn func() (string, error)) bool) {
	if !step("settings", func() (string, error) {
		if s.email.Mode == "log" {
			return "", ErrLogMode
		}
		return fmt.Sprintf("%s to %s as %s, from %s", s.email.Mode, s.smtp.addr, orNone(s.email.Username), s.from.String()), nil
	}) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.email.Timeout)
	defer cancel()
	var conn net.Conn
	if !step("connect", func() (string, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", s.smtp.addr)
		if err != nil {
			return "", err
		}
		conn = c
		return "connected to " + c.RemoteAddr().String(), nil
	}) {
		return
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	host, _, _ := net.SplitHostPort(s.smtp.addr)
	if s.email.Mode == "tls" {
		if !step("TLS", func() (string, error) {
			tc := tls.Client(conn, s.smtp.tls.Clone())
			if err := tc.HandshakeContext(ctx); err != nil {
				return "", err
			}
			conn = tc
			return outbound.DescribeTLS(tc.ConnectionState(), false), nil
		}) {
			return
		}
	}
	var client *smtp.Client
	if !step("greeting", func() (string, error) {
		c, err := smtp.NewClient(conn, host)
		if err != nil {
			return "", err
		}
		client = c
		helo := s.email.HELO
		if helo == "" {
			helo = "localhost"
		}
		if err := c.Hello(helo); err != nil {
			return "", err
		}
		ext := []string{}
		for _, e := range []string{"STARTTLS", "AUTH", "SMTPUTF8", "8BITMIME"} {
			if ok, _ := c.Extension(e); ok {
				ext = append(ext, e)
			}
		}
		return fmt.Sprintf("the server answered EHLO; it offers %v", ext), nil
	}) {
		return
	}
	defer client.Close()
	if s.email.Mode == "starttls" {
		if !step("STARTTLS", func() (string, error) {
			if ok, _ := client.Extension("STARTTLS"); !ok {
				return "", ErrNoSTARTTLS
			}
			if err := client.StartTLS(s.smtp.tls.Clone()); err != nil {
				return "", err
			}
			st, _ := client.TLSConnectionState()
			return outbound.DescribeTLS(st, false), nil
		}) {
			return
		}
	}
	if s.email.Username != "" {
		if !step("authentication", func() (string, error) {
			if ok, _ := client.Extension("AUTH"); !ok {
				return "", errors.New("the server offers no AUTH")
			}
			if err := client.Auth(smtp.PlainAuth("", s.email.Username, s.email.Password, host)); err != nil {
				return "", fmt.Errorf("%w: %v", ErrAuth, err)
			}
			return "logged in as " + s.email.Username, nil
		}) {
			return
		}
	}
	client.Quit()
	step("send a test message", func() (string, error) {
		subject := "mxid test message"
		text := fmt.Sprintf("This is a test message from the %s identity server (mxid check smtp), sent at %s.\n", s.email.HELO, s.now().UTC().Format(time.RFC1123))
		html := "<p>This is a test message from mxid (<code>mxid check smtp</code>).</p>"
		if err := s.smtp.send(ctx, to, subject, text, html); err != nil {
			return "", err
		}
		return "the server accepted a message for " + to + "; check that it arrived (and not as spam)", nil
	})
}

// Errors ProbeSMTP reports, for the caller's advice.
var (
	ErrLogMode    = errors.New("email.mode is \"log\": emails are written to the log, not sent")
	ErrNoSTARTTLS = errors.New("the server does not offer STARTTLS")
	ErrAuth       = errors.New("authentication failed")
)

func orNone(user string) string {
	if user == "" {
		return "no user (no AUTH)"
	}
	return user
}
