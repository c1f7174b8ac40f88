// Package matrixid owns the grammar of Matrix identifiers (the spec's
// appendix "Identifier Grammar"): server names (a host name, an IPv4
// literal or a bracketed IPv6 literal, with an optional port) and user IDs.
// Every check of one goes through this package: the API (bind, unbind,
// invites, account registration, the X-Matrix origin), homeserver
// discovery, the lookup sources (what LDAP and remote identity servers
// answer), import, and the config checks; a second copy would drift.
//
// It imports only the standard library, so any mxid package may import it
// (a leaf: DESIGN.md section 1).
package matrixid

import (
	"net/netip"
	"strconv"
	"strings"
)

// ValidServerName reports whether s is a server name as the spec's grammar
// and sydent's stricter host name rule define it: an IPv4 literal (four
// decimal numbers 0-255), a bracketed IPv6 literal as RFC 3513 section 2.2
// writes one (no zone), or a DNS name of alphanumeric labels with hyphens
// inside (upper case allowed: server names are case-sensitive but may hold
// it), each with an optional port 1-65535 without leading zeros; at most
// 255 bytes. Four numbers that are not an IPv4 literal ("1.2.3.256") are a
// DNS name of digits, as for Synapse and sydent.
func ValidServerName(s string) bool {
	host, _, ok := SplitServerName(s)
	return ok && validHost(host)
}

// ValidDNSName reports whether s is a server name's dns-name form alone: a
// host name of the grammar ValidServerName takes, with no port, that is no
// IP literal ("example.org", not "1.2.3.4" or "example.org:8448"); what an
// ACME certificate or an email domain names.
func ValidDNSName(s string) bool {
	if strings.ContainsAny(s, ":[") || isIPv4Literal(s) {
		return false
	}
	return ValidServerName(s)
}

// SplitServerName splits "host[:port]" (host may be "[v6]"); port is 0 when
// absent. ok is false for a malformed port; the host is not checked (see
// ValidServerName).
func SplitServerName(s string) (host string, port int, ok bool) {
	if s == "" || len(s) > 255 {
		return "", 0, false
	}
	hostPart, portPart, hasPort := s, "", false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, false
		}
		hostPart, portPart = s[:end+1], s[end+1:]
		if portPart != "" {
			if portPart[0] != ':' {
				return "", 0, false
			}
			portPart, hasPort = portPart[1:], true
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		hostPart, portPart, hasPort = s[:i], s[i+1:], true
	}
	if hasPort {
		if port, ok = parsePort(portPart); !ok {
			return "", 0, false
		}
	}
	if hostPart == "" {
		return "", 0, false
	}
	return hostPart, port, true
}

// parsePort accepts 1-65535 in decimal without a sign or leading zeros.
func parsePort(s string) (int, bool) {
	if s == "" || len(s) > 5 || s[0] == '0' || !digits(s) {
		return 0, false
	}
	n, _ := strconv.Atoi(s)
	return n, n >= 1 && n <= 65535
}

func validHost(h string) bool {
	if strings.HasPrefix(h, "[") {
		_, ok := ipv6Literal(h)
		return ok
	}
	if isIPv4Literal(h) {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ipv6Literal parses "[v6]": an IPv6 address (IPv4-mapped and mixed
// notation included), never an IPv4 one or one with a zone.
func ipv6Literal(h string) (netip.Addr, bool) {
	if len(h) < 2 || h[0] != '[' || h[len(h)-1] != ']' {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(h[1 : len(h)-1])
	if err != nil || !a.Is6() || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

// isIPv4Literal is a dotted quad of four decimal numbers 0-255 without
// signs or leading zeros.
func isIPv4Literal(h string) bool {
	parts := strings.Split(h, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 || (len(p) > 1 && p[0] == '0') || !digits(p) {
			return false
		}
		if n, _ := strconv.Atoi(p); n > 255 {
			return false
		}
	}
	return true
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// IPLiteral returns the address when host (as split by SplitServerName) is
// a valid IP literal: a dotted quad or a bracketed IPv6 address.
func IPLiteral(host string) (netip.Addr, bool) {
	if strings.HasPrefix(host, "[") {
		return ipv6Literal(host)
	}
	if isIPv4Literal(host) {
		a, err := netip.ParseAddr(host)
		return a, err == nil
	}
	return netip.Addr{}, false
}

// ValidUserID reports whether s is a user ID mxid accepts (see SplitUserID).
func ValidUserID(s string) bool {
	_, _, ok := SplitUserID(s)
	return ok
}

// SplitUserID returns the localpart and server name of a user ID mxid
// accepts: "@", a localpart, ":", a valid server name; at most 255 bytes.
// The localpart is what the spec calls compliant: not empty, printable
// ASCII (U+0021 to U+007E) without ':'. That is the current grammar
// (a-z 0-9 . _ = - / +) plus the historical characters, upper case
// included, which servers must still accept; localparts beyond it (empty,
// control characters, non-ASCII) are "non-compliant", and servers should
// not hand those to clients outside events, which is what a lookup answer
// would do.
func SplitUserID(s string) (localpart, server string, ok bool) {
	if len(s) > 255 || len(s) < 4 || s[0] != '@' {
		return "", "", false
	}
	i := strings.IndexByte(s, ':')
	if i < 2 {
		return "", "", false
	}
	localpart, server = s[1:i], s[i+1:]
	for i := 0; i < len(localpart); i++ {
		if c := localpart[i]; c < 0x21 || c > 0x7e {
			return "", "", false
		}
	}
	if !ValidServerName(server) {
		return "", "", false
	}
	return localpart, server, true
}
