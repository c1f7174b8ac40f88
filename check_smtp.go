package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"mxid/lookup/threepid"
	"mxid/mail"
)

// checkSMTP sends a real test mail with the configured [email] settings and
// reports each step: connect, greeting, TLS, authentication, send.
func checkSMTP(ctx context.Context, c *check, fs *flag.FlagSet, args []string) error {
	to := fs.String("to", "", "address to send the test message to (required)")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	if !threepid.ValidEmail(*to) {
		fs.Usage()
		return usageError{errors.New("check smtp needs -to ADDRESS, a plain email address")}
	}
	templates, err := mail.LoadTemplates(c.cfg.TemplatesDir)
	if err != nil {
		return err
	}
	// Only email is probed: SMS settings (and their HTTP client) play no part.
	sender, err := mail.New(c.cfg.Email, mail.DefaultSMSConfig(), mail.Options{Templates: templates, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	smtpTo, err := threepid.SMTPAddress(*to)
	if err != nil {
		return err
	}
	sender.ProbeSMTP(ctx, smtpTo, func(what string, fn func() (string, error)) bool {
		return c.step(what, func() (string, error) {
			found, err := fn()
			return found, explainSMTP(err, c.cfg.Email)
		})
	})
	return c.verdict("mxid can send email with these settings; validation and invite emails will go out")
}

// explainSMTP turns a probe failure into advice in plain words.
func explainSMTP(err error, cfg mail.EmailConfig) error {
	if err == nil {
		return nil
	}
	var certErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	var opErr *net.OpError
	var dnsErr *net.DNSError
	msg := err.Error()
	switch {
	case errors.Is(err, mail.ErrLogMode):
		return hint(err, `set [email] mode to "starttls" (port 587), "tls" (port 465) or "plain", with host, port, from and, usually, username and password`)
	case errors.Is(err, mail.ErrNoSTARTTLS):
		return hint(err, `the server does not offer encryption on this port: use mode = "tls" with port 465 if it supports implicit TLS, or check the port`)
	case errors.As(err, &certErr):
		return hint(fmt.Errorf("the mail server's certificate is not from a CA this machine trusts: %v", err),
			"for a private CA, set [email] ca_file to its PEM certificate")
	case errors.As(err, &hostErr):
		return hint(fmt.Errorf("the mail server's certificate is not valid for %q: %v", cfg.Host, err),
			"set [email] host to a name the certificate covers (the name of the mail server, not its IP address)")
	case errors.As(err, &invalidErr):
		return hint(fmt.Errorf("the mail server's certificate is not valid: %v", err), "it may have expired; the mail server's operator must renew it")
	case errors.Is(err, mail.ErrAuth) || strings.Contains(msg, "535") || strings.Contains(msg, "authentication"):
		return hint(err, "check [email] username and password (or password_file); some providers need an app password")
	case strings.Contains(msg, "unencrypted connection"):
		return hint(err, `the password would travel in clear: use mode = "starttls" or "tls"`)
	case errors.As(err, &dnsErr):
		return hint(fmt.Errorf("the mail server's name does not resolve: %v", err), "check [email] host")
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "i/o timeout"):
		return hint(fmt.Errorf("the mail server did not answer within %v: %v", cfg.Timeout, err),
			"a firewall may block outgoing SMTP (many VPS providers block port 25; use 587 or 465)")
	case errors.As(err, &opErr):
		return hint(fmt.Errorf("could not connect to the mail server: %v", err), "check [email] host and port, and that the server accepts connections from this machine")
	case strings.Contains(msg, "550") || strings.Contains(msg, "553") || strings.Contains(msg, "554"):
		return hint(err, "the server refused the sender or recipient: [email] from must be an address the server lets you send as")
	}
	return err
}
