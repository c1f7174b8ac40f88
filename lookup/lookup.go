// Package lookup owns 3PID -> Matrix ID resolution: the Source interface,
// the cascade of sources (Chain: local bindings, LDAP, DNS-discovered
// identity servers, configured forwarders, most authoritative first), the
// in-process hash index answering sha256 lookups (Index) with its pepper
// rotation, and the sources themselves (ldap.go, dns.go, and the forwarders in
// remote.go with the remote identity-server client). probe*.go run the directory
// and DNS discovery step by step for `mxid check ldap` and `mxid check dns`;
// the sub-packages slapdtest and dnstest are test support (a throw-away
// slapd, a DNS server on 127.0.0.1) imported only by tests.
//
// The LDAP directory's snapshot (snapshot.go) is kept in the store, not in
// memory: each sync that finds a change replaces it whole; the index is
// built from it as from the local bindings (at start-up too, so a restart
// while the directory is down keeps directory users); and it answers the
// plaintext and v1 lookups the directory fails, the outage logged once.
//
// With [directory] enabled, the sync also reads the searchable entries'
// display names (names.go), stored with the snapshot; the directory
// search's index (search.go, words.go) is built from them, as the hash
// index is, on every replica (Service.DirectoryChanged when another one
// stored a snapshot). It answers the user directory search that package
// server serves, with Matrix IDs and display names only.
//
// It imports no mxid package except leaves (DESIGN.md section 1): its
// sub-package lookup/threepid (3PID grammar, phone forms and the lookup
// hash), server/matrixid (the Matrix ID grammar, which what LDAP and other
// identity servers answer must pass) and server/outbound (the LDAP
// ca_file, TLS descriptions). Its collaborators come from
// main with builtin types at the border: a Store (bindings, meta, the
// directory snapshot; satisfied by *db.Store, and by any other backend that
// implements it), an *http.Client built by the outbound policy, the address
// of the DNS server to ask. go-ldap and miekg/dns are used only here.
package lookup

import (
	"context"

	"mxid/lookup/threepid"
)

// ThreePID is a medium and a canonical address.
type ThreePID struct {
	Medium  string
	Address string
}

// Source answers plaintext lookups. Lookup returns the Matrix ID of each
// 3PID it knows; 3PIDs it does not know are absent from the map. An error
// means the source could not answer (the cascade logs it and moves on); a
// partial answer may come with it.
type Source interface {
	Name() string
	Lookup(ctx context.Context, threepids []ThreePID) (map[ThreePID]string, error)
}

// Store is what lookup needs from mxid's database: the local bindings, a
// place for the pepper, and the directory snapshot.
type Store interface {
	// ScanBindings calls fn for every local binding; the slices are valid
	// only during the call.
	ScanBindings(fn func(medium, address, mxid []byte) error) error
	// BoundMXIDs returns, for each {medium, address}, the bound Matrix ID
	// or "".
	BoundMXIDs(threepids [][2]string) ([]string, error)
	GetMeta(key string) (value []byte, ok bool, err error)
	PutMeta(key string, value []byte) error
	// CreateMeta writes value only if key holds nothing yet, and returns
	// what key holds afterwards: replicas starting together agree on the
	// first pepper.
	CreateMeta(key string, value []byte) (stored []byte, created bool, err error)
	DirectoryStore
}

// DirectoryStore keeps the LDAP directory's snapshot (canonical 3PID ->
// Matrix ID, from the last sync that changed it) across restarts, with a
// small summary document lookup owns.
type DirectoryStore interface {
	// ReplaceDirectory swaps the whole snapshot and its summary in one
	// transaction: fill calls put once per record (in medium, address
	// order for speed). A nil summary with no records removes it.
	ReplaceDirectory(summary []byte, fill func(put func(medium, address, mxid string) error) error) error
	// DirectorySummary returns the stored summary; ok is false when there
	// is no snapshot.
	DirectorySummary() (summary []byte, ok bool, err error)
	// ScanDirectory calls fn for every record; the slices are valid only
	// during the call.
	ScanDirectory(fn func(medium, address, mxid []byte) error) error
	// DirectoryMXIDs returns, for each {medium, address}, the Matrix ID
	// the snapshot holds or "".
	DirectoryMXIDs(threepids [][2]string) ([]string, error)
	// ReplaceDirectoryWithNames is ReplaceDirectory that also replaces the
	// snapshot's display names (Matrix ID -> name; names may be nil) in
	// the same transaction. ReplaceDirectory removes them.
	ReplaceDirectoryWithNames(summary []byte, fill func(put func(medium, address, mxid string) error) error, names func(put func(mxid, name string) error) error) error
	// ScanDirectoryNames calls fn for every display name stored with the
	// snapshot; the slices are valid only during the call.
	ScanDirectoryNames(fn func(mxid, name []byte) error) error
}

// loggedError is a source's failure that the source has logged itself
// (once per outage) and answered as well as it could: the cascade counts
// it but does not log it again for every request.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// Canonical returns the canonical form of an address for lookups (emails
// case-folded, msisdns E.164 digits); ok is false for addresses that cannot
// be bound.
func Canonical(medium, address string) (string, bool) {
	c, err := threepid.Canonical(medium, address)
	return c, err == nil
}
