// Package smtptest is an in-process SMTP server for tests, like
// net/http/httptest for HTTP: plain, STARTTLS or implicit TLS with a
// certificate from a test CA it can make, optional AUTH PLAIN/LOGIN, and
// every command and message recorded. It also parses a received message
// into its text and HTML parts.
//
// It is test support: only _test.go files import it. It imports only the
// standard library.
package smtptest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options configure a Server.
type Options struct {
	// Mode is "plain", "starttls" or "tls" (implicit TLS).
	Mode string
	// Cert is the server certificate for the TLS modes.
	Cert tls.Certificate
	// Username and Password, when set, make AUTH (PLAIN or LOGIN, offered
	// only over TLS in starttls mode) required before MAIL.
	Username, Password string
}

// Message is one received message.
type Message struct {
	From string
	To   []string
	Data []byte
}

// Server is a running test SMTP server on 127.0.0.1.
type Server struct {
	Addr string // "127.0.0.1:port"
	Host string
	Port int

	opts Options
	ln   net.Listener
	tls  *tls.Config

	mu        sync.Mutex
	msgs      []Message
	commands  []string
	tlsErrors []error
	failRcpt  int
	arrived   chan struct{}
	sessions  int           // connections being served
	ended     chan struct{} // closed (and replaced) when a session ends
	wg        sync.WaitGroup
}

// Start starts a server; it stops when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{opts: o, ln: ln, arrived: make(chan struct{}, 1000), ended: make(chan struct{})}
	s.Addr = ln.Addr().String()
	s.Host = "127.0.0.1"
	s.Port = ln.Addr().(*net.TCPAddr).Port
	if o.Mode != "plain" {
		s.tls = &tls.Config{Certificates: []tls.Certificate{o.Cert}, MinVersion: tls.VersionTLS12}
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

// Messages returns the messages received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Commands returns every command verb received so far ("EHLO", "DATA"…).
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commands...)
}

// SawCommand reports whether verb was ever received.
func (s *Server) SawCommand(verb string) bool {
	for _, c := range s.Commands() {
		if c == verb {
			return true
		}
	}
	return false
}

// TLSErrors returns the failed TLS handshakes.
func (s *Server) TLSErrors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.tlsErrors...)
}

// FailNextRcpt makes the next n RCPT commands fail with 550.
func (s *Server) FailNextRcpt(n int) {
	s.mu.Lock()
	s.failRcpt = n
	s.mu.Unlock()
}

// Wait waits for the n-th message (1-based) and returns it.
func (s *Server) Wait(t testing.TB, n int) Message {
	t.Helper()
	deadline := time.After(time.Minute) // a hang, not a slow machine
	for {
		if m := s.Messages(); len(m) >= n {
			return m[n-1]
		}
		select {
		case <-s.arrived:
		case <-deadline:
			t.Fatalf("smtptest: message %d did not arrive within a minute (have %d)", n, len(s.Messages()))
		}
	}
}

// WaitIdle waits until every connection accepted so far has ended (the
// client hung up, or the server did): from then on, Commands and Messages
// hold everything those clients sent, so a test can assert what did not
// come.
func (s *Server) WaitIdle(t testing.TB) {
	t.Helper()
	deadline := time.After(time.Minute) // a hang, not a slow machine
	for {
		s.mu.Lock()
		n, ended := s.sessions, s.ended
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ended:
		case <-deadline:
			t.Fatalf("smtptest: %d connection(s) still open after a minute", n)
		}
	}
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		s.mu.Lock()
		s.sessions++
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				s.sessions--
				close(s.ended)
				s.ended = make(chan struct{})
				s.mu.Unlock()
			}()
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			s.session(c)
		}()
	}
}

type conn struct {
	c    net.Conn
	r    *bufio.Reader
	isTL bool
}

func (c *conn) reply(format string, args ...any) {
	fmt.Fprintf(c.c, format+"\r\n", args...)
}

func (c *conn) line() (string, error) {
	l, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimRight(l, "\r\n"), nil
}

func (s *Server) record(verb string) {
	s.mu.Lock()
	s.commands = append(s.commands, verb)
	s.mu.Unlock()
}

func (s *Server) tlsFailed(err error) {
	s.mu.Lock()
	s.tlsErrors = append(s.tlsErrors, err)
	s.mu.Unlock()
}

func (s *Server) session(raw net.Conn) {
	c := &conn{c: raw}
	if s.opts.Mode == "tls" {
		tc := tls.Server(raw, s.tls)
		if err := tc.Handshake(); err != nil {
			s.tlsFailed(err)
			return
		}
		c.c, c.isTL = tc, true
	}
	c.r = bufio.NewReader(c.c)
	c.reply("220 smtptest ESMTP ready")
	authed := s.opts.Username == ""
	var from string
	var to []string
	for {
		l, err := c.line()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(l, " ")
		verb = strings.ToUpper(verb)
		s.record(verb)
		switch verb {
		case "EHLO":
			exts := []string{"smtptest", "8BITMIME", "SMTPUTF8", "PIPELINING"}
			if s.opts.Mode == "starttls" && !c.isTL {
				exts = append(exts, "STARTTLS")
			}
			if s.opts.Username != "" && (c.isTL || s.opts.Mode == "plain") {
				exts = append(exts, "AUTH PLAIN LOGIN")
			}
			for i, e := range exts {
				sep := "-"
				if i == len(exts)-1 {
					sep = " "
				}
				c.reply("250%s%s", sep, e)
			}
		case "HELO":
			c.reply("250 smtptest")
		case "STARTTLS":
			if s.opts.Mode != "starttls" || c.isTL {
				c.reply("503 STARTTLS not available")
				continue
			}
			c.reply("220 Ready to start TLS")
			tc := tls.Server(c.c, s.tls)
			if err := tc.Handshake(); err != nil {
				s.tlsFailed(err)
				return
			}
			c.c, c.isTL = tc, true
			c.r = bufio.NewReader(tc)
			authed = s.opts.Username == ""
		case "AUTH":
			user, pass, err := s.auth(c, arg)
			if err != nil {
				c.reply("501 %v", err)
				continue
			}
			if user != s.opts.Username || pass != s.opts.Password {
				c.reply("535 5.7.8 Authentication credentials invalid")
				continue
			}
			authed = true
			c.reply("235 2.7.0 Authentication successful")
		case "MAIL":
			if !authed {
				c.reply("530 5.7.0 Authentication required")
				continue
			}
			from, to = addrArg(arg), nil
			c.reply("250 OK")
		case "RCPT":
			s.mu.Lock()
			fail := s.failRcpt > 0
			if fail {
				s.failRcpt--
			}
			s.mu.Unlock()
			if fail {
				c.reply("550 5.1.1 Mailbox unavailable (smtptest)")
				continue
			}
			to = append(to, addrArg(arg))
			c.reply("250 OK")
		case "DATA":
			if from == "" || len(to) == 0 {
				c.reply("503 Need MAIL and RCPT first")
				continue
			}
			c.reply("354 End data with <CR><LF>.<CR><LF>")
			var buf bytes.Buffer
			for {
				l, err := c.line()
				if err != nil {
					return
				}
				if l == "." {
					break
				}
				l = strings.TrimPrefix(l, ".") // dot-unstuffing
				buf.WriteString(l)
				buf.WriteString("\r\n")
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, Message{From: from, To: to, Data: buf.Bytes()})
			s.mu.Unlock()
			select {
			case s.arrived <- struct{}{}:
			default:
			}
			from, to = "", nil
			c.reply("250 OK: queued")
		case "RSET":
			from, to = "", nil
			c.reply("250 OK")
		case "NOOP":
			c.reply("250 OK")
		case "QUIT":
			c.reply("221 Bye")
			return
		default:
			c.reply("502 Command not implemented")
		}
	}
}

func (s *Server) auth(c *conn, arg string) (user, pass string, err error) {
	mech, initial, _ := strings.Cut(arg, " ")
	read := func(prompt string) (string, error) {
		c.reply("334 %s", prompt)
		l, err := c.line()
		if err != nil {
			return "", err
		}
		b, err := base64.StdEncoding.DecodeString(l)
		return string(b), err
	}
	switch strings.ToUpper(mech) {
	case "PLAIN":
		var resp string
		if initial != "" {
			b, err := base64.StdEncoding.DecodeString(initial)
			if err != nil {
				return "", "", err
			}
			resp = string(b)
		} else if resp, err = read(""); err != nil {
			return "", "", err
		}
		parts := strings.Split(resp, "\x00")
		if len(parts) != 3 {
			return "", "", errors.New("malformed PLAIN response")
		}
		return parts[1], parts[2], nil
	case "LOGIN":
		if user, err = read(base64.StdEncoding.EncodeToString([]byte("Username:"))); err != nil {
			return "", "", err
		}
		if pass, err = read(base64.StdEncoding.EncodeToString([]byte("Password:"))); err != nil {
			return "", "", err
		}
		return user, pass, nil
	}
	return "", "", fmt.Errorf("unsupported mechanism %q", mech)
}

// addrArg takes the address out of "FROM:<a@b> SIZE=…".
func addrArg(arg string) string {
	i, j := strings.IndexByte(arg, '<'), strings.IndexByte(arg, '>')
	if i < 0 || j < i {
		return arg
	}
	return arg[i+1 : j]
}

// Parsed is a received message taken apart.
type Parsed struct {
	Header mail.Header
	// Subject is the decoded Subject header.
	Subject string
	// Text and HTML are the decoded text/plain and text/html parts.
	Text, HTML string
	// Parts counts the leaf parts.
	Parts int
}

// Parse reads m as an RFC 5322 message with a multipart/alternative body
// (or a single part) and decodes its parts.
func (m Message) Parse() (Parsed, error) {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return Parsed{}, err
	}
	p := Parsed{Header: msg.Header}
	dec := new(mime.WordDecoder)
	if p.Subject, err = dec.DecodeHeader(msg.Header.Get("Subject")); err != nil {
		return Parsed{}, err
	}
	err = walk(msg.Header.Get("Content-Type"), msg.Header.Get("Content-Transfer-Encoding"), msg.Body, &p)
	return p, err
}

func walk(contentType, cte string, body io.Reader, p *Parsed) error {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return fmt.Errorf("content-type %q: %w", contentType, err)
	}
	if strings.HasPrefix(mt, "multipart/") {
		r := multipart.NewReader(body, params["boundary"])
		for {
			part, err := r.NextRawPart()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := walk(part.Header.Get("Content-Type"), part.Header.Get("Content-Transfer-Encoding"), part, p); err != nil {
				return err
			}
		}
	}
	var rd io.Reader = body
	switch strings.ToLower(cte) {
	case "quoted-printable":
		rd = quotedprintable.NewReader(body)
	case "base64":
		rd = base64.NewDecoder(base64.StdEncoding, body)
	}
	b, err := io.ReadAll(rd)
	if err != nil {
		return err
	}
	p.Parts++
	switch mt {
	case "text/plain":
		p.Text += string(b)
	case "text/html":
		p.HTML += string(b)
	}
	return nil
}

// CA is a throw-away certificate authority for tests.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a CA.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "smtptest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Issue makes a server certificate for the given host names and IPs.
func (ca *CA) Issue(t testing.TB, hosts ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// WritePEM writes the CA certificate to a file in a temp dir and returns
// its path (for ca_file settings).
func (ca *CA) WritePEM(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(p, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
