package lookup_test

import (
	"context"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"

	"mxid/db/storetest"
	"mxid/lookup"
	"mxid/lookup/slapdtest"
)

const colleagues = 3000

// namesSeed is a directory for the search: people with accented,
// several-word and shared names, one without an address, addresses
// planted in display-name attributes and in others, a contractor the
// [directory] filter leaves out.
func namesSeed() string {
	var b strings.Builder
	b.WriteString(person("alice.martin", "displayName", "Alice Martin (Accounting)", "mail", "alice.martin@mail.example.com",
		"employeeType", "staff", "description", "alice.private@mail.example.com", "title", "Call +44 20 7946 0101"))
	b.WriteString(person("elodie", "displayName", "Élodie Dupont-Müller", "employeeType", "staff")) // no address
	b.WriteString(person("xq1", "displayName", "Xavier Quintal", "mail", "xq1@mail.example.com", "employeeType", "staff"))
	b.WriteString(person("xq2", "displayName", "Xavier Quintal", "mail", "xq2@mail.example.com", "employeeType", "staff"))
	// An address in displayName: cn is the name then.
	b.WriteString(person("leaky", "displayName", "leaky.person@mail.example.com", "mail", "leaky@mail.example.com", "employeeType", "staff"))
	b.WriteString(person("phoney", "displayName", "+44 (0)20 7946-0999", "employeeType", "staff"))
	b.WriteString(person("contractor", "displayName", "Alice Contractor", "mail", "contractor@mail.example.com", "employeeType", "contractor"))
	b.WriteString(slapdtest.Colleagues(colleagues))
	return b.String()
}

func directoryConfig(filter string) lookup.DirectoryConfig {
	c := lookup.DefaultDirectoryConfig()
	c.Enabled, c.HomeserverURL, c.Filter = true, "http://127.0.0.1:8008", filter
	return c
}

// addressRE finds what must never be a display name: an email address,
// seven digits of a phone number.
var addressRE = regexp.MustCompile(`@|mail\.example\.com|[0-9][0-9 ()+-]{5,}[0-9]`)

// The sync reads every searchable entry's display name (displayName, else
// cn; never an address) and stores it with the snapshot; the search finds
// people by their words, case and accents aside; a restart while the
// directory is down searches the stored names; [directory] filter
// restricts who is searchable.
func TestDirectoryNamesFromLDAP(t *testing.T) {
	d := startSlapd(t, namesSeed())
	dir := t.TempDir()
	s := openStore(t, dir)
	cfg := ldapConfig(d.URL)
	svc := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig("")})
	if svc.Search.Len() != 0 {
		t.Fatalf("searchable before the first sync: %d", svc.Search.Len())
	}
	if err := svc.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// 7 named entries, the colleagues, and every other entry with a uid
	// (the lookup seed's users are not in this directory).
	if n := svc.Search.Len(); n != 7+colleagues {
		t.Errorf("searchable: %d, want %d", n, 7+colleagues)
	}
	for _, c := range []struct{ term, want string }{
		{"ali acc", "@alice.martin:example.org Alice Martin (Accounting)"},
		{"ELO dupont-mull", "@elodie:example.org Élodie Dupont-Müller"},
		{"leaky", "@leaky:example.org leaky"},
		{"phoney", "@phoney:example.org phoney"},
		{"alice contr", "@contractor:example.org Alice Contractor"},
	} {
		got, _ := svc.Search.Search(c.term, 10)
		if len(got) != 1 || got[0].UserID+" "+got[0].DisplayName != c.want {
			t.Errorf("Search(%q) = %+v, want %s", c.term, got, c.want)
		}
	}
	if got, _ := svc.Search.Search("xavier quintal", 10); ids(got) != "@xq1:example.org @xq2:example.org" {
		t.Errorf("two people of one name: %v", got)
	}
	if got, more := svc.Search.Search("łukasz", 50); len(got) != 50 || !more {
		t.Errorf("a name many share: %d found, more %v", len(got), more)
	}
	for _, p := range lookup.SearchEntries(svc.Search) {
		if addressRE.MatchString(p.DisplayName) || strings.Contains(p.DisplayName, "private") || strings.Contains(p.DisplayName, "Phone") {
			t.Errorf("a display name holds an address or another attribute: %+v", p)
		}
	}

	// Nothing changed: nothing stored. A display name changes: stored,
	// and found.
	changed, _, err := svc.LDAP.Sync(context.Background())
	if err != nil || changed {
		t.Errorf("an unchanged directory: changed %v, %v", changed, err)
	}
	modify(t, d, "elodie", "displayName", "Élodie Zanetti")
	if err := svc.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := svc.Search.Search("elodie zan", 10); ids(got) != "@elodie:example.org" {
		t.Errorf("after a name change: %v", got)
	}
	svc.Close()

	// A restart while the directory is down searches the stored names.
	d.Stop()
	svc2 := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig("")})
	if got, _ := svc2.Search.Search("ali acc", 10); ids(got) != "@alice.martin:example.org" {
		t.Errorf("after a restart with the directory down: %v", got)
	}
	svc2.Close()

	// Only staff are searchable: the filter is read at the next sync; the
	// names stored with other settings are not searched meanwhile.
	d.Start()
	var logs logBuffer
	svc3 := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig("(employeeType=staff)"), Logger: logs.logger()})
	if svc3.Search.Len() != 0 || logs.count("read with other [directory] settings") != 1 {
		t.Errorf("names read with another filter: %d searchable\n%s", svc3.Search.Len(), logs.String())
	}
	if err := svc3.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := svc3.Search.Len(); n != 6 {
		t.Errorf("staff only: %d searchable, want 6", n)
	}
	if got, _ := svc3.Search.Search("alice", 10); ids(got) != "@alice.martin:example.org" {
		t.Errorf("the contractor is searchable: %v", got)
	}
}

// A copy of the store that left the display names behind (the summary
// promises them): the next sync stores them again though the directory
// did not change.
func TestDirectoryNamesMissingFromStore(t *testing.T) {
	d := startSlapd(t, namesSeed())
	s := openStore(t, t.TempDir())
	cfg := ldapConfig(d.URL)
	svc := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig("")})
	if err := svc.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc.Close()
	sum, _, _ := s.DirectorySummary()
	recs := storetest.ScanDirectory(t, s)
	if err := s.ReplaceDirectory(sum, func(put func(medium, address, mxid string) error) error {
		for k, m := range recs {
			if err := put(k[0], k[1], m); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	svc2 := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig(""), Logger: logs.logger()})
	if svc2.Search.Len() != 0 || logs.count("fewer display names than its snapshot says") != 1 {
		t.Fatalf("names missing: %d searchable\n%s", svc2.Search.Len(), logs.String())
	}
	changed, _, err := svc2.LDAP.Sync(context.Background())
	if err != nil || !changed {
		t.Fatalf("the sync after: changed %v, %v", changed, err)
	}
	if n := len(storetest.ScanDirectoryNames(t, s)); n != 7+colleagues {
		t.Errorf("names stored again: %d", n)
	}
}

// Another service on the same store (a replica) takes in a snapshot the
// first one stored when told it changed: hash index and search alike.
func TestDirectoryChanged(t *testing.T) {
	d := startSlapd(t, namesSeed())
	s := openStore(t, t.TempDir())
	cfg := ldapConfig(d.URL)
	writer := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig("")})
	reader := newService(t, s, cfg, &lookup.Deps{Directory: directoryConfig("")})
	if err := writer.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Search.Search("ali acc", 10); len(got) != 0 {
		t.Fatalf("found before the reload: %v", got)
	}
	if err := reader.DirectoryChanged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := reader.Search.Search("ali acc", 10); ids(got) != "@alice.martin:example.org" {
		t.Errorf("after the reload: %v", got)
	}
	if got, _ := find(t, reader.Index, reader.Index.Pepper(), "email", "alice.martin@mail.example.com"); got != "@alice.martin:example.org" {
		t.Errorf("hashed lookup after the reload: %q", got)
	}
}

// modify replaces attr of uid's entry as the directory's administrator.
func modify(t *testing.T, d *slapdtest.Server, uid, attr, value string) {
	t.Helper()
	req := ldap.NewModifyRequest("uid="+uid+","+slapdtest.Base, nil)
	req.Replace(attr, []string{value})
	asAdmin(t, d, func(c *ldap.Conn) error { return c.Modify(req) })
}

// asAdmin runs fn on a connection bound as the directory's administrator.
func asAdmin(t *testing.T, d *slapdtest.Server, fn func(c *ldap.Conn) error) {
	t.Helper()
	c, err := ldap.DialURL(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(slapdtest.Admin, slapdtest.AdminPW); err != nil {
		t.Fatal(err)
	}
	if err := fn(c); err != nil {
		t.Fatal(err)
	}
}

// searchCounter returns what tells how many searches slapd d was asked
// for since it last told (its monitor backend counts them; the count's
// own reading is left out).
func searchCounter(t testing.TB, d *slapdtest.Server) func() int {
	t.Helper()
	c, err := ldap.DialURL(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Bind(slapdtest.Reader, slapdtest.ReaderPW); err != nil {
		t.Fatal(err)
	}
	// Initiated, not completed: slapd counts an operation complete after
	// it has sent the result, so a client may ask before it is counted.
	read := func() int {
		t.Helper()
		res, err := c.Search(ldap.NewSearchRequest(slapdtest.MonitorSearches, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
			0, 0, false, "(objectClass=*)", []string{"monitorOpInitiated"}, nil))
		if err != nil || len(res.Entries) != 1 {
			t.Fatalf("reading %s: %v", slapdtest.MonitorSearches, err)
		}
		n, err := strconv.Atoi(res.Entries[0].GetAttributeValue("monitorOpInitiated"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	last := read()
	return func() int {
		t.Helper()
		n := read()
		defer func() { last = n }()
		return n - last - 1
	}
}

// With [directory] on and no [directory] filter, the names search finds
// every entry the sync's own does: one paged search reads both the
// addresses and the names, and stores what two would. With a filter of its
// own, [directory] costs a second search.
func TestDirectorySyncReadsOnce(t *testing.T) {
	seed := person("alice", "mail", "alice@example.org", "mobile", "+44 7700 900123", "displayName", "Alice Liddell") +
		person("frank", "telephoneNumber", "020 7946 0000", "mobile", "07700-900456", "employeeType", "staff") +
		person("elodie", "displayName", "Élodie Dupont-Müller", "employeeType", "staff") + // no address
		person("nomail") +
		slapdtest.Colleagues(50) // fewer entries than a page: one search per read
	d := startSlapd(t, seed)
	searches := searchCounter(t, d)
	var alone map[[2]string]string // the 3PIDs a sync without [directory] stores
	for _, c := range []struct {
		name     string
		dir      *lookup.DirectoryConfig
		searches int
		names    int
	}{
		{"without [directory]", nil, 1, 0},
		{"[directory] without a filter", &lookup.DirectoryConfig{}, 1, 4 + 50},
		{"[directory] with a filter", &lookup.DirectoryConfig{Filter: "(employeeType=staff)"}, 2, 2},
	} {
		s := openStore(t, t.TempDir())
		deps := &lookup.Deps{}
		if c.dir != nil {
			deps.Directory = directoryConfig(c.dir.Filter)
		}
		svc := newService(t, s, ldapConfig(d.URL), deps)
		searches()
		if err := svc.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := searches(); n != c.searches {
			t.Errorf("%s: the sync ran %d searches, want %d", c.name, n, c.searches)
		}
		recs := storetest.ScanDirectory(t, s)
		if alone == nil {
			alone = recs
			if len(recs) != 4+50 {
				t.Fatalf("%s: %d 3PIDs stored: %v", c.name, len(recs), recs)
			}
		} else if !maps.Equal(recs, alone) {
			t.Errorf("%s: stored 3PIDs\n%v\nnot those of a sync without [directory]\n%v", c.name, recs, alone)
		}
		if names := storetest.ScanDirectoryNames(t, s); len(names) != c.names || c.names > 0 && names["@elodie:example.org"] != "Élodie Dupont-Müller" {
			t.Errorf("%s: %d names stored, want %d, Élodie's among them: %v", c.name, len(names), c.names, names)
		}
		svc.Close()
	}
}
