package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// getRetry GETs url until it answers (the server starts asynchronously).
func getRetry(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServeMetrics runs `mxid serve` with the metrics listener on, sends
// some traffic and scrapes it; the start-up log names each decision.
func TestServeMetrics(t *testing.T) {
	apiPort, metricsPort := freePort(t), freePort(t)
	s := startServe(t, fmt.Sprintf(`data_dir = %q
[http]
listen = "127.0.0.1:%d"
[metrics]
enabled = true
listen = "127.0.0.1:%d"
`, t.TempDir(), apiPort, metricsPort))
	api := fmt.Sprintf("http://127.0.0.1:%d", apiPort)
	for range 3 {
		if code, _ := getRetry(t, api+"/_matrix/identity/versions"); code != 200 {
			t.Fatalf("versions: %d", code)
		}
	}
	getRetry(t, api+"/nowhere")
	code, body := getRetry(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if code != 200 {
		t.Fatalf("scrape: %d", code)
	}
	for _, want := range []string{
		`mxid_http_requests_total{code="200",route="GET /_matrix/identity/versions"} 3`,
		`mxid_http_requests_total{code="404",route="unmatched"} 1`,
		`mxid_bindings 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// The API is not served on the metrics listener, nor metrics on the API.
	if code, _ := getRetry(t, api+"/metrics"); code != 404 {
		t.Errorf("/metrics on the API listener: %d, want 404", code)
	}
	s.stop(t)
	log := s.log.String()
	for _, want := range []string{"tls mode off", "serving metrics", "msg=stopped"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}
