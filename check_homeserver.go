package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"mxid/server/federation"
	"mxid/server/outbound"
)

// What each step's failure breaks, named by the caller that needs it.
const (
	breaksDiscovery = "every request mxid makes to this homeserver: confirming its users at registration, verifying its unbind requests, delivering invites"
	breaksUnbind    = "unbind requests signed by Synapse (X-Matrix): when a user removes an address on the homeserver, mxid cannot verify the request and the binding stays"
	breaksRegister  = "account registration (Element: Settings, General, Discovery): mxid cannot confirm the homeserver's users, so they cannot accept terms, bind or look up"
	breaksOnbind    = "third-party invites: an invite to an address not on Matrix yet never reaches the invitee's homeserver when they bind the address"
	breaksPublicURL = "every call the homeserver makes to mxid (Synapse and Dendrite call https:// only): invites by email, lookups for invites, unbinding, and with Dendrite validation and binding"
	breaksName      = "invites to addresses bound on mxid: homeservers that verify mxid's signature under the name users typed (Dendrite) refuse them"
)

// checkHomeserver tries, in order, what each real caller needs between
// mxid and the homeserver of SERVER_NAME, and says which caller a failure
// breaks.
func checkHomeserver(ctx context.Context, c *check, fs *flag.FlagSet, args []string) error {
	smsDelegate := fs.Bool("sms-delegate", false, "Synapse will delegate phone number validation to mxid (account_threepid_delegates.msisdn), which calls v1 paths")
	p, err := newHomeserverProbe(c, fs, args)
	if err != nil {
		return err
	}
	if p.validName() {
		p.discover(ctx, breaksDiscovery)
		p.signingKeys(ctx, breaksUnbind)
		if p.answered {
			p.openID(ctx, breaksRegister)
			p.onbind(ctx, breaksOnbind)
		} else {
			c.skip("OpenID userinfo")
			c.skip("onbind")
		}
	} else {
		c.skip("discovery")
		c.skip("signing keys")
		c.skip("OpenID userinfo")
		c.skip("onbind")
	}
	c.publicBaseURL(ctx, breaksPublicURL)
	c.stepFor("server_name", breaksName, func() (string, error) {
		if w := c.cfg.ServerNameWarning(); w != "" {
			return "", errors.New(w)
		}
		return fmt.Sprintf("mxid signs as %q, the name users type as their identity server (the host and port of public_base_url)", c.cfg.ServerName), nil
	})
	p.v1(ctx, *smsDelegate)
	return c.verdict(fmt.Sprintf("%s and this identity server can work together: each call between them was tried", p.name))
}

// onbindProbe is the body of the test onbind: an association of the same
// shape as a real delivery, so a homeserver decodes it as one, but with no
// invites, so it has nothing to do (Synapse and Dendrite loop over
// "invites" and answer 200 {}), for a made-up address under .invalid
// (RFC 2606) and a made-up user. `{}` would do as well for them; this
// shape also passes a homeserver that checks the association's fields.
func onbindProbe(serverName string) []byte {
	id := "mxid-check-" + strings.ToLower(rand.Text()[:8])
	body, _ := json.Marshal(map[string]any{
		"medium": "email", "address": id + "@example.invalid", "mxid": "@" + id + ":" + serverName,
		"ts": time.Now().UnixMilli(), "invites": []any{},
	})
	return body
}

// onbind sends the test association the way the delivery queue sends real
// ones (federation.Resolver.Onbind).
func (p *homeserverProbe) onbind(ctx context.Context, breaks string) bool {
	return p.c.stepFor("onbind", breaks, func() (string, error) {
		resp, method, err := p.fed.Onbind(ctx, p.name, onbindProbe(p.name), 64<<10)
		if err != nil {
			return "", explainFetch(err, p.target)
		}
		e := matrixError(resp.Body)
		answer := fmt.Sprintf("%s %s answered HTTP %d", method, federation.OnbindPath, resp.Status)
		if e.Errcode != "" {
			answer += " " + e.Errcode
		}
		switch status := resp.Status; {
		case status/100 == 2:
			return "reachable: " + answer + " to an association without invites (nothing was delivered)", nil
		case status == http.StatusNotFound || status == http.StatusMethodNotAllowed:
			return "", hint(fmt.Errorf("the homeserver does not serve onbind: POST, then PUT, to %s answered HTTP %d", federation.OnbindPath, status),
				"onbind is part of the federation API: the listener (or reverse proxy) that answers /_matrix/key/ must pass all of /_matrix/federation/ to the homeserver (Synapse: the \"federation\" resource)")
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			return "", warning{answer + ": the homeserver wants authentication, which identity servers do not send; it may refuse real deliveries"}
		case status/100 == 4 && e.json:
			return "reachable: " + answer + " (it refused the test association without invites; the endpoint exists)", nil
		case status/100 == 4:
			return "", warning{answer + " without a Matrix JSON answer: something in front of the homeserver may answer instead of it"}
		default:
			return "", warning{answer + ": the endpoint exists but failed on the test association; the homeserver's log says why (real deliveries are retried)"}
		}
	})
}

// publicBaseURL checks what homeservers need to call mxid: public_base_url
// is https:// and answers with a certificate from a CA they trust (the
// system's, not [outbound] ca_file).
func (c *check) publicBaseURL(ctx context.Context, breaks string) bool {
	return c.stepFor("public_base_url", breaks, func() (string, error) {
		base := strings.TrimSuffix(c.cfg.PublicBaseURL, "/")
		u, err := url.Parse(base)
		if err != nil {
			return "", err
		}
		if u.Scheme != "https" {
			return "", hint(fmt.Errorf("%s is not https://: Synapse and Dendrite call identity servers over https:// only", base),
				`serve HTTPS ([tls] mode = "acme" gets a certificate by itself) or put mxid behind a reverse proxy that does, and set public_base_url to the https:// URL`)
		}
		roots := c.roots
		if roots == nil {
			if roots, err = outbound.SystemRoots(); err != nil {
				return "", err
			}
		}
		ocfg := c.cfg.Outbound
		ocfg.InsecureSkipVerify = false // homeservers verify
		policy, err := outbound.New(ocfg)
		if err != nil {
			return "", err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_matrix/identity/versions", nil)
		if err != nil {
			return "", err
		}
		resp, err := policy.Client(outbound.ClientOptions{MaxResponseBytes: 64 << 10, RootCAs: roots}).Do(req)
		if err != nil {
			cause := err
			var ue *url.Error
			if errors.As(err, &ue) {
				cause = ue.Err // base is in the explanation already
			}
			explained := explainWith(cause, base, u.Hostname(), fetchAdvice{
				blocked: "homeservers refuse private, loopback and reserved addresses by default too (Synapse's ip_range_blacklist): public_base_url must resolve to a public address; " +
					"if the homeserver is on the same network and allows it, add the range to [outbound] allow_cidrs to run this check",
				untrusted: "homeservers will refuse to call mxid: Synapse and Dendrite trust only the system's CAs, so a self-signed or private-CA certificate fails; " +
					`use one from a public CA ([tls] mode = "acme" gets one from Let's Encrypt)`,
				invalid:   "homeservers will refuse to call mxid until the certificate is renewed",
				wrongName: "homeservers will refuse to call mxid: the certificate must name public_base_url's host",
				noName:    "public_base_url's host needs an A or AAAA record",
				timeout:   "a firewall may drop the connection; homeservers must reach public_base_url",
				refused:   "is mxid (or its reverse proxy) running and listening there?",
			})
			var h hinted
			if !errors.As(explained, &h) {
				return "", err // unexplained: as the client said it, with the URL
			}
			return "", explained
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", err
		}
		var v struct {
			Versions []string `json:"versions"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &v) != nil || len(v.Versions) == 0 {
			return "", hint(fmt.Errorf("GET %s/_matrix/identity/versions answered HTTP %d, not an identity server's versions", base, resp.StatusCode),
				"public_base_url must reach this mxid: a reverse proxy must pass /_matrix/identity/ to it")
		}
		cert := resp.TLS.PeerCertificates[0]
		issuer := cert.Issuer.CommonName
		if issuer == "" {
			issuer = cert.Issuer.String()
		}
		return fmt.Sprintf("%s answers over HTTPS with a certificate that homeservers trust (issued by %s, valid until %s)",
			base, issuer, cert.NotAfter.UTC().Format(time.DateOnly)), nil
	})
}

// v1 says which software the homeserver runs and fails when it or the
// planned SMS delegation needs the v1 API while it is off.
func (p *homeserverProbe) v1(ctx context.Context, smsDelegate bool) {
	software, name := p.software(ctx)
	dendrite := strings.EqualFold(name, "Dendrite")
	var needs, breaks []string
	if dendrite {
		needs = append(needs, "Dendrite speaks only the v1 identity API")
		breaks = append(breaks, "every call Dendrite makes to mxid: validation, binding, lookups and invites")
	}
	if smsDelegate {
		needs = append(needs, "Synapse's SMS delegate (account_threepid_delegates.msisdn) calls v1 paths")
		breaks = append(breaks, "phone number validation that Synapse delegates to mxid")
	}
	p.c.stepFor("v1 API", strings.Join(breaks, "; "), func() (string, error) {
		switch {
		case len(needs) > 0 && !p.c.cfg.V1:
			return "", hint(fmt.Errorf("%s; v1 is off, but %s", software, strings.Join(needs, ", and ")), "set v1 = true in the configuration and restart mxid")
		case len(needs) > 0:
			return fmt.Sprintf("%s; v1 is on, as needed: %s", software, strings.Join(needs, ", and ")), nil
		case name == "" && !p.c.cfg.V1:
			return "", warning{software + "; v1 is off, which a Dendrite would need (v1 = true)"}
		case p.c.cfg.V1:
			return software + "; v1 is on", nil
		}
		return software + "; v1 is off, and it does not need it", nil
	})
}

// software asks the homeserver what it runs (GET
// /_matrix/federation/v1/version): found says it in words, name is the
// software's name ("" when unknown).
func (p *homeserverProbe) software(ctx context.Context) (found, name string) {
	if !p.answered {
		return "which software the homeserver runs is unknown (it was not reached)", ""
	}
	resp, err := p.fed.Do(ctx, p.name, http.MethodGet, "/_matrix/federation/v1/version", nil, nil, 16<<10)
	if err != nil {
		return fmt.Sprintf("which software %s runs is unknown (%v)", p.name, err), ""
	}
	var v struct {
		Server struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"server"`
	}
	if resp.Status != http.StatusOK || json.Unmarshal(resp.Body, &v) != nil || v.Server.Name == "" {
		return fmt.Sprintf("which software %s runs is unknown (/_matrix/federation/v1/version answered HTTP %d without a name)", p.name, resp.Status), ""
	}
	return fmt.Sprintf("%s runs %s %s", p.name, v.Server.Name, v.Server.Version), v.Server.Name
}
