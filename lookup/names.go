package lookup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
)

// With [directory] enabled, each LDAP sync also reads the display names of
// the searchable entries (those of [ldap] filter, and of [directory] filter
// when set) and stores them with the snapshot, which every replica builds
// its search index from. An entry need not hold an address to be found by
// name. Without a [directory] filter the names search finds every entry
// the sync's own does, so the sync reads the directory once, asking for
// the address attributes and the display-name attributes together; with
// one, the names take one more paged search, asking for nothing but the
// Matrix ID attribute and the display-name attributes.
//
// A display name is the first value of the first display-name attribute
// that is a usable name: printable, at most maxDisplayName bytes, and
// holding no email address or phone number (a directory that keeps an
// address in displayName falls back to cn, or to no name): the search
// returns names, never addresses.

// maxDisplayName bounds a display name, in bytes.
const maxDisplayName = 256

// nameSync is the LDAP source's side of the display names.
type nameSync struct {
	enabled bool
	filter  string   // the names search
	attrs   []string // asked for: the Matrix ID attribute and the name attributes
	name    []string // the display-name attributes, in order
	key     string   // namesKey of the settings
	// covers: the names search finds every entry the sync's own does
	// (no [directory] filter: [ldap] filter alone), so one read serves
	// both, asking for withAddresses.
	covers        bool
	withAddresses []string
}

// useNames has each sync read the display names [directory] asks for.
func (l *LDAP) useNames(c DirectoryConfig) {
	inner := "(objectClass=*)"
	if c.Filter != "" {
		inner = parenthesised(c.Filter)
	}
	n := nameSync{enabled: true, filter: l.withFilter(inner), name: c.DisplayNameAttributes, key: namesKey(c), covers: c.Filter == ""}
	for _, a := range append([]string{l.cfg.UIDAttribute, l.cfg.MXIDAttribute}, c.DisplayNameAttributes...) {
		if a != "" {
			n.attrs = append(n.attrs, a)
		}
	}
	n.withAddresses = slices.Clone(l.attrs)
	for _, a := range c.DisplayNameAttributes {
		if !slices.ContainsFunc(n.withAddresses, func(b string) bool { return strings.EqualFold(a, b) }) {
			n.withAddresses = append(n.withAddresses, a)
		}
	}
	l.names = n
}

// namesKey fingerprints the [directory] settings that decide which names a
// sync reads.
func namesKey(c DirectoryConfig) string {
	b, _ := json.Marshal([]any{c.Filter, c.DisplayNameAttributes})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// readNames reads the searchable entries' Matrix IDs and display names on
// c. With addresses (only when the names search covers the sync's), it
// asks for the address attributes too and hands each entry with a Matrix
// ID to addresses as well.
func (l *LDAP) readNames(ctx context.Context, c *ldap.Conn, addresses func(mxid string, e *ldap.Entry)) ([]Person, error) {
	attrs := l.names.attrs
	if addresses != nil {
		attrs = l.names.withAddresses
	}
	var out []Person
	_, err := l.pagedSearch(ctx, c, l.names.filter, attrs, func(_ string, e *ldap.Entry) {
		if m := l.mxidOf(e); m != "" {
			out = append(out, Person{UserID: m, DisplayName: l.displayNameOf(e)})
			if addresses != nil {
				addresses(m, e)
			}
		}
	})
	return out, err
}

// displayNameOf returns an entry's display name, "" when it has no usable
// one.
func (l *LDAP) displayNameOf(e *ldap.Entry) string {
	for _, a := range l.names.name {
		for _, v := range e.GetEqualFoldAttributeValues(a) {
			if n := cleanName(v); n != "" {
				return n
			}
		}
	}
	return ""
}

// cleanName returns v as a display name: valid UTF-8, control characters
// and runs of spaces made one space, cut to maxDisplayName bytes; "" when
// it holds an email address or a phone number.
func cleanName(v string) string {
	v = strings.Join(strings.FieldsFunc(strings.ToValidUTF8(v, ""), func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	}), " ")
	if len(v) > maxDisplayName {
		v = v[:maxDisplayName]
		for !utf8.ValidString(v) {
			v = v[:len(v)-1]
		}
	}
	if holdsAddress(v) {
		return ""
	}
	return v
}

// holdsAddress reports whether a name holds something like an email
// address (an @) or a phone number (seven digits or more, spaces and
// punctuation between them aside).
func holdsAddress(v string) bool {
	if strings.ContainsAny(v, "@＠") {
		return true
	}
	digits := 0
	for _, r := range v {
		switch {
		case unicode.IsDigit(r):
			if digits++; digits >= 7 {
				return true
			}
		case strings.ContainsRune(" +-.()/", r):
		default:
			digits = 0
		}
	}
	return false
}
