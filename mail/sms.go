package mail

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/template"
)

// smsGateway delivers one SMS to an MSISDN (E.164 digits without "+").
type smsGateway interface {
	send(ctx context.Context, msisdn, text string) error
}

// maxGatewayAnswer bounds how much of a gateway's answer is read (for the
// log only).
const maxGatewayAnswer = 4 << 10

// twilio sends through Twilio's Messages API:
// POST /2010-04-01/Accounts/{AccountSid}/Messages.json with To, From (or
// MessagingServiceSid) and Body, HTTP basic auth SID:token; 201 is success.
type twilio struct {
	cfg    TwilioConfig
	client *http.Client
}

func (t *twilio) send(ctx context.Context, msisdn, text string) error {
	form := url.Values{"To": {"+" + msisdn}, "Body": {text}}
	if t.cfg.MessagingServiceSID != "" {
		form.Set("MessagingServiceSid", t.cfg.MessagingServiceSID)
	} else {
		form.Set("From", t.cfg.From)
	}
	endpoint := strings.TrimSuffix(t.cfg.BaseURL, "/") + "/2010-04-01/Accounts/" + url.PathEscape(t.cfg.AccountSID) + "/Messages.json"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(t.cfg.AccountSID, t.cfg.AuthToken)
	return do(t.client, req, "twilio")
}

// webhook POSTs the configured JSON body to a URL.
type webhook struct {
	cfg    WebhookConfig
	body   *template.Template
	client *http.Client
}

func (w *webhook) send(ctx context.Context, msisdn, text string) error {
	var buf bytes.Buffer
	if err := w.body.Execute(&buf, smsBody{To: msisdn, E164: "+" + msisdn, Text: text}); err != nil {
		return fmt.Errorf("webhook body: %w", err)
	}
	if !json.Valid(buf.Bytes()) {
		return fmt.Errorf("webhook body template produced invalid JSON")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, &buf)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if w.cfg.AuthValue != "" {
		req.Header.Set(w.cfg.AuthHeader, w.cfg.AuthValue)
	}
	return do(w.client, req, "webhook")
}

// do sends req and turns anything but a 2xx answer into an error that
// quotes the start of the gateway's answer (for the log).
func do(client *http.Client, req *http.Request, name string) error {
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxGatewayAnswer))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: HTTP %d: %s", name, resp.StatusCode, truncate(strings.TrimSpace(string(answer)), 200))
	}
	return nil
}
