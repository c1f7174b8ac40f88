package lookup

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mxid/lookup/threepid"
	"mxid/server/matrixid"
	"mxid/server/outbound"
)

// LDAP is the directory source: live searches for plaintext and v1 lookups
// (batched into OR filters, every value escaped), and a paged sync of the
// whole directory into a snapshot kept in the store (snapshot.go), which
// the hash index holds and which answers lookups while the directory does
// not.
type LDAP struct {
	cfg     LDAPConfig // preset applied
	timeout time.Duration
	tls     *tls.Config
	log     *slog.Logger
	attrs   []string

	mu      sync.Mutex
	conn    *ldap.Conn
	dialing *pendingDial // the dial in flight, if any
	closed  bool
	entries atomic.Int64 // entries returned by lookup searches

	snapshot // nil store: no snapshot (mxid check ldap)
	names    nameSync
}

// pendingDial is one connection attempt that lookups wait for.
type pendingDial struct {
	done chan struct{}
	conn *ldap.Conn
	err  error
}

// NewLDAP builds the directory source from a validated [ldap] section;
// timeout bounds each operation. It does not connect yet.
func NewLDAP(cfg LDAPConfig, timeout time.Duration, log *slog.Logger) (*LDAP, error) {
	cfg = cfg.WithPreset()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &LDAP{cfg: cfg, timeout: timeout, log: log}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify} //nolint:gosec // operator switch, off by default
	roots, err := outbound.LoadRoots(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("ldap.ca_file: %w", err)
	}
	tc.RootCAs = roots
	l.tls = tc
	for _, a := range append(append([]string{cfg.UIDAttribute, cfg.MXIDAttribute}, cfg.EmailAttributes...), cfg.MSISDNAttributes...) {
		if a != "" {
			l.attrs = append(l.attrs, a)
		}
	}
	return l, nil
}

// Name implements Source.
func (l *LDAP) Name() string { return "ldap" }

// Close closes the connection.
func (l *LDAP) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
}

// dial connects to the first URL that answers, upgrades with StartTLS when
// configured and binds.
func (l *LDAP) dial(timeout time.Duration) (*ldap.Conn, error) {
	var errs []error
	for _, raw := range l.cfg.URLs {
		c, err := l.connect(raw, timeout, l.tls)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", raw, err))
			continue
		}
		if l.cfg.BindDN != "" {
			if err := c.Bind(l.cfg.BindDN, l.cfg.BindPassword); err != nil {
				c.Close()
				errs = append(errs, fmt.Errorf("%s: bind as %s: %w", raw, l.cfg.BindDN, err))
				continue
			}
		}
		return c, nil
	}
	return nil, errors.Join(errs...)
}

// connect opens one URL (TLS for ldaps://) and upgrades it with StartTLS
// when configured; tc is verified against the URL's host.
func (l *LDAP) connect(raw string, timeout time.Duration, tc *tls.Config) (*ldap.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	tc = tc.Clone()
	tc.ServerName = u.Hostname()
	c, err := ldap.DialURL(raw, ldap.DialWithDialer(&net.Dialer{Timeout: timeout}), ldap.DialWithTLSConfig(tc))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(timeout)
	if l.cfg.StartTLS {
		if err := c.StartTLS(tc); err != nil {
			c.Close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	return c, nil
}

// shared returns the lookup connection, connecting if there is none. One
// dial runs at a time, in the background; callers wait for it only until
// their ctx ends, so a directory that accepts connections and never answers
// costs each lookup its deadline, not a queue of dials one after the other.
func (l *LDAP) shared(ctx context.Context) (*ldap.Conn, error) {
	l.mu.Lock()
	if l.conn != nil && !l.conn.IsClosing() {
		c := l.conn
		l.mu.Unlock()
		return c, nil
	}
	d := l.dialing
	if d == nil {
		d = &pendingDial{done: make(chan struct{})}
		l.dialing = d
		go l.runDial(d)
	}
	l.mu.Unlock()
	select {
	case <-d.done:
		return d.conn, d.err
	case <-ctx.Done():
		return nil, fmt.Errorf("connecting to the directory: %w", ctx.Err())
	}
}

func (l *LDAP) runDial(d *pendingDial) {
	c, err := l.dial(l.timeout)
	l.mu.Lock()
	l.dialing = nil
	switch {
	case err != nil:
	case l.closed:
		c.Close()
		c, err = nil, errors.New("the directory source is closed")
	default:
		l.conn = c
	}
	d.conn, d.err = c, err
	l.mu.Unlock()
	close(d.done)
}

// drop forgets a connection that failed, so the next call reconnects.
func (l *LDAP) drop(c *ldap.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == c {
		l.conn.Close()
		l.conn = nil
	}
}

func (l *LDAP) withFilter(inner string) string {
	if l.cfg.Filter == "" {
		return inner
	}
	return "(&" + parenthesised(l.cfg.Filter) + inner + ")"
}

// mxidOf maps an entry to its Matrix ID, "" when it has none.
func (l *LDAP) mxidOf(e *ldap.Entry) string {
	if l.cfg.MXIDAttribute != "" {
		if m := strings.TrimSpace(e.GetEqualFoldAttributeValue(l.cfg.MXIDAttribute)); matrixid.ValidUserID(m) {
			return m
		}
		return ""
	}
	uid := strings.TrimSpace(e.GetEqualFoldAttributeValue(l.cfg.UIDAttribute))
	if uid == "" {
		return ""
	}
	if m := "@" + strings.ToLower(uid) + ":" + l.cfg.UIDDomain; matrixid.ValidUserID(m) {
		return m
	}
	return ""
}

// threepidsOf returns an entry's 3PIDs in canonical form: emails
// case-folded, phone numbers as E.164 digits.
func (l *LDAP) threepidsOf(e *ldap.Entry, fn func(ThreePID)) {
	for _, a := range l.cfg.EmailAttributes {
		for _, v := range e.GetEqualFoldAttributeValues(a) {
			if c, err := threepid.CanonicalEmail(strings.TrimSpace(v)); err == nil {
				fn(ThreePID{threepid.Email, c})
			}
		}
	}
	for _, a := range l.cfg.MSISDNAttributes {
		for _, v := range e.GetEqualFoldAttributeValues(a) {
			if c, err := threepid.NormalizePhone(v, l.cfg.DefaultRegion); err == nil {
				fn(ThreePID{threepid.MSISDN, c})
			}
		}
	}
}

// Lookup implements Source: one search per base DN and batch of addresses,
// with an OR filter over every attribute of the medium. When the directory
// fails (or does not answer before ctx ends), the 3PIDs it did not answer
// are answered from the stored snapshot (snapshot.go).
func (l *LDAP) Lookup(ctx context.Context, threepids []ThreePID) (map[ThreePID]string, error) {
	want, terms := l.lookupTerms(threepids)
	if len(terms) == 0 {
		return map[ThreePID]string{}, nil
	}
	out, err := l.search3PIDs(ctx, want, terms)
	return l.orSnapshot(want, out, err)
}

// search3PIDs asks the directory itself for the 3PIDs want, with the
// filter terms lookupTerms made for them.
func (l *LDAP) search3PIDs(ctx context.Context, want map[ThreePID]bool, terms []string) (map[ThreePID]string, error) {
	out := map[ThreePID]string{}
	for _, filter := range l.lookupFilters(want, terms) {
		for _, base := range l.cfg.BaseDNs {
			if err := l.search(ctx, base, filter, func(e *ldap.Entry) {
				m := l.mxidOf(e)
				if m == "" {
					return
				}
				l.threepidsOf(e, func(tp ThreePID) {
					if want[tp] {
						if _, dup := out[tp]; !dup {
							out[tp] = m
						}
					}
				})
			}); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// lookupFilters ORs terms into filters of about batch_size addresses each,
// counting the average number of terms an address of want has.
func (l *LDAP) lookupFilters(want map[ThreePID]bool, terms []string) []string {
	per := max(1, l.cfg.BatchSize*max(1, len(terms)/max(1, len(want))))
	filters := make([]string, 0, (len(terms)+per-1)/per)
	for start := 0; start < len(terms); start += per {
		filters = append(filters, l.withFilter("(|"+strings.Join(terms[start:min(len(terms), start+per)], "")+")"))
	}
	return filters
}

// lookupTerms returns the set of 3PIDs asked and the filter terms that
// find them: one per attribute of the medium and address, every value
// escaped.
func (l *LDAP) lookupTerms(threepids []ThreePID) (map[ThreePID]bool, []string) {
	want := make(map[ThreePID]bool, len(threepids))
	var terms []string
	for _, tp := range threepids {
		if want[tp] {
			continue
		}
		want[tp] = true
		switch tp.Medium {
		case threepid.Email:
			for _, a := range l.cfg.EmailAttributes {
				terms = append(terms, "("+a+"="+ldap.EscapeFilter(tp.Address)+")")
			}
		case threepid.MSISDN:
			// Directories hold numbers as people typed them. telephoneNumber
			// matching ignores spaces and hyphens, so "+<digits>" finds
			// "+44 20 7946 0018" and the national digits "020 7946 0000";
			// the formatted forms serve directories that compare strings
			// as they are. Each entry found is compared canonically after
			// the search (threepidsOf).
			forms := threepid.PhoneForms(tp.Address, l.cfg.DefaultRegion)
			for _, a := range l.cfg.MSISDNAttributes {
				for _, f := range forms {
					terms = append(terms, "("+a+"="+ldap.EscapeFilter(f)+")")
				}
			}
		}
	}
	return want, terms
}

// search runs one search on the shared connection, reconnecting once when
// the connection turns out to be dead.
func (l *LDAP) search(ctx context.Context, base, filter string, fn func(*ldap.Entry)) error {
	for attempt := 0; ; attempt++ {
		c, err := l.shared(ctx)
		if err != nil {
			return err
		}
		req := ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, int(max(1, l.timeout/time.Second)), false, filter, l.attrs, nil)
		res := c.SearchAsync(ctx, req, 64)
		for res.Next() {
			l.entries.Add(1)
			fn(res.Entry())
		}
		err = res.Err()
		if err == nil {
			return ctx.Err()
		}
		if ldap.IsErrorAnyOf(err, ldap.ErrorNetwork, ldap.LDAPResultServerDown, ldap.ErrorUnexpectedMessage) || c.IsClosing() {
			l.drop(c)
			if attempt == 0 && ctx.Err() == nil {
				continue
			}
		}
		return err
	}
}

// Sync reads the whole directory with paged searches (on its own
// connection) and, when it differs from the stored snapshot, stores it as
// the new snapshot the index holds. changed says whether it did; n is the
// number of 3PIDs it holds.
func (l *LDAP) Sync(ctx context.Context) (changed bool, n int, err error) {
	if l.store == nil {
		return false, 0, errors.New("ldap sync: no store to keep the snapshot in")
	}
	c, err := l.dial(max(l.timeout, 30*time.Second))
	if err != nil {
		return false, 0, err
	}
	defer c.Close()
	done := make(chan struct{})
	defer close(done)
	go func() { // a shutdown does not wait for a page in flight
		select {
		case <-ctx.Done():
			c.Close()
		case <-done:
		}
	}()
	var recs []Record
	addresses := func(m string, e *ldap.Entry) {
		l.threepidsOf(e, func(tp ThreePID) {
			recs = append(recs, Record{tp.Medium, tp.Address, m})
		})
	}
	var names []Person
	if l.names.enabled && l.names.covers {
		// One read for both: the entries the sync filter would leave out
		// hold no address.
		names, err = l.readNames(ctx, c, addresses)
	} else {
		_, err = l.readAll(ctx, c, func(_ string, e *ldap.Entry) {
			if m := l.mxidOf(e); m != "" {
				addresses(m, e)
			}
		})
		if err == nil && l.names.enabled {
			names, err = l.readNames(ctx, c, nil)
		}
	}
	if err != nil {
		return false, 0, err
	}
	return l.save(recs, names)
}

// syncFilter selects every entry that holds an address of either medium.
func (l *LDAP) syncFilter() string {
	var terms []string
	for _, a := range append(append([]string{}, l.cfg.EmailAttributes...), l.cfg.MSISDNAttributes...) {
		terms = append(terms, "("+a+"=*)")
	}
	return l.withFilter("(|" + strings.Join(terms, "") + ")")
}

// readAll runs the sync query on c: a paged search of every base DN (page
// size page_size, so Active Directory's 1,000-entry limit does not cut it
// short), calling fn for each entry. It returns the number of pages read.
func (l *LDAP) readAll(ctx context.Context, c *ldap.Conn, fn func(base string, e *ldap.Entry)) (pages int, err error) {
	return l.pagedSearch(ctx, c, l.syncFilter(), l.attrs, fn)
}

// pagedSearch reads every entry of every base DN matching filter, with
// attrs, as readAll does.
func (l *LDAP) pagedSearch(ctx context.Context, c *ldap.Conn, filter string, attrs []string, fn func(base string, e *ldap.Entry)) (pages int, err error) {
	for _, base := range l.cfg.BaseDNs {
		paging := ldap.NewControlPaging(uint32(l.cfg.PageSize))
		req := ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false, filter, attrs, []ldap.Control{paging})
		for {
			if err := ctx.Err(); err != nil {
				return pages, err
			}
			res, err := c.Search(req)
			if err != nil {
				return pages, fmt.Errorf("ldap sync of %s: %w", base, err)
			}
			pages++
			for _, e := range res.Entries {
				fn(base, e)
			}
			ctrl, ok := ldap.FindControl(res.Controls, ldap.ControlTypePaging).(*ldap.ControlPaging)
			if !ok || len(ctrl.Cookie) == 0 {
				break
			}
			paging.SetCookie(ctrl.Cookie)
		}
	}
	return pages, nil
}
