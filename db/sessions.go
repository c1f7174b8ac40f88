package db

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Session is a 3PID validation session. Times are Unix milliseconds. The
// store keeps sessions; the rules (expiry, send_attempt, wrong-token limit)
// belong to the caller, which applies them inside RequestSession and
// UpdateSession so that every read-check-write is one transaction.
type Session struct {
	ID           string `json:"sid"`
	Medium       string `json:"medium"`
	Address      string `json:"address"` // canonical form
	ClientSecret string `json:"client_secret"`
	Token        string `json:"token"`
	// Failures counts wrong tokens submitted since Token was issued.
	Failures int `json:"failures"`
	// Attempted says a message was sent (or is being sent) for
	// SendAttempt, the highest send_attempt that caused a send.
	Attempted   bool  `json:"attempted"`
	SendAttempt int64 `json:"send_attempt"`
	// UndoAttempted and UndoSendAttempt are what Attempted and SendAttempt
	// were before the send under way, restored if it fails.
	UndoAttempted   bool   `json:"undo_attempted"`
	UndoSendAttempt int64  `json:"undo_send_attempt"`
	NextLink        string `json:"next_link,omitempty"`
	CreatedTS       int64  `json:"created_ts"`
	// ModifiedTS is the last modification (creation, a real resend,
	// validation): sessions expire a fixed time after it.
	ModifiedTS int64 `json:"modified_ts"`
	// ValidatedTS is when the token was accepted; 0 until then.
	ValidatedTS int64 `json:"validated_ts,omitempty"`
}

func (s *Session) check() error {
	if s.ID == "" || s.Medium == "" || s.Address == "" || s.ClientSecret == "" {
		return errors.New("session with empty sid, medium, address or client_secret")
	}
	for _, v := range []string{s.Medium, s.Address, s.ClientSecret} {
		if strings.IndexByte(v, 0) >= 0 {
			return errors.New("session field contains NUL")
		}
	}
	return nil
}

// errNoChange rolls a transaction back when the caller changed nothing, so
// no commit (and no fsync) is paid for a pure read.
var errNoChange = errors.New("no change")

func getSession(tx *bolt.Tx, sid string) (*Session, error) {
	v := tx.Bucket(bucketSessions).Get([]byte(sid))
	if v == nil {
		return nil, nil
	}
	var sess Session
	if err := json.Unmarshal(v, &sess); err != nil {
		return nil, fmt.Errorf("decode session: %w", err)
	}
	return &sess, nil
}

func putSession(tx *bolt.Tx, sess *Session) error {
	if err := sess.check(); err != nil {
		return err
	}
	v, err := json.Marshal(sess)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketSessions).Put([]byte(sess.ID), v)
}

func deleteSession(tx *bolt.Tx, sess *Session) error {
	idx := tx.Bucket(bucketSessionsBy3PID)
	k := key(sess.Medium, sess.Address, sess.ClientSecret)
	if bytes.Equal(idx.Get(k), []byte(sess.ID)) {
		if err := idx.Delete(k); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketSessions).Delete([]byte(sess.ID))
}

// RequestSession runs decide in one write transaction with the session
// stored for (medium, address, clientSecret), or nil when there is none.
// decide returns the session to store and whether to store it; a session
// with a different ID replaces the existing one (which is deleted). An
// error from decide aborts the transaction and is returned as is. The
// returned Session is what is stored afterwards (or the existing one when
// nothing was written).
func (s *Store) RequestSession(medium, address, clientSecret string, decide func(existing *Session) (next Session, write bool, err error)) (Session, error) {
	var out Session
	err := s.update(func(tx *bolt.Tx) error {
		idx := tx.Bucket(bucketSessionsBy3PID)
		k := key(medium, address, clientSecret)
		var existing *Session
		if sid := idx.Get(k); sid != nil {
			var err error
			if existing, err = getSession(tx, string(sid)); err != nil {
				return err
			}
		}
		var arg *Session
		if existing != nil {
			cp := *existing
			arg = &cp
		}
		next, write, err := decide(arg)
		if err != nil {
			return err
		}
		if !write {
			if existing != nil {
				out = *existing
			}
			return errNoChange
		}
		if err := CheckRequested(next, medium, address, clientSecret); err != nil {
			return err
		}
		if existing != nil && existing.ID != next.ID {
			if err := deleteSession(tx, existing); err != nil {
				return err
			}
		}
		if existing == nil || existing.ID != next.ID {
			if tx.Bucket(bucketSessions).Get([]byte(next.ID)) != nil {
				return errors.New("session id collision")
			}
		}
		if err := putSession(tx, &next); err != nil {
			return err
		}
		out = next
		return idx.Put(k, []byte(next.ID))
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	return out, err
}

// UpdateSession runs fn in one write transaction on the session sid; fn
// reports whether it changed the session (only then is it written). A
// missing session is ErrNotFound; an error from fn aborts and is returned.
// The returned Session is the one stored afterwards.
func (s *Store) UpdateSession(sid string, fn func(sess *Session) (changed bool, err error)) (Session, error) {
	var out Session
	err := s.update(func(tx *bolt.Tx) error {
		sess, err := getSession(tx, sid)
		if err != nil {
			return err
		}
		if sess == nil {
			return ErrNotFound
		}
		before := sess.Medium + "\x00" + sess.Address + "\x00" + sess.ClientSecret + "\x00" + sess.ID
		changed, err := fn(sess)
		if err != nil {
			return err
		}
		out = *sess
		if !changed {
			return errNoChange
		}
		if sess.Medium+"\x00"+sess.Address+"\x00"+sess.ClientSecret+"\x00"+sess.ID != before {
			return errors.New("a session's sid, 3PID and client_secret cannot change")
		}
		return putSession(tx, sess)
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	return out, err
}

// GetSession returns the session sid, or ErrNotFound.
func (s *Store) GetSession(sid string) (Session, error) {
	var out Session
	err := s.view(func(tx *bolt.Tx) error {
		sess, err := getSession(tx, sid)
		if err != nil {
			return err
		}
		if sess == nil {
			return ErrNotFound
		}
		out = *sess
		return nil
	})
	return out, err
}

// CountSessions returns the number of stored sessions.
func (s *Store) CountSessions() (int, error) {
	n := 0
	err := s.view(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketSessions).Stats().KeyN
		return nil
	})
	return n, err
}

// SweepSessions deletes every session for which expired returns true, with
// its index entry. It finds them in a read transaction and deletes them in
// small write transactions (checking again), so writers are never held up
// for long. It returns how many were deleted.
func (s *Store) SweepSessions(expired func(Session) bool) (int, error) {
	var victims []string
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
			var sess Session
			if err := json.Unmarshal(v, &sess); err != nil {
				return fmt.Errorf("decode session: %w", err)
			}
			if expired(sess) {
				victims = append(victims, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	deleted := 0
	const chunk = 1000
	for start := 0; start < len(victims); start += chunk {
		end := min(start+chunk, len(victims))
		err := s.update(func(tx *bolt.Tx) error {
			for _, sid := range victims[start:end] {
				sess, err := getSession(tx, sid)
				if err != nil {
					return err
				}
				if sess == nil || !expired(*sess) {
					continue
				}
				if err := deleteSession(tx, sess); err != nil {
					return err
				}
				deleted++
			}
			return nil
		})
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}
