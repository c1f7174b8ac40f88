package server

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/db/storetest"
	"mxid/mail"
	"mxid/mail/smtptest"
	"mxid/server/outbound"
	"mxid/server/signing"
)

// manualClock is an injectable clock tests move by hand.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func newManualClock() *manualClock { return &manualClock{t: time.Now()} }

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// bindRecorder counts binding changes.
type bindRecorder struct {
	mu      sync.Mutex
	bound   []string
	unbound []string
}

func (l *bindRecorder) Bound(medium, address, mxid string) {
	l.mu.Lock()
	l.bound = append(l.bound, medium+" "+address+" "+mxid)
	l.mu.Unlock()
}

func (l *bindRecorder) Unbound(medium, address string) {
	l.mu.Lock()
	l.unbound = append(l.unbound, medium+" "+address)
	l.mu.Unlock()
}

func (l *bindRecorder) counts() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.bound), len(l.unbound)
}

// idHarness is a running mxid API (real store, real SMTP listener) for the
// validation tests.
type idHarness struct {
	t     testing.TB
	srv   *Server
	ts    *httptest.Server
	store storetest.Store
	clock *manualClock
	smtp  *smtptest.Server
	binds *bindRecorder
	key   *signing.Key
	cfg   Config
	log   *syncBuffer // what the server logged, at debug level
}

type idHarnessOpts struct {
	config func(*Config)
	email  *mail.EmailConfig // nil: plain SMTP to a fresh smtptest server
	sms    *mail.SMSConfig   // nil: log
	smtp   *smtptest.Server
	clock  *manualClock                     // nil: a new one at the current time
	tmpl   *mail.Templates                  // nil: the embedded templates
	store  func(testing.TB) storetest.Store // nil: bbolt
}

// generousLimits keeps rate limits out of the way of tests about other things.
func generousLimits() RateLimitConfig {
	r := Rate{Burst: 100000, Every: time.Millisecond}
	return RateLimitConfig{RequestToken: r, EmailAddress: r, MSISDNNumber: r, MSISDNCountry: r, Attempts: r, Register: r}
}

func newIDHarness(t testing.TB, o idHarnessOpts) *idHarness {
	t.Helper()
	h := &idHarness{t: t, clock: o.clock, binds: &bindRecorder{}}
	if h.clock == nil {
		h.clock = newManualClock()
	}
	var handler http.Handler
	h.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	t.Cleanup(h.ts.Close)

	cfg := DefaultConfig()
	cfg.ServerName = "id.example.test"
	cfg.PublicBaseURL = h.ts.URL
	cfg.RateLimit = generousLimits()
	if o.config != nil {
		o.config(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	h.cfg = cfg
	if o.store == nil {
		o.store = openBolt
	}
	store := o.store(t)
	h.store = store
	var err error
	h.key, err = signing.NewKey(signing.LongTermKeyID)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := outbound.New(cfg.Outbound)
	if err != nil {
		t.Fatal(err)
	}
	email := mail.DefaultEmailConfig()
	if o.email != nil {
		email = *o.email
	} else {
		h.smtp = o.smtp
		if h.smtp == nil {
			h.smtp = smtptest.Start(t, smtptest.Options{Mode: "plain"})
		}
		email.Mode, email.Host, email.Port, email.Timeout = "plain", h.smtp.Host, h.smtp.Port, 5*time.Second
		email.From = "ID <noreply@id.example.test>"
	}
	sms := mail.DefaultSMSConfig()
	if o.sms != nil {
		sms = *o.sms
	}
	h.log = &syncBuffer{}
	logger := slogTo(h.log)
	sender, err := mail.New(email, sms, mail.Options{HTTPClient: policy.Client(outbound.ClientOptions{}), Now: h.clock.Now, Templates: o.tmpl, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	h.srv, err = New(cfg, Deps{Store: store, Key: h.key, Policy: policy, Now: h.clock.Now, Bindings: h.binds, Mail: sender, InviteMail: sender, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	handler = h.srv.Handler()
	return h
}

// account creates an identity-server account for userID and returns its token.
func (h *idHarness) account(userID string) string {
	h.t.Helper()
	tok := randomString(32, alphanumeric)
	if err := h.store.CreateAccountToken(tok, userID, h.clock.Now()); err != nil {
		h.t.Fatal(err)
	}
	return tok
}

type apiReply struct {
	status int
	body   map[string]any
	raw    []byte
	header http.Header
}

func (r apiReply) code() string { s, _ := r.body["errcode"].(string); return s }

func (r apiReply) str(k string) string { s, _ := r.body[k].(string); return s }

// call sends a request: body may be nil, a string / []byte (sent as is) or
// anything else (JSON-encoded). header may be nil.
func (h *idHarness) call(method, path, token string, body any, header http.Header) apiReply {
	h.t.Helper()
	rd := requestBody(h.t, body)
	req, err := http.NewRequest(method, h.ts.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := apiReply{status: resp.StatusCode, raw: raw, header: resp.Header}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			h.t.Fatalf("%s %s: invalid JSON %q", method, path, raw)
		}
	}
	return r
}

const v2Path = "/_matrix/identity/v2"

// want checks a apiReply's status and errcode ("" for a success).
func wantReply(t testing.TB, what string, r apiReply, status int, errcode string) {
	t.Helper()
	if r.status != status || r.code() != errcode {
		t.Errorf("%s: got %d %s (%s), want %d %s", what, r.status, r.code(), truncate(string(r.raw), 200), status, errcode)
	}
}

// requestEmail asks for an email token.
func (h *idHarness) requestEmail(token, email, secret string, attempt any, extra map[string]any) apiReply {
	h.t.Helper()
	body := map[string]any{"email": email, "client_secret": secret, "send_attempt": attempt}
	for k, v := range extra {
		body[k] = v
	}
	return h.call("POST", v2Path+"/validate/email/requestToken", token, body, nil)
}

var linkRE = regexp.MustCompile(`https?://\S+/submitToken\?\S+`)

// mailLink reads the n-th received mail and returns its submitToken link
// and the token in it.
func (h *idHarness) mailLink(n int) (link, token string, m smtptest.Message) {
	h.t.Helper()
	m = h.smtp.Wait(h.t, n)
	p, err := m.Parse()
	if err != nil {
		h.t.Fatal(err)
	}
	link = linkRE.FindString(p.Text)
	if link == "" {
		h.t.Fatalf("no link in mail: %q", p.Text)
	}
	u, err := url.Parse(link)
	if err != nil {
		h.t.Fatal(err)
	}
	token = u.Query().Get("token")
	if !strings.Contains(p.Text, token) || !strings.Contains(p.HTML, token) {
		h.t.Errorf("mail text/HTML lack the token")
	}
	return link, token, m
}

// validatedEmail runs requestToken + POST submitToken and returns the sid.
func (h *idHarness) validatedEmail(token, email, secret string) string {
	h.t.Helper()
	n := len(h.smtp.Messages())
	r := h.requestEmail(token, email, secret, 1, nil)
	wantReply(h.t, "requestToken", r, 200, "")
	_, tok, _ := h.mailLink(n + 1)
	r2 := h.call("POST", v2Path+"/validate/email/submitToken", token, map[string]any{"sid": r.str("sid"), "client_secret": secret, "token": tok}, nil)
	wantReply(h.t, "submitToken", r2, 200, "")
	return r.str("sid")
}
