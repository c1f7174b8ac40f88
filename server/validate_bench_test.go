package server

import (
	"fmt"
	"testing"

	"mxid/mail"
)

// BenchmarkValidateAndBind is one whole email flow over HTTP (requestToken
// in log mode, submitToken, bind): three store commits, each fsynced.
func BenchmarkValidateAndBind(b *testing.B) {
	logMode := mail.DefaultEmailConfig()
	h := newIDHarness(b, idHarnessOpts{email: &logMode})
	tok := h.account("@alice:hs.test")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := h.requestEmail(tok, fmt.Sprintf("u%d@example.org", i), "s", 1, nil)
		sess, err := h.store.GetSession(r.str("sid"))
		if err != nil {
			b.Fatal(err)
		}
		wantReply(b, "submit", h.call("POST", v2Path+"/validate/email/submitToken", tok, map[string]any{"sid": sess.ID, "client_secret": "s", "token": sess.Token}, nil), 200, "")
		wantReply(b, "bind", h.call("POST", v2Path+"/3pid/bind", tok, map[string]any{"sid": sess.ID, "client_secret": "s", "mxid": "@alice:hs.test"}, nil), 200, "")
	}
}
