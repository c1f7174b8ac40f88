package federation

import (
	"errors"
	"testing"
)

func TestParseXMatrix(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want XMatrix
	}{
		{`X-Matrix origin=hs.example,key="ed25519:a",sig="c2ln"`, XMatrix{Origin: "hs.example", Key: "ed25519:a", Sig: "c2ln"}},
		{`X-Matrix origin="hs.example:8448", destination="id.example" , key="ed25519:a",sig="c2ln"`, XMatrix{Origin: "hs.example:8448", Destination: "id.example", Key: "ed25519:a", Sig: "c2ln"}},
		{`x-matrix ORIGIN=hs.example,Key=ed25519:a,SIG=c2ln,extra="a,b\"c"`, XMatrix{Origin: "hs.example", Key: "ed25519:a", Sig: "c2ln"}},
	} {
		got, err := ParseXMatrix(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseXMatrix(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{
		``, `Bearer x`, `X-Matrix`, `X-Matrix origin=hs.example,key="ed25519:a"`, `X-Matrix origin=hs.example,key="ed25519:a",sig="x`,
		`X-Matrix origin="hs example",key="ed25519:a",sig="x"`, `X-Matrix origin=hs.example,key="rsa:a",sig="x"`,
		`X-Matrix origin=hs.example key=ed25519:a sig=x`, `X-Matrix =x`,
	} {
		if got, err := ParseXMatrix(in); !errors.Is(err, ErrMalformedAuth) {
			t.Errorf("ParseXMatrix(%q) = %+v, %v; want ErrMalformedAuth", in, got, err)
		}
	}
}
