// Package federation is mxid's client side of the Matrix server-server API:
// the grammar of server names and user IDs, homeserver discovery (pins,
// IP literals and explicit ports, /.well-known/matrix/server, SRV
// _matrix-fed._tcp then _matrix._tcp, port 8448), and the calls mxid makes to
// homeservers (OpenID userinfo; key fetching and X-Matrix verification and
// onbind build on the same Resolver).
//
// It imports server/outbound and server/signing only; every request goes
// through the outbound policy.
package federation

import (
	"net/netip"
	"strconv"
	"strings"
)

// ValidServerName reports whether s is a server name as the spec's grammar
// and sydent's stricter hostname rule define it: an IPv4 literal, a bracketed
// IPv6 literal, or a DNS name of alphanumeric labels (hyphens inside), each
// with an optional port 1-65535 without leading zeros.
func ValidServerName(s string) bool {
	host, port, ok := SplitServerName(s)
	if !ok {
		return false
	}
	_ = port
	return validHost(host)
}

// SplitServerName splits "host[:port]" (host may be "[v6]"); port is 0 when
// absent. ok is false for a malformed port.
func SplitServerName(s string) (host string, port int, ok bool) {
	if s == "" || len(s) > 255 {
		return "", 0, false
	}
	hostPart, portPart := s, ""
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
			portPart = portPart[1:]
			if portPart == "" {
				return "", 0, false
			}
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		hostPart, portPart = s[:i], s[i+1:]
		if portPart == "" {
			return "", 0, false
		}
	}
	if portPart != "" {
		if len(portPart) > 5 || portPart[0] == '0' {
			return "", 0, false
		}
		for _, c := range portPart {
			if c < '0' || c > '9' {
				return "", 0, false
			}
		}
		n, _ := strconv.Atoi(portPart)
		if n < 1 || n > 65535 {
			return "", 0, false
		}
		port = n
	}
	return hostPart, port, hostPart != ""
}

func validHost(h string) bool {
	if strings.HasPrefix(h, "[") {
		if !strings.HasSuffix(h, "]") {
			return false
		}
		a, err := netip.ParseAddr(h[1 : len(h)-1])
		return err == nil && a.Is6() && a.Zone() == ""
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
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// isIPv4Literal is a dotted quad of four decimal numbers 0-255.
func isIPv4Literal(h string) bool {
	parts := strings.Split(h, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 {
			return false
		}
		n, err := strconv.Atoi(p)
		if err != nil || n > 255 || (len(p) > 1 && p[0] == '0') {
			return false
		}
	}
	return true
}

// IPLiteral returns the address when host (as split by SplitServerName) is
// an IP literal.
func IPLiteral(host string) (netip.Addr, bool) {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		return a, err == nil
	}
	if isIPv4Literal(host) {
		a, err := netip.ParseAddr(host)
		return a, err == nil
	}
	return netip.Addr{}, false
}

// ValidUserID reports whether s is a user ID mxid accepts: "@", a localpart
// of printable ASCII without ':' (the spec's grammar plus the historical
// characters servers must still accept), ":", a valid server name; at most
// 255 bytes.
func ValidUserID(s string) bool {
	_, _, ok := SplitUserID(s)
	return ok
}

// SplitUserID returns the localpart and server name of a valid user ID.
func SplitUserID(s string) (localpart, server string, ok bool) {
	if len(s) > 255 || len(s) < 4 || s[0] != '@' {
		return "", "", false
	}
	i := strings.IndexByte(s, ':')
	if i < 2 {
		return "", "", false
	}
	localpart, server = s[1:i], s[i+1:]
	for _, c := range []byte(localpart) {
		if c < 0x21 || c > 0x7e {
			return "", "", false
		}
	}
	if !ValidServerName(server) {
		return "", "", false
	}
	return localpart, server, true
}
