package lookup

// EntriesSeen counts directory entries returned by lookup searches (tests
// check that injection attempts match nothing).
func (l *LDAP) EntriesSeen() int64 { return l.entries.Load() }

// SaveSnapshot stores recs as a sync that read them would (benchmarks).
func (l *LDAP) SaveSnapshot(recs []Record) (changed bool, n int, err error) { return l.save(recs) }
