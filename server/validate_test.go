package server

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"mxid/db"
	"mxid/mail"
	"mxid/mail/smtptest"
	"mxid/server/signing"
)

// The whole email flow as a client and a person do it, over each SMTP
// mode: request a token, read the mail, open its link, check the session,
// bind, read the binding back, unbind.
func TestEmailFlowOverSMTPModes(t *testing.T) {
	ca := smtptest.NewCA(t)
	cert := ca.Issue(t, "127.0.0.1")
	for _, mode := range []string{"plain", "starttls", "tls"} {
		t.Run(mode, func(t *testing.T) {
			smtp := smtptest.Start(t, smtptest.Options{Mode: mode, Cert: cert, Username: "mxid", Password: "pw"})
			email := mail.DefaultEmailConfig()
			email.Mode, email.Host, email.Port, email.CAFile = mode, smtp.Host, smtp.Port, ca.WritePEM(t)
			email.Username, email.Password = "mxid", "pw"
			h := newIDHarness(t, idHarnessOpts{email: &email})
			h.smtp = smtp
			tok := h.account("@alice:hs.test")

			r := h.requestEmail(tok, "Alice@Example.org", "secret1", 1, map[string]any{"next_link": "https://app.example.org/done?x=1"})
			wantReply(t, "requestToken", r, 200, "")
			sid := r.str("sid")
			if !regexp.MustCompile(`^[0-9a-zA-Z.=_-]{16,255}$`).MatchString(sid) {
				t.Errorf("sid %q", sid)
			}
			link, token, m := h.mailLink(1)
			if m.To[0] != "Alice@Example.org" {
				t.Errorf("mail went to %v, want the address as given", m.To)
			}
			if len(token) < 32 || !strings.HasPrefix(link, h.ts.URL+"/_matrix/identity/v2/validate/email/submitToken?") {
				t.Errorf("link %q token %q", link, token)
			}
			// Before validation: not validated, bind refused.
			wantReply(t, "getValidated3pid before", h.call("GET", v2Path+"/3pid/getValidated3pid?sid="+sid+"&client_secret=secret1", tok, nil, nil), 400, "M_SESSION_NOT_VALIDATED")

			// The person opens the link: redirected to the stored next_link.
			resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(link)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "https://app.example.org/done?x=1" {
				t.Errorf("link: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
			}

			r = h.call("GET", v2Path+"/3pid/getValidated3pid?sid="+sid+"&client_secret=secret1", tok, nil, nil)
			wantReply(t, "getValidated3pid", r, 200, "")
			if r.str("medium") != "email" || r.str("address") != "alice@example.org" || r.body["validated_at"] == nil {
				t.Errorf("getValidated3pid: %s", r.raw)
			}

			r = h.call("POST", v2Path+"/3pid/bind", tok, map[string]any{"sid": sid, "client_secret": "secret1", "mxid": "@alice:hs.test"}, nil)
			wantReply(t, "bind", r, 200, "")
			checkAssociation(t, h, r, "email", "alice@example.org", "@alice:hs.test")
			b, err := h.store.GetBinding("email", "alice@example.org")
			if err != nil || b.MXID != "@alice:hs.test" {
				t.Fatalf("stored binding %+v, %v", b, err)
			}
			if n, _ := h.binds.counts(); n != 1 {
				t.Errorf("listener told %d binds", n)
			}

			unbind := map[string]any{"sid": sid, "client_secret": "secret1", "mxid": "@alice:hs.test", "threepid": map[string]string{"medium": "email", "address": "Alice@Example.org"}}
			wantReply(t, "unbind", h.call("POST", v2Path+"/3pid/unbind", "", unbind, nil), 200, "")
			if _, err := h.store.GetBinding("email", "alice@example.org"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("binding still there after unbind: %v", err)
			}
			wantReply(t, "unbind again", h.call("POST", v2Path+"/3pid/unbind", "", unbind, nil), 200, "")
			if _, n := h.binds.counts(); n != 1 {
				t.Errorf("listener told %d unbinds, want 1", n)
			}
		})
	}
}

// checkAssociation verifies a bind answer: fields and the signature with
// the server's key under server_name.
func checkAssociation(t *testing.T, h *idHarness, r apiReply, medium, address, mxid string) {
	t.Helper()
	if r.str("medium") != medium || r.str("address") != address || r.str("mxid") != mxid {
		t.Errorf("association %s", r.raw)
	}
	ts, _ := r.body["ts"].(float64)
	nb, _ := r.body["not_before"].(float64)
	na, _ := r.body["not_after"].(float64)
	if ts == 0 || nb != ts || na <= ts+99*365*24*3600*1000 {
		t.Errorf("times ts=%v not_before=%v not_after=%v", ts, nb, na)
	}
	var obj map[string]any
	json.Unmarshal(r.raw, &obj)
	if err := signing.Verify(obj, h.cfg.ServerName, h.key.ID, h.key.Public()); err != nil {
		t.Errorf("association signature: %v", err)
	}
}

// The GET link shows an HTML page when there is no next_link, and a failure
// page for a wrong token; POST submitToken answers JSON.
func TestSubmitTokenPagesAndPost(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{})
	tok := h.account("@alice:hs.test")
	r := h.requestEmail(tok, "bob@example.org", "s", "1", nil) // send_attempt as a string, as real clients send it
	wantReply(t, "requestToken", r, 200, "")
	link, token, _ := h.mailLink(1)

	bad := strings.Replace(link, "token="+token, "token=wrong", 1)
	resp := h.call("GET", strings.TrimPrefix(bad, h.ts.URL), "", nil, nil)
	if resp.status != 400 || !strings.Contains(string(resp.raw), "Verification failed") || !strings.HasPrefix(resp.header.Get("Content-Type"), "text/html") {
		t.Errorf("wrong token page: %d %s", resp.status, resp.raw)
	}
	if resp.header.Get("Referrer-Policy") != "no-referrer" {
		t.Error("the page may leak its URL (with the token) as a referrer")
	}
	resp = h.call("GET", strings.TrimPrefix(link, h.ts.URL), "", nil, nil)
	if resp.status != 200 || !strings.Contains(string(resp.raw), "has been verified") {
		t.Errorf("success page: %d %s", resp.status, resp.raw)
	}
	// POST replay after success: still success.
	wantReply(t, "POST replay", h.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": r.str("sid"), "client_secret": "s", "token": token}, nil), 200, "")
	// The deprecated form encoding works on submitToken and bind.
	form := url.Values{"sid": {r.str("sid")}, "client_secret": {"s"}, "token": {token}}.Encode()
	wantReply(t, "POST form", h.call("POST", v2Path+"/validate/email/submitToken", tok, form, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}), 200, "")
	form = url.Values{"sid": {r.str("sid")}, "client_secret": {"s"}, "mxid": {"@alice:hs.test"}}.Encode()
	wantReply(t, "bind form", h.call("POST", v2Path+"/3pid/bind", tok, form, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}), 200, "")
	form = url.Values{"email": {"carol@example.org"}, "client_secret": {"s"}, "send_attempt": {"1"}}.Encode()
	wantReply(t, "requestToken form", h.call("POST", v2Path+"/validate/email/requestToken", tok, form, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}), 200, "")
}

// A failed send is 500 M_EMAIL_SEND_ERROR and leaves the session usable: the
// retry sends, and its token validates.
func TestEmailSendFailureThenRetry(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{})
	tok := h.account("@alice:hs.test")
	h.smtp.FailNextRcpt(1)
	wantReply(t, "failed send", h.requestEmail(tok, "a@example.org", "s", 1, nil), 500, "M_EMAIL_SEND_ERROR")
	r := h.requestEmail(tok, "a@example.org", "s", 1, nil) // the same send_attempt: the failed one does not count
	wantReply(t, "retry", r, 200, "")
	_, token, _ := h.mailLink(1)
	wantReply(t, "submit", h.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": r.str("sid"), "client_secret": "s", "token": token}, nil), 200, "")
	// A higher send_attempt resends the same token; the same one sends nothing.
	wantReply(t, "resend validated", h.requestEmail(tok, "a@example.org", "s", 2, nil), 200, "")
	if n := len(h.smtp.Messages()); n != 1 {
		t.Errorf("%d mails, want 1 (a validated session sends nothing more)", n)
	}
}

// An SMTP server whose certificate is not trusted: 500 M_EMAIL_SEND_ERROR
// and the listener never sees DATA.
func TestEmailUntrustedSMTPServer(t *testing.T) {
	for _, mode := range []string{"starttls", "tls"} {
		t.Run(mode, func(t *testing.T) {
			trusted, other := smtptest.NewCA(t), smtptest.NewCA(t)
			smtp := smtptest.Start(t, smtptest.Options{Mode: mode, Cert: other.Issue(t, "127.0.0.1")})
			email := mail.DefaultEmailConfig()
			email.Mode, email.Host, email.Port, email.CAFile = mode, smtp.Host, smtp.Port, trusted.WritePEM(t)
			h := newIDHarness(t, idHarnessOpts{email: &email})
			tok := h.account("@alice:hs.test")
			wantReply(t, "requestToken", h.requestEmail(tok, "a@example.org", "s", 1, nil), 500, "M_EMAIL_SEND_ERROR")
			smtp.WaitIdle(t)
			if smtp.SawCommand("DATA") || smtp.SawCommand("MAIL") || len(smtp.Messages()) != 0 {
				t.Errorf("the untrusted server got the envelope or data: %v", smtp.Commands())
			}
		})
	}
}

// The phone flow through an SMS webhook served by httptest (allowed by the
// outbound policy only because the test allows 127.0.0.1).
func TestMSISDNFlowThroughWebhook(t *testing.T) {
	type sms struct{ to, text string }
	got := make(chan sms, 10)
	fail := false
	var mu sync.Mutex
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ To, Text string }
		json.NewDecoder(r.Body).Decode(&body)
		if r.Header.Get("Authorization") != "Bearer hooksecret" {
			w.WriteHeader(401)
			return
		}
		mu.Lock()
		f := fail
		mu.Unlock()
		if f {
			w.WriteHeader(503)
			return
		}
		got <- sms{body.To, body.Text}
	}))
	defer hook.Close()
	smsCfg := mail.DefaultSMSConfig()
	smsCfg.Provider = "webhook"
	smsCfg.Webhook.URL = hook.URL
	smsCfg.Webhook.AuthValue = "Bearer hooksecret"
	smsCfg.Webhook.BodyTemplate = `{"to": {{json .E164}}, "text": {{json .Text}}}`
	smsCfg.DenyCountries = []string{"FR"}
	h := newIDHarness(t, idHarnessOpts{sms: &smsCfg, config: func(c *Config) { c.Outbound.AllowCIDRs = []string{"127.0.0.1/32"} }})
	tok := h.account("@alice:hs.test")
	req := func(country, number string, attempt any) apiReply {
		return h.call("POST", v2Path+"/validate/msisdn/requestToken", tok, map[string]any{"country": country, "phone_number": number, "client_secret": "s", "send_attempt": attempt}, nil)
	}
	r := req("GB", "07700 900001", 1)
	wantReply(t, "requestToken", r, 200, "")
	if r.str("msisdn") != "447700900001" || r.str("intl_fmt") != "+44 7700 900001" || r.body["success"] != true || r.str("sid") == "" {
		t.Errorf("answer %s", r.raw)
	}
	var m sms
	select {
	case m = <-got:
	case <-time.After(time.Minute): // a hang, not a slow machine
		t.Fatal("no SMS within a minute")
	}
	code := regexp.MustCompile(`\b\d{6}\b`).FindString(m.text)
	if m.to != "+447700900001" || code == "" {
		t.Fatalf("SMS %+v", m)
	}
	// The same number written another way is the same session.
	r2 := req("GB", "+44 (0)7700-900001", 1)
	if r2.str("sid") != r.str("sid") {
		t.Errorf("same number, other spelling: sid %q vs %q", r2.str("sid"), r.str("sid"))
	}
	wantReply(t, "submit", h.call("POST", v2Path+"/validate/msisdn/submitToken", tok, map[string]any{"sid": r.str("sid"), "client_secret": "s", "token": code}, nil), 200, "")
	rb := h.call("POST", v2Path+"/3pid/bind", tok, map[string]any{"sid": r.str("sid"), "client_secret": "s", "mxid": "@alice:hs.test"}, nil)
	wantReply(t, "bind", rb, 200, "")
	checkAssociation(t, h, rb, "msisdn", "447700900001", "@alice:hs.test")

	wantReply(t, "denied country", req("FR", "0612345678", 1), 400, "M_DESTINATION_REJECTED")
	wantReply(t, "bad number", req("GB", "abc", 1), 400, "M_INVALID_ADDRESS")
	for _, c := range []string{"ZZ", "gb", ""} {
		wantReply(t, "bad country "+c, req(c, "07700900001", 1), 400, "M_INVALID_PARAM")
	}
	mu.Lock()
	fail = true
	mu.Unlock()
	wantReply(t, "gateway down", h.call("POST", v2Path+"/validate/msisdn/requestToken", tok, map[string]any{"country": "GB", "phone_number": "07700900002", "client_secret": "s", "send_attempt": 1}, nil), 500, "M_SEND_ERROR")
	if len(got) != 0 {
		t.Errorf("%d unexpected SMS", len(got))
	}
}

// Without allow_cidrs the outbound policy keeps the SMS webhook on
// 127.0.0.1 unreachable: 500 M_SEND_ERROR, no request.
func TestSMSWebhookBehindOutboundPolicy(t *testing.T) {
	hits := 0
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer hook.Close()
	smsCfg := mail.DefaultSMSConfig()
	smsCfg.Provider, smsCfg.Webhook.URL = "webhook", hook.URL
	h := newIDHarness(t, idHarnessOpts{sms: &smsCfg})
	tok := h.account("@alice:hs.test")
	wantReply(t, "requestToken", h.call("POST", v2Path+"/validate/msisdn/requestToken", tok, map[string]any{"country": "GB", "phone_number": "07700900001", "client_secret": "s", "send_attempt": 1}, nil), 500, "M_SEND_ERROR")
	if hits != 0 {
		t.Error("the policy let a request to 127.0.0.1 through")
	}
}

// Sessions expire 24 h after their last modification; requestToken calls
// that send nothing do not extend them (sydent W8); expired sessions are
// swept after a grace day.
func TestSessionExpiryAndSweep(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		h := newIDHarness(t, idHarnessOpts{store: be.open})
		tok := h.account("@alice:hs.test")
		r := h.requestEmail(tok, "a@example.org", "s", 1, nil)
		sid := r.str("sid")
		_, token, _ := h.mailLink(1)
		for i := 0; i < 4; i++ {
			h.clock.Advance(5 * time.Hour)
			wantReply(t, "repeat requestToken", h.requestEmail(tok, "a@example.org", "s", 1, nil), 200, "")
		}
		// 24 h after creation: expired, although requestToken was called
		// 4 hours ago.
		h.clock.Advance(4 * time.Hour)
		submit := map[string]any{"sid": sid, "client_secret": "s", "token": token}
		wantReply(t, "submit expired", h.call("POST", v2Path+"/validate/email/submitToken", tok, submit, nil), 400, "M_SESSION_EXPIRED")
		if len(h.smtp.Messages()) != 1 {
			t.Errorf("%d mails", len(h.smtp.Messages()))
		}
		// A requestToken now starts a new session with a new sid.
		r2 := h.requestEmail(tok, "a@example.org", "s", 1, nil)
		wantReply(t, "new session", r2, 200, "")
		if r2.str("sid") == sid {
			t.Error("an expired session was reused")
		}
		_, token2, _ := h.mailLink(2)
		wantReply(t, "submit new", h.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": r2.str("sid"), "client_secret": "s", "token": token2}, nil), 200, "")
		// Validation is a modification: 23 h later bind still works...
		h.clock.Advance(23 * time.Hour)
		wantReply(t, "getValidated3pid", h.call("GET", v2Path+"/3pid/getValidated3pid?sid="+r2.str("sid")+"&client_secret=s", tok, nil, nil), 200, "")
		// ...and 2 h after that the session has expired.
		h.clock.Advance(2 * time.Hour)
		bind := map[string]any{"sid": r2.str("sid"), "client_secret": "s", "mxid": "@alice:hs.test"}
		wantReply(t, "bind expired", h.call("POST", v2Path+"/3pid/bind", tok, bind, nil), 400, "M_SESSION_EXPIRED")
		wantReply(t, "getValidated3pid expired", h.call("GET", v2Path+"/3pid/getValidated3pid?sid="+r2.str("sid")+"&client_secret=s", tok, nil, nil), 400, "M_SESSION_EXPIRED")

		// The sweep removes sessions a day after they expired.
		if n, _ := h.store.CountSessions(); n != 1 {
			t.Fatalf("%d sessions before the sweep", n)
		}
		n, err := h.srv.sweepSessions()
		if err != nil || n != 0 {
			t.Errorf("early sweep deleted %d, %v", n, err)
		}
		h.clock.Advance(24 * time.Hour)
		ctx, cancel := context.WithCancel(context.Background())
		wait := h.srv.Start(ctx) // sweeps at once
		// The sweep tells no one: poll the store, with a deadline that
		// only catches a hang.
		deadline := time.Now().Add(time.Minute)
		for {
			if n, _ := h.store.CountSessions(); n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the background sweep did not delete the expired session within a minute")
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		wait()
		wantReply(t, "bind swept", h.call("POST", v2Path+"/3pid/bind", tok, bind, nil), 404, "M_NO_VALID_SESSION")
	})
}

// Rate limits: messages per account, per address, per number and country;
// 429 M_LIMIT_EXCEEDED with retry_after_ms and Retry-After.
func TestRequestTokenRateLimits(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{config: func(c *Config) {
		c.RateLimit.RequestToken = Rate{Burst: 3, Every: 5 * time.Minute}
		c.RateLimit.EmailAddress = Rate{Burst: 2, Every: time.Hour}
	}})
	tok := h.account("@alice:hs.test")
	// Retries that send nothing cost nothing.
	for i := 0; i < 5; i++ {
		wantReply(t, "retry", h.requestEmail(tok, "a@example.org", "s", 1, nil), 200, "")
	}
	wantReply(t, "second mail", h.requestEmail(tok, "a@example.org", "s", 2, nil), 200, "")
	r := h.requestEmail(tok, "a@example.org", "s", 3, nil) // third mail to the same address
	wantReply(t, "per address", r, 429, "M_LIMIT_EXCEEDED")
	if ms, _ := r.body["retry_after_ms"].(float64); ms <= 0 || ms > 3600*1000 || r.header.Get("Retry-After") == "" {
		t.Errorf("retry_after_ms %v Retry-After %q", r.body["retry_after_ms"], r.header.Get("Retry-After"))
	}
	wantReply(t, "third mail of the account", h.requestEmail(tok, "b@example.org", "s", 1, nil), 200, "")
	wantReply(t, "per account", h.requestEmail(tok, "c@example.org", "s", 1, nil), 429, "M_LIMIT_EXCEEDED")
	other := h.account("@bob:hs.test")
	wantReply(t, "another account", h.requestEmail(other, "c@example.org", "s", 1, nil), 200, "")
	h.clock.Advance(5 * time.Minute)
	wantReply(t, "after the refill", h.requestEmail(tok, "d@example.org", "s", 1, nil), 200, "")
	if n := len(h.smtp.Messages()); n != 5 {
		t.Errorf("%d mails, want 5", n)
	}

	// SMS: per number and per country.
	h2 := newIDHarness(t, idHarnessOpts{config: func(c *Config) {
		c.RateLimit.MSISDNNumber = Rate{Burst: 2, Every: time.Hour}
		c.RateLimit.MSISDNCountry = Rate{Burst: 3, Every: time.Minute}
	}})
	tok = h2.account("@alice:hs.test")
	sms := func(number string, attempt int) apiReply {
		return h2.call("POST", v2Path+"/validate/msisdn/requestToken", tok, map[string]any{"country": "GB", "phone_number": number, "client_secret": "s", "send_attempt": attempt}, nil)
	}
	wantReply(t, "sms 1", sms("07700900001", 1), 200, "")
	wantReply(t, "sms 2", sms("07700900001", 2), 200, "")
	wantReply(t, "sms per number", sms("07700900001", 3), 429, "M_LIMIT_EXCEEDED")
	wantReply(t, "sms other number", sms("07700900002", 1), 200, "")
	wantReply(t, "sms per country", sms("07700900003", 1), 429, "M_LIMIT_EXCEEDED")
	wantReply(t, "sms other country", h2.call("POST", v2Path+"/validate/msisdn/requestToken", tok, map[string]any{"country": "US", "phone_number": "2015550123", "client_secret": "s", "send_attempt": 1}, nil), 200, "")

	// Attempts per IP cover submitToken too.
	h3 := newIDHarness(t, idHarnessOpts{config: func(c *Config) { c.RateLimit.Attempts = Rate{Burst: 3, Every: time.Hour} }})
	tok = h3.account("@alice:hs.test")
	for i := 0; i < 3; i++ {
		wantReply(t, "attempt", h3.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": "x", "client_secret": "s", "token": "t"}, nil), 404, "M_NO_VALID_SESSION")
	}
	wantReply(t, "attempts per IP", h3.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": "x", "client_secret": "s", "token": "t"}, nil), 429, "M_LIMIT_EXCEEDED")
}

// 20 parallel identical requestTokens: one sid, exactly one mail (row 44).
// 50 parallel binds of one session: the same association, one binding,
// one listener call (row 43).
func TestParallelRequestsAndBinds(t *testing.T) {
	onEachBackend(t, func(t *testing.T, be backend) {
		h := newIDHarness(t, idHarnessOpts{store: be.open})
		tok := h.account("@alice:hs.test")
		var wg sync.WaitGroup
		sids := make([]string, 20)
		for i := range sids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := h.requestEmail(tok, "par@example.org", "s", 1, nil)
				if r.status != 200 {
					t.Errorf("requestToken %d: %d %s", i, r.status, r.raw)
				}
				sids[i] = r.str("sid")
			}()
		}
		wg.Wait()
		for _, s := range sids {
			if s != sids[0] {
				t.Fatalf("different sids: %v", sids)
			}
		}
		_, token, _ := h.mailLink(1)
		// Each requestToken answered after its send, if any, was accepted
		// (smtptest records a message before its 250): the count is final.
		if n := len(h.smtp.Messages()); n != 1 {
			t.Fatalf("%d mails, want 1", n)
		}
		wantReply(t, "submit", h.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": sids[0], "client_secret": "s", "token": token}, nil), 200, "")

		answers := make([]string, 50)
		for i := range answers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := h.call("POST", v2Path+"/3pid/bind", tok, map[string]any{"sid": sids[0], "client_secret": "s", "mxid": "@alice:hs.test"}, nil)
				if r.status != 200 {
					t.Errorf("bind %d: %d %s", i, r.status, r.raw)
				}
				answers[i] = string(r.raw)
			}()
		}
		wg.Wait()
		for _, a := range answers {
			if a != answers[0] {
				t.Fatalf("different associations:\n%s\n%s", answers[0], a)
			}
		}
		if n, _ := h.store.CountBindings(); n != 1 {
			t.Errorf("%d bindings", n)
		}
		if n, _ := h.binds.counts(); n != 1 {
			t.Errorf("listener told %d times", n)
		}
	})
}

// A signed association can be checked by anyone with the public key.
func TestAssociationVerifiesWithPublishedKey(t *testing.T) {
	h := newIDHarness(t, idHarnessOpts{})
	tok := h.account("@alice:hs.test")
	sid := h.validatedEmail(tok, "k@example.org", "s")
	r := h.call("POST", v2Path+"/3pid/bind", tok, map[string]any{"sid": sid, "client_secret": "s", "mxid": "@alice:hs.test"}, nil)
	pk := h.call("GET", v2Path+"/pubkey/ed25519:0", "", nil, nil)
	pub, err := signing.DecodeBase64(pk.str("public_key"))
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	json.Unmarshal(r.raw, &obj)
	if err := signing.Verify(obj, "id.example.test", "ed25519:0", ed25519.PublicKey(pub)); err != nil {
		t.Error(err)
	}
	io.Discard.Write(nil)
}
