package main

// Self-tests: `mxid check WHAT ...`. Each check runs its steps in order with
// the configured settings, prints what every step tried and what came of
// it, then a verdict in plain words; the exit status is non-zero when a step
// failed.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"mxid/server/federation"
	"mxid/server/matrixid"
	"mxid/server/outbound"
	"mxid/server/signing"
)

// checkCommand is one `mxid check WHAT`.
type checkCommand struct {
	// Args is the usage after the command name, e.g. "SERVER_NAME".
	Args string
	// About says in one line what the check proves.
	About string
	// Short is About in a few words, for mxid help.
	Short string
	// Run declares its flags on fs (which already has -config), parses
	// them with c.parse, and runs its steps on c.
	Run func(ctx context.Context, c *check, fs *flag.FlagSet, args []string) error
}

// checkCommands are the self-tests, by name.
func checkCommands() map[string]checkCommand {
	return map[string]checkCommand{
		"dns": {
			Args:  "DOMAIN",
			About: "discover the identity server of an email domain as lookups do (SRV _matrix-identity._tcp, else the domain), resolve it, check the outbound policy allows it and that it answers as an identity server",
			Short: "how lookups reach another domain's identity server",
			Run:   checkDNS,
		},
		"federation": {
			Args:  "SERVER_NAME",
			About: "find a homeserver, fetch and verify its signing keys, reach its OpenID endpoint (what registration needs)",
			Short: "what registering a user of SERVER_NAME needs",
			Run:   checkFederation,
		},
		"homeserver": {
			Args:  "SERVER_NAME",
			About: "try what each caller needs between mxid and a homeserver, and say which caller a failure breaks: discovery and signing keys (unbind), OpenID userinfo (registration), onbind (third-party invites), public_base_url over HTTPS with a trusted certificate, server_name, and v1 for Dendrite or SMS delegation",
			Short: "what a homeserver and its users need from mxid",
			Run:   checkHomeserver,
		},
		"ldap": {
			Args:  "[ADDRESS]",
			About: "connect and bind to the [ldap] directory, look up ADDRESS (email or phone) if given, run the sync query, show what the mapping yields",
			Short: "the [ldap] directory, and what ADDRESS maps to",
			Run:   checkLDAP,
		},
		"smtp": {
			Args:  "-to ADDRESS",
			About: "send a real test email with the [email] settings, step by step (connect, TLS, login, send)",
			Short: "send a real test email with the [email] settings",
			Run:   checkSMTP,
		},
	}
}

func checkUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: mxid check WHAT [-config PATH] [ARGS]")
	cmds := checkCommands()
	names := make([]string, 0, len(cmds))
	for name := range cmds {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Fprintf(w, "  mxid check %s %s\n      %s\n", name, cmds[name].Args, cmds[name].About)
	}
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelpFlag(args[0]) || args[0] == "help" {
		checkUsage(stdout)
		if len(args) == 0 {
			return usageError{errors.New("check needs a WHAT")}
		}
		return nil
	}
	if _, ok := checkCommands()[args[0]]; !ok {
		fmt.Fprintf(stderr, "mxid check: unknown check %q\n", args[0])
		checkUsage(stderr)
		return usageError{fmt.Errorf("unknown check %q", args[0])}
	}
	return runCheck(ctx, &check{out: stdout, stderr: stderr}, args)
}

// runCheck runs `mxid check WHAT ARGS` (args[0] is WHAT, known) on c, whose
// output streams (and, in tests, roots) are set.
func runCheck(ctx context.Context, c *check, args []string) error {
	cmd := checkCommands()[args[0]]
	fs := flag.NewFlagSet("check "+args[0], flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: mxid check %s [-config PATH] %s\n  %s\n", args[0], cmd.Args, cmd.About)
		fs.PrintDefaults()
	}
	c.name, c.configPath = args[0], configFlag(fs)
	return cmd.Run(ctx, c, fs, args[1:])
}

// check is one self-test run: its configuration and the steps' outcomes.
type check struct {
	out, stderr io.Writer
	name        string
	configPath  *string
	cfg         Config
	// roots are the CAs homeservers trust, for public_base_url's
	// certificate; nil: the system's (tests set their own).
	roots    *x509.CertPool
	failures []string
	warnings int
}

// parse parses flags and positional arguments in any order, checks that
// between min and max positionals were given, and loads the configuration.
func (c *check) parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := parseArgs(fs, args, c.out, c.stderr); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) < min || len(pos) > max {
		fs.Usage()
		return nil, usageError{fmt.Errorf("check %s: wrong number of arguments", c.name)}
	}
	cfg, source, err := resolveConfig(*c.configPath)
	if err != nil {
		return nil, err
	}
	if source == "" {
		source = "the embedded default (no mxid.toml)"
	}
	fmt.Fprintf(c.out, "mxid check %s %s  (configuration: %s)\n", c.name, strings.Join(pos, " "), source)
	c.cfg = cfg
	return pos, nil
}

// hinted is a step failure with advice for the operator.
type hinted struct {
	err  error
	hint string
}

func (h hinted) Error() string { return h.err.Error() }
func (h hinted) Unwrap() error { return h.err }

// hint attaches advice to a failure.
func hint(err error, advice string) error { return hinted{err, advice} }

// warning is a step outcome that is not a failure but deserves attention.
type warning struct{ msg string }

func (w warning) Error() string { return w.msg }

// step runs one step and prints what came of it: fn returns what it found,
// or an error (with a hint, or a warning). It reports whether the step
// passed, so later steps that depend on it can be skipped.
func (c *check) step(what string, fn func() (string, error)) bool {
	return c.stepFor(what, "", fn)
}

// stepFor is step for a step that some caller needs: on failure it also
// says what breaks (when breaks is not empty).
func (c *check) stepFor(what, breaks string, fn func() (string, error)) bool {
	start := time.Now()
	found, err := fn()
	took := time.Since(start).Round(time.Millisecond)
	var w warning
	switch {
	case err == nil:
		if took >= 10*time.Millisecond {
			found += fmt.Sprintf(" (%v)", took)
		}
		fmt.Fprintf(c.out, "  ok    %s: %s\n", what, found)
		return true
	case errors.As(err, &w):
		c.warnings++
		fmt.Fprintf(c.out, "  warn  %s: %s\n", what, w.msg)
		return true
	}
	fmt.Fprintf(c.out, "  FAIL  %s: %v\n", what, err)
	if breaks != "" {
		fmt.Fprintf(c.out, "        breaks: %s\n", breaks)
	}
	var h hinted
	if errors.As(err, &h) && h.hint != "" {
		fmt.Fprintf(c.out, "        hint: %s\n", h.hint)
	}
	c.failures = append(c.failures, what)
	return false
}

// skip records a step not tried because an earlier one failed.
func (c *check) skip(what string) {
	fmt.Fprintf(c.out, "  skip  %s: not tried (an earlier step failed)\n", what)
}

// verdict prints the outcome; the error makes the exit status non-zero.
func (c *check) verdict(success string) error {
	if len(c.failures) > 0 {
		fmt.Fprintf(c.out, "Verdict: FAILED at %q. Fix the step marked FAIL and run the check again.\n", c.failures[0])
		return usageError{fmt.Errorf("check %s failed", c.name)}
	}
	if c.warnings > 0 {
		fmt.Fprintf(c.out, "Verdict: OK with %d warning(s): %s\n", c.warnings, success)
		return nil
	}
	fmt.Fprintf(c.out, "Verdict: OK: %s\n", success)
	return nil
}

// checkFederation: what registering a user of SERVER_NAME needs from its
// homeserver: discovery, its signing keys (how homeservers prove who they
// are) and the OpenID userinfo endpoint (how mxid confirms a user).
func checkFederation(ctx context.Context, c *check, fs *flag.FlagSet, args []string) error {
	p, err := newHomeserverProbe(c, fs, args)
	if err != nil {
		return err
	}
	if !p.validName() {
		c.skip("discovery")
		c.skip("signing keys")
		c.skip("OpenID userinfo")
		return c.verdict("")
	}
	p.discover(ctx, "")
	if !p.signingKeys(ctx, "") {
		c.skip("OpenID userinfo")
		return c.verdict("")
	}
	p.openID(ctx, "")
	return c.verdict(fmt.Sprintf("users of %s can register with this identity server", p.name))
}

// homeserverProbe runs the steps that ask one homeserver something, for
// `mxid check federation` and `mxid check homeserver`. Each takes what a
// failure breaks ("" to say nothing).
type homeserverProbe struct {
	c      *check
	name   string // the homeserver's server name
	policy *outbound.Policy
	fed    *federation.Resolver
	target federation.Target // once discovered
	// answered is set when the homeserver answered the signing keys
	// request with any HTTP status: later requests can reach it.
	answered bool
}

// newHomeserverProbe reads the check's one argument, SERVER_NAME, and
// prepares requests to that homeserver under the outbound policy.
func newHomeserverProbe(c *check, fs *flag.FlagSet, args []string) (*homeserverProbe, error) {
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return nil, err
	}
	policy, err := outbound.New(c.cfg.Outbound)
	if err != nil {
		return nil, err
	}
	return &homeserverProbe{c: c, name: pos[0], policy: policy, fed: federation.NewResolver(policy, nil)}, nil
}

func (p *homeserverProbe) validName() bool {
	return p.c.step("server name", func() (string, error) {
		if !matrixid.ValidServerName(p.name) {
			return "", hint(fmt.Errorf("%q is not a valid server name", p.name),
				"a server name is the part after the colon in a Matrix ID, like example.org or matrix.example.org:8448")
		}
		return fmt.Sprintf("%q is a valid server name", p.name), nil
	})
}

func (p *homeserverProbe) discover(ctx context.Context, breaks string) {
	p.c.stepFor("discovery", breaks, func() (string, error) {
		t, err := p.fed.Resolve(ctx, p.name)
		if err != nil {
			return "", err
		}
		p.target = t
		how := "found by the spec's discovery (well-known, SRV, or port 8448)"
		if _, pinned := p.policy.Pin(p.name); pinned {
			how = "pinned in [outbound.pins]"
		}
		return fmt.Sprintf("requests go to %s (Host %s, certificate name %s), %s", t.BaseURL, t.Host, t.TLSName, how), nil
	})
}

func (p *homeserverProbe) signingKeys(ctx context.Context, breaks string) bool {
	return p.c.stepFor("signing keys", breaks, func() (string, error) {
		resp, err := p.fed.Do(ctx, p.name, http.MethodGet, "/_matrix/key/v2/server", nil, nil, 64<<10)
		if err != nil {
			return "", explainFetch(err, p.target)
		}
		p.answered = true
		if resp.Status != http.StatusOK {
			return "", hint(fmt.Errorf("GET %s/_matrix/key/v2/server answered HTTP %d", p.target.BaseURL, resp.Status),
				"this does not look like a Matrix homeserver's federation port; check its /.well-known/matrix/server or SRV record")
		}
		return verifyServerKeys(resp.Body, p.name, time.Now())
	})
}

func (p *homeserverProbe) openID(ctx context.Context, breaks string) bool {
	return p.c.stepFor("OpenID userinfo", breaks, func() (string, error) {
		token := "mxid-check-" + rand.Text() // made up: a homeserver must refuse it
		resp, err := p.fed.Do(ctx, p.name, http.MethodGet, "/_matrix/federation/v1/openid/userinfo?access_token="+url.QueryEscape(token), nil, nil, 5<<10)
		if err != nil {
			return "", explainFetch(err, p.target)
		}
		body := matrixError(resp.Body)
		switch {
		case resp.Status == http.StatusUnauthorized && body.Errcode == "M_UNKNOWN_TOKEN":
			return "reachable: a made-up token got 401 M_UNKNOWN_TOKEN, as it should", nil
		case resp.Status == http.StatusUnauthorized || resp.Status == http.StatusForbidden:
			return "", warning{fmt.Sprintf("reachable, but a made-up token got HTTP %d %s instead of 401 M_UNKNOWN_TOKEN", resp.Status, body.Errcode)}
		case resp.Status == http.StatusNotFound:
			return "", hint(errors.New("the homeserver does not serve /_matrix/federation/v1/openid/userinfo (HTTP 404)"),
				"Synapse serves it with the \"openid\" (or \"federation\") resource on a listener reachable from here")
		case resp.Status == http.StatusOK:
			return "", hint(errors.New("the homeserver accepted a made-up OpenID token"),
				"this homeserver cannot be trusted to vouch for its users")
		default:
			return "", fmt.Errorf("the OpenID endpoint answered HTTP %d %s", resp.Status, body.Errcode)
		}
	})
}

// matrixErrorBody is the part of a Matrix error answer the checks read.
type matrixErrorBody struct {
	Errcode string `json:"errcode"`
	Error   string `json:"error"`
	json    bool   // the body was a JSON object
}

func matrixError(body []byte) matrixErrorBody {
	var e matrixErrorBody
	e.json = json.Unmarshal(body, &e) == nil
	return e
}

// verifyServerKeys checks a /_matrix/key/v2/server answer: it names the
// server, holds at least one key, every current key has a valid
// self-signature, and it has not expired.
func verifyServerKeys(body []byte, name string, now time.Time) (string, error) {
	var doc struct {
		ServerName   string `json:"server_name"`
		ValidUntilTS int64  `json:"valid_until_ts"`
		VerifyKeys   map[string]struct {
			Key string `json:"key"`
		} `json:"verify_keys"`
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		return "", fmt.Errorf("the key answer is not a JSON object: %v", err)
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("the key answer is malformed: %v", err)
	}
	if doc.ServerName != name {
		return "", hint(fmt.Errorf("the keys are for %q, not %q", doc.ServerName, name),
			"the address found for this server name reaches a different homeserver; check its /.well-known/matrix/server or SRV record")
	}
	if len(doc.VerifyKeys) == 0 {
		return "", errors.New("the answer holds no verify_keys")
	}
	ids := make([]string, 0, len(doc.VerifyKeys))
	for id := range doc.VerifyKeys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if !strings.HasPrefix(id, "ed25519:") {
			continue
		}
		pub, err := signing.DecodeBase64(doc.VerifyKeys[id].Key)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return "", fmt.Errorf("key %s is not a valid ed25519 public key", id)
		}
		if err := signing.Verify(raw, name, id, ed25519.PublicKey(pub)); err != nil {
			return "", hint(fmt.Errorf("the self-signature with %s does not verify: %v", id, err),
				"the homeserver's keys are broken or something between mxid and it alters the answer")
		}
	}
	until := time.UnixMilli(doc.ValidUntilTS)
	found := fmt.Sprintf("%d key(s) (%s), self-signature verifies, valid until %s", len(ids), strings.Join(ids, ", "), until.UTC().Format(time.RFC3339))
	if until.Before(now) {
		return "", warning{found + ", which has passed: the homeserver should refresh its key answer"}
	}
	return found, nil
}

// explainFetch turns a failure to reach a homeserver into plain words.
func explainFetch(err error, t federation.Target) error {
	return explainWith(err, t.BaseURL, t.TLSName, fetchAdvice{
		blocked:   "for a homeserver on your own network, add its range to [outbound] allow_cidrs, or pin it in [outbound.pins]",
		untrusted: "homeservers need a certificate from a public CA on the federation port; for a private CA set [outbound] ca_file",
		invalid:   "the homeserver's certificate must be renewed (or the clock of this machine is wrong)",
		wrongName: "the certificate must name the server name (or the delegated name)",
		noName:    "check the homeserver's DNS records (A/AAAA, or SRV _matrix-fed._tcp)",
		timeout:   "a firewall may drop the connection; the federation port (8448 unless delegated) must be open to this machine",
		refused:   "is the homeserver running and its federation port open? Delegation via /.well-known/matrix/server or SRV may be missing",
	})
}

// fetchAdvice is the hint for each way an HTTPS request fails: the
// failures are the same whoever is asked, the advice is not.
type fetchAdvice struct {
	blocked   string // the address is refused by the outbound policy
	untrusted string // the certificate is not from a trusted CA
	invalid   string // the certificate has expired or is not valid yet
	wrongName string // the certificate does not name the host
	noName    string // the host name does not resolve
	timeout   string // no answer in time
	refused   string // no connection
}

// explainWith says in plain words why a request to base (whose
// certificate must name tlsName) failed.
func explainWith(err error, base, tlsName string, a fetchAdvice) error {
	var certErr x509.UnknownAuthorityError
	var invalidErr x509.CertificateInvalidError
	var hostErr x509.HostnameError
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.Is(err, outbound.ErrBlocked):
		return hint(fmt.Errorf("%s resolves to an address mxid refuses by default (private, loopback or reserved): %v", base, err), a.blocked)
	case errors.As(err, &certErr):
		return hint(fmt.Errorf("the certificate of %s is not from a trusted CA: %v", base, err), a.untrusted)
	case errors.As(err, &invalidErr):
		return hint(fmt.Errorf("the certificate of %s is not valid now: %v", base, err), a.invalid)
	case errors.As(err, &hostErr):
		return hint(fmt.Errorf("the certificate of %s is not valid for %s: %v", base, tlsName, err), a.wrongName)
	case errors.As(err, &dnsErr):
		return hint(fmt.Errorf("the name could not be resolved: %v", err), a.noName)
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout"):
		return hint(fmt.Errorf("%s did not answer in time: %v", base, err), a.timeout)
	case errors.As(err, &opErr):
		return hint(fmt.Errorf("could not connect to %s: %v", base, err), a.refused)
	}
	return err
}
