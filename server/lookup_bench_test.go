package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"mxid/db"
	"mxid/lookup"
	"mxid/lookup/threepid"
)

// BenchmarkLookupHandler is the server's CPU cost of one POST /v2/lookup
// of 1,000 sha256 addresses (half bound), from the request body to the
// response, without the network (mxid bench-lookup measures that).
func BenchmarkLookupHandler(b *testing.B) {
	e := newLookupEnv(b, func(_ *Config, l *lookup.Config) { l.RatePerAccount.Burst, l.RatePerIP.Burst = 0, 0 })
	var bs []db.Binding
	for i := range 100000 {
		bs = append(bs, db.Binding{Medium: "email", Address: fmt.Sprintf("u%d@example.org", i), MXID: fmt.Sprintf("@u%d:example.org", i)})
	}
	e.store.PutBindings(bs, 10000)
	for _, x := range bs {
		e.svc.Index.Bound(x.Medium, x.Address, x.MXID)
	}
	p := e.svc.Index.Pepper()
	addrs := make([]string, 1000)
	for i := range addrs {
		if i%2 == 0 {
			addrs[i] = threepid.Hash(fmt.Sprintf("u%d@example.org", i*37), "email", p)
		} else {
			addrs[i] = threepid.Hash(fmt.Sprintf("x%d@example.org", i), "email", p)
		}
	}
	body, _ := json.Marshal(map[string]any{"algorithm": "sha256", "pepper": p, "addresses": addrs})
	h := e.srv.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		req := httptest.NewRequest("POST", "/_matrix/identity/v2/lookup", strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+e.token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK || strings.Count(w.Body.String(), `":"@`) != 500 {
			b.Fatalf("%d %s", w.Code, w.Body.String()[:200])
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "addresses/s")
}
