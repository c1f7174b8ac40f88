package server

import (
	"strings"
	"testing"
)

// The name homeservers verify mxid's signatures under is what users type
// as their identity server: public_base_url's host, and its port unless it
// is the scheme's default.
func TestIdentityServerNameAndWarnings(t *testing.T) {
	tests := []struct {
		serverName, publicBaseURL string
		want                      string // IdentityServerName
		warn                      bool
	}{
		{"id.example.org", "https://id.example.org", "id.example.org", false},
		{"id.example.org", "https://id.example.org/", "id.example.org", false},
		{"id.example.org", "https://id.example.org:443", "id.example.org", false},
		{"ID.Example.org", "https://id.EXAMPLE.org", "id.example.org", false},
		{"id.example.org:8443", "https://id.example.org:8443", "id.example.org:8443", false},
		{"id.example.org", "https://id.example.org:8443", "id.example.org:8443", true},
		{"id.example.org:443", "https://id.example.org", "id.example.org", true},
		{"localhost", "http://localhost:18290", "localhost:18290", true},
		{"localhost:18290", "http://localhost:18290", "localhost:18290", false},
		{"localhost", "http://localhost", "localhost", false},
		{"example.org", "https://id.example.org", "id.example.org", true},
		{"[::1]:8090", "http://[::1]:8090", "[::1]:8090", false},
		{"127.0.0.1:8090", "http://127.0.0.1:8090", "127.0.0.1:8090", false},
	}
	for _, tc := range tests {
		c := DefaultConfig()
		c.ServerName, c.PublicBaseURL = tc.serverName, tc.publicBaseURL
		got, ok := c.IdentityServerName()
		if !ok || got != tc.want {
			t.Errorf("%s: IdentityServerName = %q, %v; want %q", tc.publicBaseURL, got, ok, tc.want)
		}
		warnings := c.Warnings()
		if (len(warnings) > 0) != tc.warn {
			t.Errorf("server_name %q, public_base_url %s: warnings %q, want warning=%v", tc.serverName, tc.publicBaseURL, warnings, tc.warn)
			continue
		}
		if tc.warn {
			w := warnings[0]
			for _, part := range []string{"homeservers verify signatures under the name users type as their identity server, \"" + tc.want + "\"",
				"mxid signs as \"" + tc.serverName + "\"", "set server_name = \"" + tc.want + "\""} {
				if !strings.Contains(w, part) {
					t.Errorf("warning %q lacks %q", w, part)
				}
			}
		}
	}
}
