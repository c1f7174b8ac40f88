package lookup

// EntriesSeen counts directory entries returned by lookup searches (tests
// check that injection attempts match nothing).
func (l *LDAP) EntriesSeen() int64 { return l.entries.Load() }

// SaveSnapshot stores recs as a sync that read them would (benchmarks).
func (l *LDAP) SaveSnapshot(recs []Record) (changed bool, n int, err error) { return l.save(recs, nil) }

// FoldWords is the directory search's word normalisation (tests).
func FoldWords(s string, joined bool) []string { return newFolder().words(nil, s, joined, 100) }

// SearchEntries is every entry of a search index (tests).
func SearchEntries(x *SearchIndex) []Person {
	if t := x.table.Load(); t != nil {
		return t.people
	}
	return nil
}

// LookupFilters are the filters a live lookup of threepids searches with
// (benchmarks: the work done before any I/O).
func (l *LDAP) LookupFilters(threepids []ThreePID) []string {
	return l.lookupFilters(l.lookupTerms(threepids))
}
