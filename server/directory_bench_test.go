package server

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"mxid/lookup"
	"mxid/lookup/slapdtest"
)

// BenchmarkDirectorySearchHTTP times a search through mxid (whoami
// remembered, the homeserver's own search, the directory's 3,000 entries,
// the merge) and the same search asked of the homeserver stand-in
// directly: the difference is what mxid adds to the homeserver's round
// trip.
func BenchmarkDirectorySearchHTTP(b *testing.B) {
	d := slapdtest.Start(b, dirSeed())
	e := newDirEnvOn(b, d, openBolt(b), newClientHomeserver(b), func(c *lookup.DirectoryConfig) {
		c.RatePerUser.Burst, c.RatePerIP.Burst = 0, 0
	})
	e.sync(b)
	body := []byte(`{"search_term":"ali acc","limit":10}`)
	for _, c := range []struct{ name, url string }{
		{"homeserver", e.hs.URL + searchPath},
		{"mxid", e.http.URL + searchPath},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, c.url, bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+goodToken)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("%s: %d", c.url, resp.StatusCode)
				}
			}
		})
	}
}
