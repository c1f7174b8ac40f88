package db

import (
	"errors"
	"testing"
)

func TestSessions(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	create := func(id string, ts int64) func(*Session) (Session, bool, error) {
		return func(ex *Session) (Session, bool, error) {
			if ex != nil && ex.ID == id {
				return *ex, false, nil
			}
			return Session{ID: id, Medium: "email", Address: "a@example.org", ClientSecret: "cs", Token: "t", ModifiedTS: ts}, true, nil
		}
	}
	a, err := s.RequestSession("email", "a@example.org", "cs", create("sidA", 1))
	if err != nil || a.ID != "sidA" {
		t.Fatalf("create: %+v %v", a, err)
	}
	// Same 3PID and secret: decide sees the existing session.
	again, err := s.RequestSession("email", "a@example.org", "cs", create("sidA", 2))
	if err != nil || again.ID != "sidA" || again.ModifiedTS != 1 {
		t.Fatalf("existing: %+v %v", again, err)
	}
	// A replacement deletes the old session and moves the index.
	b, err := s.RequestSession("email", "a@example.org", "cs", create("sidB", 3))
	if err != nil || b.ID != "sidB" {
		t.Fatalf("replace: %+v %v", b, err)
	}
	if _, err := s.GetSession("sidA"); !errors.Is(err, ErrNotFound) {
		t.Errorf("replaced session still there: %v", err)
	}
	// A mismatching session is refused.
	if _, err := s.RequestSession("email", "a@example.org", "cs", func(*Session) (Session, bool, error) {
		return Session{ID: "sidC", Medium: "email", Address: "other@example.org", ClientSecret: "cs"}, true, nil
	}); err == nil {
		t.Error("a session for another 3PID was stored under this one")
	}
	// UpdateSession writes only when changed, and not the identity fields.
	if _, err := s.UpdateSession("sidB", func(x *Session) (bool, error) { x.Failures = 3; return true, nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetSession("sidB"); got.Failures != 3 {
		t.Errorf("failures %d", got.Failures)
	}
	if _, err := s.UpdateSession("sidB", func(x *Session) (bool, error) { x.Address = "x@example.org"; return true, nil }); err == nil {
		t.Error("a session's address was changed")
	}
	if _, err := s.UpdateSession("nope", func(*Session) (bool, error) { return false, nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing session: %v", err)
	}
	// Sweep deletes the session and its index entry.
	s.RequestSession("msisdn", "447700900001", "cs", func(*Session) (Session, bool, error) {
		return Session{ID: "sidD", Medium: "msisdn", Address: "447700900001", ClientSecret: "cs", ModifiedTS: 100}, true, nil
	})
	n, err := s.SweepSessions(func(x Session) bool { return x.ModifiedTS < 50 })
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if c, _ := s.CountSessions(); c != 1 {
		t.Errorf("%d sessions left", c)
	}
	fresh, _ := s.RequestSession("email", "a@example.org", "cs", func(ex *Session) (Session, bool, error) {
		if ex != nil {
			t.Error("the swept session's index entry survived")
		}
		return Session{ID: "sidE", Medium: "email", Address: "a@example.org", ClientSecret: "cs"}, true, nil
	})
	if fresh.ID != "sidE" {
		t.Errorf("after sweep: %+v", fresh)
	}
}

func TestBindOnce(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := Binding{Medium: "email", Address: "a@example.org", MXID: "@a:hs", TS: 10, NotBefore: 10, NotAfter: 20}
	if got, changed, _, err := s.Bind(b, 5, nil); err != nil || !changed || got != b {
		t.Fatalf("first: %+v %v %v", got, changed, err)
	}
	later := b
	later.TS = 11
	if got, changed, _, _ := s.Bind(later, 5, nil); changed || got != b {
		t.Errorf("same session again: %+v changed=%v", got, changed)
	}
	if got, changed, _, _ := s.Bind(later, 11, nil); !changed || got != later {
		t.Errorf("newer validation: %+v changed=%v", got, changed)
	}
	other := later
	other.MXID = "@b:hs"
	if _, changed, _, _ := s.Bind(other, 0, nil); !changed {
		t.Error("a new owner did not replace the binding")
	}
}
