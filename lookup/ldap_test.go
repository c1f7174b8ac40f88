package lookup_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"mxid/lookup"
	"mxid/lookup/threepid"
)

const syncUsers = 2500

func seedDirectory() string {
	var b strings.Builder
	b.WriteString(person("alice", "mail", "alice@example.org", "mail", "Alice.Second@EXAMPLE.org", "mobile", "+44 7700 900123"))
	b.WriteString(person("bob", "mail", "Bob@Example.org", "telephoneNumber", "+44 20 7946 0018"))
	b.WriteString(person("carol", "mail", "carol(x)@example.org"))
	b.WriteString(person("Dave", "mail", "dave@example.org", "description", "@dave:other.example"))
	b.WriteString(person("eve", "mail", "eve@example.org", "description", "not an mxid"))
	b.WriteString(person("nomail"))
	// National format, read in default_region GB.
	b.WriteString(person("frank", "telephoneNumber", "020 7946 0000", "mobile", "07700-900456"))
	for i := range syncUsers {
		attrs := []string{"mail", fmt.Sprintf("user%04d@example.org", i)}
		if i%10 == 0 {
			attrs = append(attrs, "mobile", fmt.Sprintf("+1 201 555 %04d", i))
		}
		b.WriteString(person(fmt.Sprintf("user%04d", i), attrs...))
	}
	return b.String()
}

func ldapConfig(url string) lookup.LDAPConfig {
	c := lookup.DefaultLDAPConfig()
	c.URLs = []string{url}
	c.BindDN, c.BindPassword = ldapReader, ldapPW
	c.BaseDNs = []string{ldapBase}
	c.Preset = "openldap"
	c.UIDDomain = "example.org"
	c.DefaultRegion = "GB"
	return c
}

func newLDAP(t *testing.T, c lookup.LDAPConfig, timeout time.Duration) *lookup.LDAP {
	t.Helper()
	if errs := c.Validate(); len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	l, err := lookup.NewLDAP(c, timeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

func TestLDAPLookup(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	l := newLDAP(t, ldapConfig(d.URL), 3*time.Second)
	ctx := context.Background()
	cases := map[lookup.ThreePID]string{
		{"email", "alice@example.org"}:        "@alice:example.org",
		{"email", "alice.second@example.org"}: "@alice:example.org", // second value, upper case in the directory
		{"email", "bob@example.org"}:          "@bob:example.org",   // "Bob@Example.org" in the directory
		{"email", "dave@example.org"}:         "@dave:example.org",  // uid "Dave": lower-cased
		{"msisdn", "447700900123"}:            "@alice:example.org", // "+44 7700 900123"
		{"msisdn", "442079460018"}:            "@bob:example.org",   // telephoneNumber "+44 20 7946 0018"
		{"msisdn", "442079460000"}:            "@frank:example.org", // telephoneNumber "020 7946 0000"
		{"msisdn", "447700900456"}:            "@frank:example.org", // mobile "07700-900456"
		{"email", "nobody@example.org"}:       "",
		{"msisdn", "447700900999"}:            "",
	}
	// One at a time.
	for tp, want := range cases {
		got, err := l.Lookup(ctx, []lookup.ThreePID{tp})
		if err != nil || got[tp] != want {
			t.Errorf("%v: got %q, %v; want %q", tp, got[tp], err, want)
		}
	}
	// All at once, with 300 more: several OR filters of batch_size addresses.
	var all []lookup.ThreePID
	for tp := range cases {
		all = append(all, tp)
	}
	for i := range 300 {
		all = append(all, lookup.ThreePID{Medium: "email", Address: fmt.Sprintf("user%04d@example.org", i*7)})
	}
	got, err := l.Lookup(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	for tp, want := range cases {
		if got[tp] != want {
			t.Errorf("bulk %v: got %q, want %q", tp, got[tp], want)
		}
	}
	for i := range 300 {
		if m := got[lookup.ThreePID{Medium: "email", Address: fmt.Sprintf("user%04d@example.org", i*7)}]; m != fmt.Sprintf("@user%04d:example.org", i*7) {
			t.Fatalf("bulk user%04d: %q", i*7, m)
		}
	}
	// Injection attempts match nothing: every value is escaped.
	before := l.EntriesSeen()
	for _, evil := range []string{"*", ")(uid=*", "*)(|(mail=*", "\x00", "a\\2a", "alice@example.org)(uid=*", "*@example.org", "(|(mail=*))"} {
		got, err := l.Lookup(ctx, []lookup.ThreePID{{"email", evil}, {"msisdn", evil}})
		if err != nil || len(got) != 0 {
			t.Errorf("injection %q: %v, %v", evil, got, err)
		}
	}
	if n := l.EntriesSeen() - before; n != 0 {
		t.Errorf("injection attempts returned %d directory entries", n)
	}
	// A full MXID from an attribute instead of uid + domain.
	c := ldapConfig(d.URL)
	c.Preset, c.UIDDomain = "", ""
	c.MXIDAttribute, c.EmailAttributes = "description", []string{"mail"}
	lm := newLDAP(t, c, 3*time.Second)
	dave, eve := lookup.ThreePID{Medium: "email", Address: "dave@example.org"}, lookup.ThreePID{Medium: "email", Address: "eve@example.org"}
	got, err = lm.Lookup(ctx, []lookup.ThreePID{dave, eve})
	if err != nil || got[dave] != "@dave:other.example" || len(got) != 1 {
		t.Errorf("mxid_attribute: %v, %v", got, err)
	}
}

func TestLDAPSyncIntoIndex(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	ctx := context.Background()
	// The directory's size limit (1,000) means only paged searches read it all.
	c, err := ldap.DialURL(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	c.Bind(ldapReader, ldapPW)
	_, err = c.Search(ldap.NewSearchRequest(ldapBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false, "(mail=*)", []string{"mail"}, nil))
	c.Close()
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		t.Fatalf("an unpaged search of everything should hit the size limit, got %v", err)
	}
	s := openStore(t, t.TempDir())
	svc := newService(t, s, ldapConfig(d.URL), nil)
	changed, n, err := svc.LDAP.Sync(ctx)
	if err != nil || !changed {
		t.Fatalf("sync: changed=%v n=%d err=%v", changed, n, err)
	}
	// users' mails and mobiles; alice: 2 mails, 1 mobile; bob: mail, phone;
	// Dave, eve: mail; frank: 2 phones; carol's "carol(x)@example.org" is
	// not an address.
	if want := syncUsers + syncUsers/10 + 3 + 2 + 2 + 2; n != want {
		t.Errorf("synced %d 3PIDs, want %d", n, want)
	}
	if changed, _, _ := svc.LDAP.Sync(ctx); changed {
		t.Error("a second sync of the same directory reports a change")
	}
	if err := svc.Index.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	x := svc.Index
	p := x.Pepper()
	for addr, want := range map[string]string{
		"user1234@example.org": "@user1234:example.org", "user2499@example.org": "@user2499:example.org",
		"alice.second@example.org": "@alice:example.org", "nobody@example.org": "",
	} {
		if got, _ := find(t, x, p, "email", addr); got != want {
			t.Errorf("index %s: %q, want %q", addr, got, want)
		}
	}
	for msisdn, want := range map[string]string{"12015550120": "@user0120:example.org", "442079460000": "@frank:example.org", "447700900456": "@frank:example.org"} {
		if got, _ := find(t, x, p, "msisdn", msisdn); got != want {
			t.Errorf("index msisdn %s: %q, want %q", msisdn, got, want)
		}
	}
	// A local binding wins over the directory; unbinding it shows the directory again.
	bind(t, s, x, "email", "user0001@example.org", "@local:example.org")
	if got, _ := find(t, x, p, "email", "user0001@example.org"); got != "@local:example.org" {
		t.Errorf("local over directory: %q", got)
	}
	unbind(t, s, x, "email", "user0001@example.org", "@local:example.org")
	if got, _ := find(t, x, p, "email", "user0001@example.org"); got != "@user0001:example.org" {
		t.Errorf("after local unbind: %q", got)
	}
	// The same after a rotation (a fresh scan).
	bind(t, s, x, "email", "user0002@example.org", "@local2:example.org")
	if err := x.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := find(t, x, x.Pepper(), "email", "user0002@example.org"); got != "@local2:example.org" {
		t.Errorf("local over directory after rotation: %q", got)
	}
	if got, _ := find(t, x, x.Pepper(), "email", "user0003@example.org"); got != "@user0003:example.org" {
		t.Errorf("directory after rotation: %q", got)
	}
	_ = threepid.Email
}

// TestLDAPDown: with the directory frozen, then stopped, the cascade still
// answers from the other sources, ending at the directory's deadline; once
// the directory is back, the source reconnects.
func TestLDAPDown(t *testing.T) {
	d := startSlapd(t, seedDirectory())
	l := newLDAP(t, ldapConfig(d.URL), 3*time.Second)
	s := openStore(t, t.TempDir())
	bind(t, s, nil, "email", "local@example.org", "@local:example.org")
	// A directory that answers is asked with a patient deadline (a loaded
	// machine may take seconds); one that is down, through a chain with a
	// short deadline, which is what ends the request.
	const short = 300 * time.Millisecond
	chain := func(ldap time.Duration) *lookup.Chain {
		return lookup.NewChain(nil,
			&lookup.Link{Source: lookup.Local{Store: s}, Deadline: time.Minute},
			&lookup.Link{Source: l, Deadline: ldap})
	}
	patient, hurried := chain(time.Minute), chain(short)
	local, inDir := lookup.ThreePID{Medium: "email", Address: "local@example.org"}, lookup.ThreePID{Medium: "email", Address: "bob@example.org"}
	ask := func(chain *lookup.Chain) (map[lookup.ThreePID]lookup.Result, time.Duration) {
		start := time.Now()
		got := chain.Lookup(context.Background(), []lookup.ThreePID{local, inDir}, false)
		return got, time.Since(start)
	}
	// Only a request that waits on past the deadline fails this bound.
	const hang = 10*short + 5*time.Second
	if got, _ := ask(patient); got[local].MXID != "@local:example.org" || got[inDir].MXID != "@bob:example.org" || got[inDir].Source != "ldap" {
		t.Fatalf("directory up: %v", got)
	}
	d.Pause()
	got, took := ask(hurried)
	if got[local].MXID != "@local:example.org" || len(got) != 1 || took > hang {
		t.Errorf("directory frozen: %v in %v, with a deadline of %v", got, took, short)
	}
	d.Resume()
	d.Stop()
	got, took = ask(hurried)
	if got[local].MXID != "@local:example.org" || len(got) != 1 || took > hang {
		t.Errorf("directory stopped: %v in %v, with a deadline of %v", got, took, short)
	}
	if st := hurried.Stats(); st[1].Errors < 2 {
		t.Errorf("ldap errors not counted: %+v", st)
	}
	d.Start()
	if got, _ := ask(patient); got[inDir].MXID != "@bob:example.org" {
		t.Errorf("directory back: %v", got)
	}
}

// LDAPS and StartTLS, with the directory's CA from ca_file; without it the
// certificate is refused, unless insecure_skip_verify.
func TestLDAPTLS(t *testing.T) {
	d := startSlapdTLS(t, seedDirectory())
	bob := lookup.ThreePID{Medium: "email", Address: "bob@example.org"}
	for _, c := range []struct {
		name     string
		url      string
		starttls bool
		ca       bool
		insecure bool
		ok       bool
	}{
		{"ldaps with ca_file", d.TLSURL, false, true, false, true},
		{"starttls with ca_file", d.URL, true, true, false, true},
		{"ldaps without the CA", d.TLSURL, false, false, false, false},
		{"starttls without the CA", d.URL, true, false, false, false},
		{"ldaps, insecure_skip_verify", d.TLSURL, false, false, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ldapConfig(c.url)
			cfg.StartTLS, cfg.InsecureSkipVerify = c.starttls, c.insecure
			if c.ca {
				cfg.CAFile = d.CAFile
			}
			l := newLDAP(t, cfg, 3*time.Second)
			got, err := l.Lookup(context.Background(), []lookup.ThreePID{bob})
			if c.ok && (err != nil || got[bob] != "@bob:example.org") {
				t.Errorf("got %v, %v", got, err)
			}
			if !c.ok && (err == nil || len(got) != 0) {
				t.Errorf("an unverified directory was used: %v, %v", got, err)
			}
		})
	}
}
