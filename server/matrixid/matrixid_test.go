package matrixid

import (
	"strings"
	"testing"
)

func TestValidServerName(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
		why  string
	}{
		// The spec's examples.
		{"matrix.org", true, ""}, {"matrix.org:8888", true, ""}, {"1.2.3.4", true, ""}, {"1.2.3.4:1234", true, ""},
		{"[1234:5678::abcd]", true, ""}, {"[1234:5678::abcd]:5678", true, ""},
		{"localhost", true, ""},
		{"Example.ORG", true, "dns-char includes upper case; server names are case-sensitive"},
		{"", false, ""}, {"exa mple.org", false, ""}, {"a..b", false, ""}, {"-a.org", false, ""}, {"a-.org", false, ""},
		{"évil.org", false, "non-ASCII"}, {"ex_ample.org", false, "underscore is no dns-char"},
		{strings.Repeat("a", 64) + ".org", false, "label over 63"},
		{strings.Repeat("a.", 127) + "aa", false, "host over 253"},
		{"a.b.", false, "empty last label"},
		// Ports: 1*5DIGIT in the grammar; mxid, Synapse and sydent take 1-65535 without leading zeros.
		{"x.org:1", true, ""}, {"x.org:65535", true, ""},
		{"x.org:0", false, ""}, {"x.org:65536", false, ""}, {"x.org:08448", false, ""}, {"x.org:", false, ""},
		{"x.org:+80", false, ""}, {"x.org: 80", false, ""}, {"x.org:123456", false, ""}, {"x.org:80:80", false, ""},
		// IPv4 literals: four decimal numbers 0-255.
		{"255.255.255.255", true, ""}, {"0.0.0.0", true, "grammar allows it; the outbound policy refuses to dial it"},
		{"1.2.3.256", true, "four numbers that are no IPv4 literal are a DNS name of digits (Synapse, sydent)"},
		{"-1.2.3.4", false, "drifted: a sign is neither a decimal number nor a DNS label; federation's copy took it"},
		{"+1.2.3.4", false, "drifted: the same with a plus sign"},
		{"-1.2.3.4:99", false, "drifted"},
		// IPv6 literals: RFC 3513 section 2.2, in brackets.
		{"[::1]", true, ""}, {"[::1]:8448", true, ""}, {"[::ffff:1.2.3.4]", true, "mixed notation is RFC 3513 form 3"},
		{"[2001:DB8::1]", true, "IPv6char allows A-F"},
		{"[:::]", false, "drifted: IPv6 characters but not an address; lookup's copy took it"},
		{"[:]", false, "drifted"}, {"[::1::1]", false, "drifted: two '::'"}, {"[65536::1]", false, "drifted: group over ffff"},
		{"[1.2.3.4::1]", false, "drifted"}, {"[e:]", false, "drifted"},
		{"[1.2.3.4]", false, "an IPv4 address in brackets"},
		{"[fe80::1%eth0]", false, "zones are not in the grammar"},
		{"[]", false, ""}, {"[::1", false, ""}, {"[::1]x", false, ""}, {"[::1]:", false, ""}, {"[::1]:0", false, ""},
		{"::1", false, "IPv6 without brackets"},
		{strings.Repeat("a", 250) + ".org", false, "over 255 bytes"},
	} {
		if got := ValidServerName(c.name); got != c.want {
			t.Errorf("ValidServerName(%q) = %v, want %v %s", c.name, got, c.want, c.why)
		}
	}
}

func TestValidDNSName(t *testing.T) {
	for name, want := range map[string]bool{
		"example.org": true, "localhost": true, "Example.ORG": true, "1.2.3.256": true,
		"example.org:8448": false, "1.2.3.4": false, "[::1]": false, "::1": false, "": false, "a..b": false, "-a.org": false,
	} {
		if got := ValidDNSName(name); got != want {
			t.Errorf("ValidDNSName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestSplitServerName(t *testing.T) {
	for _, c := range []struct {
		in   string
		host string
		port int
		ok   bool
	}{
		{"example.org", "example.org", 0, true},
		{"example.org:8448", "example.org", 8448, true},
		{"[::1]:8448", "[::1]", 8448, true},
		{"[::1]", "[::1]", 0, true},
		{"1.2.3.4:443", "1.2.3.4", 443, true},
		{"example.org:0", "", 0, false},
		{":8448", "", 0, false},
	} {
		host, port, ok := SplitServerName(c.in)
		if host != c.host || port != c.port || ok != c.ok {
			t.Errorf("SplitServerName(%q) = %q, %d, %v; want %q, %d, %v", c.in, host, port, ok, c.host, c.port, c.ok)
		}
	}
}

func TestIPLiteral(t *testing.T) {
	for in, want := range map[string]string{
		"1.2.3.4": "1.2.3.4", "[::1]": "::1", "[::ffff:1.2.3.4]": "::ffff:1.2.3.4",
		"example.org": "", "1.2.3.256": "", "01.2.3.4": "", "-1.2.3.4": "", "[1.2.3.4]": "", "[fe80::1%eth0]": "", "[:::]": "",
	} {
		a, ok := IPLiteral(in)
		got := ""
		if ok {
			got = a.String()
		}
		if got != want {
			t.Errorf("IPLiteral(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUserID(t *testing.T) {
	for _, c := range []struct {
		id   string
		want bool
		why  string
	}{
		{"@alice:example.org", true, ""},
		{"@a.b_c=d-e/f+g:example.org:8448", true, "every character of the current grammar"},
		{"@Alice:example.org", true, "historical: upper case is compliant (U+0021-U+007E) and must still be accepted"},
		{"@a!#$%&'*~\"<>:example.org", true, "historical punctuation"},
		{"@a:[::1]:8448", true, ""}, {"@a:1.2.3.4", true, ""},
		{"@a:[:::]", false, "drifted: lookup's copy took it, federation's refused it"},
		{"@a:[::1::1]", false, "drifted"},
		{"@a:-1.2.3.4", false, "drifted: federation's copy took it, lookup's refused it"},
		{"alice", false, ""}, {"@alice", false, ""}, {"@a:", false, ""}, {"@a:x.org:99999", false, ""},
		{"@:x.org", false, "empty localpart: non-compliant"},
		{"@a b:x.org", false, "space: non-compliant"}, {"@a\x00:x.org", false, "NUL"}, {"@a\x7f:x.org", false, "DEL"},
		{"@é:x.org", false, "non-ASCII: non-compliant"},
		{"@a:" + strings.Repeat("b", 260), false, "server name over 255 bytes"},
		{"@a:b:x.org", false, "the first ':' ends the localpart; 'b:x.org' is no server name"},
		{"@" + strings.Repeat("a", 248) + ":x.org", true, "255 bytes"},
		{"@" + strings.Repeat("a", 249) + ":x.org", false, "256 bytes"},
	} {
		if got := ValidUserID(c.id); got != c.want {
			t.Errorf("ValidUserID(%q) = %v, want %v %s", c.id, got, c.want, c.why)
		}
	}
	local, server, ok := SplitUserID("@alice:example.org:8448")
	if local != "alice" || server != "example.org:8448" || !ok {
		t.Errorf("SplitUserID = %q, %q, %v", local, server, ok)
	}
}

// FuzzUserID checks that the grammar never panics and that what it accepts
// splits back into what it was made of.
func FuzzUserID(f *testing.F) {
	for _, s := range []string{"@alice:example.org", "@a:[::1]:8448", "@a:[:::]", "@a:-1.2.3.4", "@a:1.2.3.256:1", "@:x", "@a:x.org:08448"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		local, server, ok := SplitUserID(s)
		if !ok {
			return
		}
		if "@"+local+":"+server != s || !ValidServerName(server) || strings.Contains(local, ":") {
			t.Fatalf("SplitUserID(%q) = %q, %q", s, local, server)
		}
		host, port, ok := SplitServerName(server)
		if !ok || host == "" || port < 0 || port > 65535 {
			t.Fatalf("SplitServerName(%q) = %q, %d, %v", server, host, port, ok)
		}
		if a, isIP := IPLiteral(host); isIP && !a.IsValid() {
			t.Fatalf("IPLiteral(%q) gave an invalid address", host)
		}
	})
}
