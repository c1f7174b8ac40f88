package outbound

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func testPolicy(t *testing.T, mutate func(*Config)) *Policy {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Timeout = 3 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A real listener on 127.0.0.1: every refused destination below would reach
// it (or another host) if the policy let the dial happen.
func TestPolicyRefusesSpecialDestinations(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))

	targets := []string{"127.0.0.1", "127.0.0.2", "10.0.0.1", "169.254.169.254", "0.0.0.0", "[::]", "[::1]", "[::ffff:127.0.0.1]", "192.168.1.1", "100.64.0.1", "[fe80::1]", "[64:ff9b::7f00:1]", "224.0.0.1"}
	refused := testPolicy(t, nil).Client(ClientOptions{})
	for _, host := range targets {
		_, err := refused.Get("http://" + host + ":" + port + "/")
		if !errors.Is(err, ErrBlocked) {
			t.Errorf("GET %s: err = %v, want ErrBlocked", host, err)
		}
	}
	// A name that resolves to loopback is refused too: the check is on the
	// address actually dialled.
	if _, err := refused.Get("http://localhost:" + port + "/"); !errors.Is(err, ErrBlocked) {
		t.Errorf("GET localhost: err = %v, want ErrBlocked", err)
	}

	// Allowed by CIDR, loopback is reachable.
	allowed := testPolicy(t, func(c *Config) { c.AllowCIDRs = []string{"127.0.0.0/8"} }).Client(ClientOptions{})
	if _, err := allowed.Get("http://127.0.0.2:" + port + "/"); errors.Is(err, ErrBlocked) {
		t.Errorf("127.0.0.2 blocked although 127.0.0.0/8 is allowed: %v", err)
	}
	for _, host := range []string{"127.0.0.1", "[::ffff:127.0.0.1]"} {
		resp, err := allowed.Get("http://" + host + ":" + port + "/")
		if err != nil {
			t.Errorf("GET %s with 127.0.0.0/8 allowed: %v", host, err)
			continue
		}
		resp.Body.Close()
	}
	// Only that range: 0.0.0.0 stays blocked.
	if _, err := allowed.Get("http://0.0.0.0:" + port + "/"); !errors.Is(err, ErrBlocked) {
		t.Errorf("GET 0.0.0.0 with only loopback allowed: %v", err)
	}
	// A pinned IP-literal base URL is allowed for exactly that address and port.
	pinned := testPolicy(t, func(c *Config) { c.Pins = map[string]string{"hs.test": srv.URL} }).Client(ClientOptions{})
	resp, err := pinned.Get(srv.URL + "/")
	if err != nil {
		t.Fatalf("GET pinned: %v", err)
	}
	resp.Body.Close()
	if _, err := pinned.Get("http://127.0.0.2:" + port + "/"); !errors.Is(err, ErrBlocked) {
		t.Errorf("pinning one address allowed another: %v", err)
	}
}

func TestAllowedTable(t *testing.T) {
	p := testPolicy(t, nil)
	for s, want := range map[string]bool{
		"8.8.8.8": true, "2001:4860:4860::8888": true, "1.1.1.1": true,
		"127.0.0.1": false, "0.0.0.0": false, "0.1.2.3": false, "::": false, "::1": false,
		"::ffff:10.0.0.1": false, "fc00::1": false, "2001:db8::1": false, "2002:7f00:1::": false,
		"240.0.0.1": false, "255.255.255.255": false, "198.18.0.1": false,
	} {
		if got := p.Allowed(netip.MustParseAddr(s)); got != want {
			t.Errorf("Allowed(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestResponseSizeCap(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := 4096
		if r.URL.Path == "/big" {
			n = 10 << 20
		}
		if r.URL.Query().Get("length") == "1" {
			w.Header().Set("Content-Length", "10485760")
		}
		w.Write([]byte(strings.Repeat("x", n)))
	}))
	defer srv.Close()
	c := testPolicy(t, func(c *Config) { c.AllowCIDRs = []string{"127.0.0.1/32"}; c.MaxResponseBytes = 64 << 10 }).Client(ClientOptions{})
	resp, err := c.Get(srv.URL + "/small")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(body) != 4096 {
		t.Errorf("small body: %d bytes, %v", len(body), err)
	}
	resp, err = c.Get(srv.URL + "/big")
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.Is(err, ErrTooLarge) || len(body) > 64<<10 {
		t.Errorf("big body: read %d bytes, err %v; want ErrTooLarge at the cap", len(body), err)
	}
	if _, err := c.Get(srv.URL + "/big?length=1"); !errors.Is(err, ErrTooLarge) {
		t.Errorf("announced big body: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AllowCIDRs = []string{"10.0.0.0/33"}
	cfg.Pins = map[string]string{"hs": "ftp://x"}
	cfg.DNSServer = "resolver"
	cfg.Timeout = 0
	if errs := cfg.Validate(); len(errs) != 4 {
		t.Errorf("Validate found %d problems, want 4: %v", len(errs), errs)
	}
}
