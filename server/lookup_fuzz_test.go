package server

import (
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"testing"

	"mxid/lookup"
	"mxid/lookup/threepid"
)

// What a lookup request's addresses go through: the list accessor (with its
// fast path for plain strings), sha256 hashes decoded by table, "none"
// addresses split and canonicalised, and the hand-written answer. No panic;
// a decoded hash is the base64 it came from; a none address comes out
// canonical (its own canonical form, so it hashes like the client's);
// the answer is valid JSON mapping each address, as sent, to its ID.
func FuzzLookupRequest(f *testing.F) {
	for _, s := range bodySeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		`{"addresses":["LJwSazmv46n0hlMlsb_iYxI0_HXEqy_yj6Jm636cdT8","nlo35_T5fzSGZzJApqu8lgIudJvmOQtDaHtr-I4rU7I","!!!",""]}`,
		`{"addresses":["Strauß@Example.COM email","  email","a@b.org  email","447700900001 msisdn","+447700900001 msisdn","a@b.org sms","x@y.z email email"]}`,
		`{"addresses":["Ᏹ@example.org email","\u2028<&>\"\\ email","a\u0000b email"]}`,
		`{"addresses":"x"}`, `{"addresses":[1,"a"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var addresses []string
		if o, err := parseObject(body); err == nil {
			addresses, _ = o.strList("addresses", false)
		}
		addresses = append(addresses, string(body)) // any bytes at all, for the answer
		for _, a := range addresses {
			if h, ok := threepid.DecodeHash(a); ok && base64.RawURLEncoding.EncodeToString(h[:]) != a {
				t.Fatalf("DecodeHash(%q) = %x, which encodes differently", a, h)
			}
			if tp, ok := noneAddress(a); ok {
				again, ok := lookup.Canonical(tp.Medium, tp.Address)
				if !ok || again != tp.Address {
					t.Fatalf("noneAddress(%q) = %+v, whose canonical form is %q, %v", a, tp, again, ok)
				}
				if threepid.Hash(again, tp.Medium, "pepper") != threepid.Hash(tp.Address, tp.Medium, "pepper") {
					t.Fatal("hash differs")
				}
			}
		}
		rec := httptest.NewRecorder()
		writeMappings(rec, addresses, addresses)
		var ans struct {
			Mappings map[string]string `json:"mappings"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil {
			t.Fatalf("answer %q is not JSON: %v", rec.Body.Bytes(), err)
		}
		checkJSONObjectStrict(t, rec.Body.Bytes())
		for _, a := range addresses {
			if a == "" {
				continue
			}
			want := string([]rune(a)) // each byte that is not UTF-8 becomes U+FFFD
			if ans.Mappings[want] != want {
				t.Fatalf("answer %s: %q maps to %q", rec.Body.Bytes(), want, ans.Mappings[want])
			}
		}
	})
}

// checkJSONObjectStrict fails unless body is what the strict decoder
// accepts: mxid's answers are held to the same standard as requests.
func checkJSONObjectStrict(t *testing.T, body []byte) {
	t.Helper()
	if _, err := parseObject(body); err != nil {
		t.Fatalf("answer %q would be refused as a request body: %v", body, err)
	}
}
