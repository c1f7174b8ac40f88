package storetest

import (
	"fmt"
	"sync/atomic"
	"testing"

	"mxid/db"
)

// Bench measures the writes on the request path, one store (from open) for
// all: Bind as the server does it (binding, onbind job, and the change log
// where there is one), from one goroutine and from several; RequestSession
// creating a session; and BoundMXID, the read of a v1 or plain lookup.
func Bench(b *testing.B, open func(b *testing.B) Store) {
	s := open(b)
	if _, err := s.PutBinding(db.Binding{Medium: "email", Address: "seed@example.org", MXID: "@seed:hs.test"}); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	next := func() string { return fmt.Sprintf("u%d@example.org", n.Add(1)) }
	onbind := func([]db.Invite) (string, []byte, error) { return "hs.test", []byte(`{"mxid":"@u:hs.test"}`), nil }
	bind := func(b *testing.B) {
		bd := db.Binding{Medium: "email", Address: next(), MXID: "@u:hs.test", TS: 1, NotBefore: 1, NotAfter: 2}
		if _, _, _, err := s.Bind(bd, 0, onbind); err != nil {
			b.Fatal(err)
		}
	}
	request := func(b *testing.B) {
		addr := next()
		_, err := s.RequestSession("email", addr, "secret", func(ex *db.Session) (db.Session, bool, error) {
			return db.Session{ID: addr, Medium: "email", Address: addr, ClientSecret: "secret", Token: "123456", CreatedTS: 1, ModifiedTS: 1}, true, nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	sequential := func(op func(*testing.B)) func(*testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				op(b)
			}
		}
	}
	parallel := func(op func(*testing.B)) func(*testing.B) {
		return func(b *testing.B) {
			b.SetParallelism(4) // 4 goroutines per core: requests waiting on commits
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					op(b)
				}
			})
		}
	}
	b.Run("Bind", sequential(bind))
	b.Run("BindParallel", parallel(bind))
	b.Run("RequestSession", sequential(request))
	b.Run("RequestSessionParallel", parallel(request))
	b.Run("BoundMXID", sequential(func(b *testing.B) {
		if _, ok, err := s.BoundMXID("email", "seed@example.org"); err != nil || !ok {
			b.Fatal(ok, err)
		}
	}))
}
