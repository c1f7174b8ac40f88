package lookup

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mxid/lookup/threepid"
	"mxid/server/outbound"
)

// ProbeLDAP tries the [ldap] settings one step at a time for `mxid check
// ldap`: the settings themselves, a connection to each URL (TLS verified
// as for real lookups), the bind, the base DNs, a lookup of tp when it is
// not nil (the filter that ran, the entries it found, the Matrix ID the
// mapping yields), and the sync query that fills the hash index (entries,
// usable 3PIDs, a sample). timeout bounds each operation, as
// [lookup.deadlines] ldap does for real lookups.
func ProbeLDAP(ctx context.Context, cfg LDAPConfig, timeout time.Duration, tp *ThreePID, step func(what string, fn func() (string, error)) bool) {
	var l *LDAP
	if !step("settings", func() (string, error) {
		if !cfg.Enabled() {
			return "", ErrLDAPOff
		}
		var err error
		if l, err = NewLDAP(cfg, timeout, nil); err != nil {
			return "", err
		}
		return l.describe(), nil
	}) {
		return
	}
	defer l.Close()

	var conn *ldap.Conn
	for _, raw := range l.cfg.URLs { // every URL is tried: lookups fail over to the next
		step("connect "+raw, func() (string, error) {
			c, found, err := l.probeConnect(raw)
			if err != nil {
				return "", err
			}
			if conn == nil {
				conn = c
			} else {
				c.Close()
			}
			return found, l.plainWarning(raw, found)
		})
	}
	if conn == nil {
		return
	}
	defer conn.Close()

	if !step("bind", func() (string, error) {
		if l.cfg.BindDN == "" {
			return "no bind_dn: searching anonymously", nil
		}
		if err := conn.Bind(l.cfg.BindDN, l.cfg.BindPassword); err != nil {
			return "", ldapErr(err)
		}
		return "bound as " + l.cfg.BindDN, nil
	}) {
		return
	}

	if !step("base DNs", func() (string, error) {
		for _, base := range l.cfg.BaseDNs {
			_, err := conn.Search(ldap.NewSearchRequest(base, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false, "(objectClass=*)", []string{"1.1"}, nil))
			if err != nil {
				return "", fmt.Errorf("%s: %w", base, ldapErr(err))
			}
		}
		return fmt.Sprintf("%s: found", strings.Join(l.cfg.BaseDNs, "; ")), nil
	}) {
		return
	}

	if tp != nil {
		step("lookup "+tp.Medium+" "+tp.Address, func() (string, error) { return l.probeLookup(ctx, conn, *tp) })
	}

	step("sync query", func() (string, error) {
		conn.SetTimeout(max(l.timeout, 30*time.Second))
		return l.probeSync(ctx, conn)
	})
}

// describe summarises the effective settings (preset applied).
func (l *LDAP) describe() string {
	c := l.cfg
	var b strings.Builder
	if c.Preset != "" {
		fmt.Fprintf(&b, "preset %s; ", c.Preset)
	}
	fmt.Fprintf(&b, "base DNs %s; filter %s; ", strings.Join(c.BaseDNs, " + "), orNone(c.Filter))
	if c.MXIDAttribute != "" {
		fmt.Fprintf(&b, "Matrix ID from attribute %s; ", c.MXIDAttribute)
	} else {
		fmt.Fprintf(&b, "Matrix ID @<%s, lower-cased>:%s; ", c.UIDAttribute, c.UIDDomain)
	}
	fmt.Fprintf(&b, "emails from %s; phone numbers from %s", orNone(strings.Join(c.EmailAttributes, ", ")), orNone(strings.Join(c.MSISDNAttributes, ", ")))
	if c.DefaultRegion != "" {
		fmt.Fprintf(&b, " (national numbers read as %s)", c.DefaultRegion)
	}
	if c.SyncInterval > 0 {
		fmt.Fprintf(&b, "; sync every %v in pages of %d", c.SyncInterval, c.PageSize)
	} else {
		b.WriteString("; sync off")
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// probeConnect opens one URL as lookups do, keeping a certificate error's
// type.
func (l *LDAP) probeConnect(raw string) (*ldap.Conn, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "", err
	}
	var certErr error
	c, err := l.connect(raw, l.timeout, verifyingTLS(l.tls, u.Hostname(), &certErr))
	switch {
	case certErr != nil:
		return nil, "", fmt.Errorf("TLS handshake: %w", certErr)
	case err != nil && l.cfg.StartTLS && strings.Contains(err.Error(), "StartTLS"):
		return nil, "", fmt.Errorf("%w: %w", ErrLDAPStartTLS, err)
	case err != nil:
		return nil, "", err
	}
	how := "plain LDAP, not encrypted"
	if st, ok := c.TLSConnectionState(); ok {
		how = "LDAPS: " + outbound.DescribeTLS(st, l.cfg.InsecureSkipVerify)
		if l.cfg.StartTLS {
			how = "StartTLS: " + outbound.DescribeTLS(st, l.cfg.InsecureSkipVerify)
		}
	}
	return c, "connected to " + u.Host + ", " + how, nil
}

// plainWarning warns when a password would cross the network in clear.
func (l *LDAP) plainWarning(raw, found string) error {
	u, _ := url.Parse(raw)
	if u.Scheme == "ldap" && !l.cfg.StartTLS && l.cfg.BindDN != "" && !outbound.IsLoopbackHost(u.Hostname()) {
		return ProbeWarning(found + "; the bind password and the directory's answers cross the network in clear (use ldaps:// or starttls = true)")
	}
	return nil
}

// ldapErr marks the LDAP results the caller has advice for.
func ldapErr(err error) error {
	var mark error
	switch {
	case ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials):
		mark = ErrLDAPCredentials
	case ldap.IsErrorAnyOf(err, ldap.LDAPResultConfidentialityRequired, ldap.LDAPResultStrongAuthRequired):
		mark = ErrLDAPNeedsTLS
	case ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject):
		mark = ErrLDAPNoBase
	case ldap.IsErrorWithCode(err, ldap.LDAPResultInsufficientAccessRights):
		mark = ErrLDAPAccess
	default:
		return err
	}
	var le *ldap.Error
	errors.As(err, &le)
	text := fmt.Sprintf("LDAP result %d (%s)", le.ResultCode, ldap.LDAPResultCodeMap[le.ResultCode])
	if le.Err != nil && strings.TrimSpace(le.Err.Error()) != "" {
		text += ": " + strings.TrimSpace(le.Err.Error()) // AD says why here ("data 52e": wrong password)
	}
	return fmt.Errorf("%w: %s", mark, text)
}

// probeLookup runs the search a lookup of tp runs and explains what came
// of it, then asks the source itself (its own connection) to be sure the
// answer is the one lookups get.
func (l *LDAP) probeLookup(ctx context.Context, conn *ldap.Conn, tp ThreePID) (string, error) {
	_, terms := l.lookupTerms([]ThreePID{tp})
	filter := l.withFilter("(|" + strings.Join(terms, "") + ")")
	var found []string
	mxid := ""
	for _, base := range l.cfg.BaseDNs {
		res, err := conn.Search(ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 10, int(max(1, l.timeout/time.Second)), false, filter, l.attrs, nil))
		if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
			return "", fmt.Errorf("search %s under %s: %w", filter, base, ldapErr(err))
		}
		if res == nil {
			continue
		}
		for _, e := range res.Entries {
			m := l.mxidOf(e)
			holds := false
			l.threepidsOf(e, func(got ThreePID) { holds = holds || got == tp })
			switch {
			case m == "":
				found = append(found, fmt.Sprintf("%s yields no Matrix ID (%s)", e.DN, l.whyNoMXID(e)))
			case !holds:
				found = append(found, fmt.Sprintf("%s matched the filter, but none of its %s values reads as %s", e.DN, tp.Medium, tp.Address))
			default:
				found = append(found, fmt.Sprintf("%s -> %s (%s)", e.DN, m, l.mapping(e)))
				if mxid == "" {
					mxid = m
				}
			}
		}
	}
	what := fmt.Sprintf("filter %s under %s: ", filter, strings.Join(l.cfg.BaseDNs, " + "))
	switch {
	case len(found) == 0:
		return "", fmt.Errorf("%w: %s0 entries", ErrLDAPNotFound, what)
	case mxid == "":
		return "", fmt.Errorf("%w: %s%d entr%s: %s", ErrLDAPNoMXID, what, len(found), plural(len(found), "y", "ies"), strings.Join(found, "; "))
	}
	got, err := l.Lookup(ctx, []ThreePID{tp})
	if err != nil {
		return "", fmt.Errorf("the search works, but the LDAP source's own lookup failed: %w", err)
	}
	found = append(found, "the LDAP source answers "+got[tp])
	text := what + fmt.Sprintf("%d entr%s: ", len(found)-1, plural(len(found)-1, "y", "ies")) + strings.Join(found, "; ")
	if len(found) > 2 {
		return "", ProbeWarning(text + "; several entries hold this address: the first one found wins")
	}
	return text, nil
}

// probeSync runs the sync query and summarises it with a sample entry.
func (l *LDAP) probeSync(ctx context.Context, conn *ldap.Conn) (string, error) {
	entries, usable, threepids := 0, 0, 0
	mxids := map[string]bool{}
	var unmapped []string
	sample := ""
	pages, err := l.readAll(ctx, conn, func(_ string, e *ldap.Entry) {
		entries++
		m := l.mxidOf(e)
		if m == "" {
			if len(unmapped) < 3 {
				unmapped = append(unmapped, fmt.Sprintf("%s: %s", e.DN, l.whyNoMXID(e)))
			}
			return
		}
		var tps []string
		l.threepidsOf(e, func(tp ThreePID) { tps = append(tps, tp.Medium+" "+tp.Address) })
		if len(tps) == 0 {
			return
		}
		usable++
		threepids += len(tps)
		mxids[m] = true
		if sample == "" {
			sample = fmt.Sprintf("%s -> %s (%s) for %s", e.DN, m, l.mapping(e), strings.Join(tps, ", "))
		}
	})
	if err != nil {
		return "", ldapErr(err)
	}
	if entries == 0 {
		return "", fmt.Errorf("%w: filter %s under %s", ErrLDAPEmpty, l.syncFilter(), strings.Join(l.cfg.BaseDNs, " + "))
	}
	text := fmt.Sprintf("%d entr%s in %d page(s) of at most %d, %d usable 3PID(s) for %d Matrix ID(s)", entries, plural(entries, "y", "ies"), pages, l.cfg.PageSize, threepids, len(mxids))
	if usable == 0 {
		return "", fmt.Errorf("%w: %s; e.g. %s", ErrLDAPNoMXID, text, strings.Join(unmapped, "; "))
	}
	text += "; sample: " + sample
	if n := entries - usable; n > 0 {
		text += fmt.Sprintf("; %d entr%s left out", n, plural(n, "y", "ies"))
		if len(unmapped) > 0 {
			text += " (e.g. " + strings.Join(unmapped, "; ") + ")"
		}
	}
	if l.cfg.SyncInterval == 0 {
		return "", ProbeWarning(text + "; but sync_interval = 0: the sync is off, so hashed (sha256) lookups do not find directory users")
	}
	return text, nil
}

// mapping says where an entry's Matrix ID comes from.
func (l *LDAP) mapping(e *ldap.Entry) string {
	if l.cfg.MXIDAttribute != "" {
		return fmt.Sprintf("%s: %q", l.cfg.MXIDAttribute, e.GetEqualFoldAttributeValue(l.cfg.MXIDAttribute))
	}
	return fmt.Sprintf("%s: %q", l.cfg.UIDAttribute, e.GetEqualFoldAttributeValue(l.cfg.UIDAttribute))
}

// whyNoMXID explains an entry that yields no Matrix ID.
func (l *LDAP) whyNoMXID(e *ldap.Entry) string {
	attr := l.cfg.UIDAttribute
	if l.cfg.MXIDAttribute != "" {
		attr = l.cfg.MXIDAttribute
	}
	v := strings.TrimSpace(e.GetEqualFoldAttributeValue(attr))
	switch {
	case v == "":
		return "no " + attr + " attribute"
	case l.cfg.MXIDAttribute != "":
		return fmt.Sprintf("%s %q is not a Matrix ID like @user:example.org", attr, v)
	default:
		return fmt.Sprintf("%s %q does not make a valid Matrix ID with %s", attr, v, l.cfg.UIDDomain)
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// ProbeAddress reads ADDRESS of `mxid check ldap`: an email address, or a
// phone number (international, or national in region).
func ProbeAddress(address, region string) (ThreePID, error) {
	if strings.Contains(address, "@") {
		c, err := threepid.CanonicalEmail(address)
		if err != nil {
			return ThreePID{}, fmt.Errorf("%q is not an email address: %w", address, err)
		}
		return ThreePID{threepid.Email, c}, nil
	}
	c, err := threepid.NormalizePhone(address, region)
	if err != nil {
		return ThreePID{}, fmt.Errorf("%q is neither an email address nor a phone number (give it as +<country code> <number>): %w", address, err)
	}
	return ThreePID{threepid.MSISDN, c}, nil
}
