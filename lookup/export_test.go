package lookup

// EntriesSeen counts directory entries returned by lookup searches (tests
// check that injection attempts match nothing).
func (l *LDAP) EntriesSeen() int64 { return l.entries.Load() }
