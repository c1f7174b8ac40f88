package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"mxid/db"
	"mxid/server/outbound"
	"mxid/server/signing"
)

func TestMetricsScrape(t *testing.T) {
	store, err := db.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, addr := range []string{"a@example.org", "b@example.org", "c@example.org"} {
		if _, err := store.PutBinding(db.Binding{Medium: "email", Address: addr, MXID: "@u:example.org"}); err != nil {
			t.Fatal(err)
		}
	}
	key, err := signing.NewKey("ed25519:0")
	if err != nil {
		t.Fatal(err)
	}
	policy, err := outbound.New(outbound.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(store)
	s, err := New(DefaultConfig(), Deps{Store: store, Key: key, Policy: policy, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(s.Handler())
	defer api.Close()

	// Some traffic: two good requests, an unknown path, a wrong method, a
	// route with a path parameter, an authenticated route without a token.
	for _, req := range []struct{ method, path string }{
		{"GET", "/_matrix/identity/versions"},
		{"GET", "/_matrix/identity/versions"},
		{"GET", "/_matrix/identity/v2/nope"},
		{"DELETE", "/_matrix/identity/versions"},
		{"GET", "/_matrix/identity/v2/pubkey/ed25519:0"},
		{"GET", "/_matrix/identity/v2/account"},
	} {
		r, _ := http.NewRequest(req.method, api.URL+req.path, nil)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// What lookup and mail will report through the hooks.
	m.Lookup("local", "found", 2*time.Millisecond)
	m.Lookup("ldap", "timeout", time.Second)
	m.Delivery("email", "sent")
	m.Delivery("sms", "failed")
	m.SetIndexSize(func() int { return 42 })
	m.SetQueueDepth(func() int { return 1 })
	m.SetQueueDepth(func() int { return 7 }) // set again: replaced, not registered twice
	m.SetPepperAge(func() time.Duration { return 90 * time.Minute })
	m.SetReplica("db1-4242", 4242)
	m.SetLeader(func() bool { return true })
	m.SetChangeLag(func() int64 { return 3 }, func() float64 { return 0.25 })
	m.claimed(2)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`mxid_http_requests_total{code="200",route="GET /_matrix/identity/versions"} 2`,
		`mxid_http_requests_total{code="404",route="unmatched"} 1`,
		`mxid_http_requests_total{code="405",route="unmatched"} 1`,
		`mxid_http_requests_total{code="200",route="GET /_matrix/identity/v2/pubkey/{keyId}"} 1`,
		`mxid_http_requests_total{code="401",route="GET /_matrix/identity/v2/account"} 1`,
		`mxid_http_request_duration_seconds_count{route="GET /_matrix/identity/versions"} 2`,
		`mxid_lookups_total{outcome="found",source="local"} 1`,
		`mxid_lookups_total{outcome="timeout",source="ldap"} 1`,
		`mxid_lookup_duration_seconds_count{source="ldap"} 1`,
		`mxid_deliveries_total{channel="email",outcome="sent"} 1`,
		`mxid_deliveries_total{channel="sms",outcome="failed"} 1`,
		`mxid_bindings 3`,
		`mxid_lookup_index_entries 42`,
		`mxid_onbind_queue_depth 7`,
		`mxid_lookup_pepper_age_seconds 5400`,
		`mxid_replica_info{pid="4242",replica="db1-4242"} 1`,
		`mxid_replica_leader 1`,
		`mxid_replica_lag_changes 3`,
		`mxid_replica_lag_seconds 0.25`,
		`mxid_onbind_claims_total 2`,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if !strings.Contains(body, "mxid_store_size_bytes ") || strings.Contains(body, "mxid_store_size_bytes 0\n") {
		t.Error("scrape lacks a non-zero mxid_store_size_bytes")
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", body)
	}
}

// Metrics off: every hook is a no-op on a nil *Metrics.
func TestMetricsNil(t *testing.T) {
	var m *Metrics
	m.Lookup("local", "found", time.Millisecond)
	m.Delivery("email", "sent")
	m.SetIndexSize(func() int { return 1 })
	m.SetPepperAge(func() time.Duration { return 0 })
	m.SetQueueDepth(func() int { return 1 })
	m.SetReplica("r", 1)
	m.SetLeader(func() bool { return true })
	m.SetChangeLag(func() int64 { return 0 }, func() float64 { return 0 })
	m.claimed(1)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 404 {
		t.Errorf("nil metrics handler: %d", rec.Code)
	}
}
