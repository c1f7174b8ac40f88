package db

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Account is what an identity-server access token stands for.
type Account struct {
	UserID    string `json:"user_id"`
	CreatedTS int64  `json:"created_ts"`
	// UsedTS is when the token was last used, recorded at most once a
	// day (TouchAccountToken); 0 until then. Idle tokens are swept.
	UsedTS int64 `json:"used_ts,omitempty"`
}

// LastActive is when the token was last known in use: its last recorded
// use, or its creation.
func (a Account) LastActive() int64 { return max(a.CreatedTS, a.UsedTS) }

// Tokens are stored only as their SHA-256, so a copy of the database does not
// hand out working tokens, and a lookup by hash needs no constant-time
// comparison of the secret itself.
func tokenKey(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// CreateAccountToken records a new access token for userID.
func (s *Store) CreateAccountToken(token, userID string, now time.Time) error {
	if token == "" || userID == "" {
		return errors.New("empty token or user")
	}
	v, err := json.Marshal(Account{UserID: userID, CreatedTS: now.UnixMilli()})
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAccounts).Put(tokenKey(token), v)
	})
}

// AccountByToken finds the account of an access token, or ErrNotFound.
func (s *Store) AccountByToken(token string) (Account, error) {
	var a Account
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAccounts).Get(tokenKey(token))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &a)
	})
	return a, err
}

// TouchAccountToken records that the token was used at nowMS. Touching an
// unknown token is not an error.
func (s *Store) TouchAccountToken(token string, nowMS int64) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccounts)
		v := b.Get(tokenKey(token))
		if v == nil {
			return nil
		}
		var a Account
		if err := json.Unmarshal(v, &a); err != nil {
			return err
		}
		a.UsedTS = max(a.UsedTS, nowMS)
		nv, err := json.Marshal(a)
		if err != nil {
			return err
		}
		return b.Put(tokenKey(token), nv)
	})
}

// DeleteAccountToken ends one token (logout). Deleting an unknown token is
// not an error.
func (s *Store) DeleteAccountToken(token string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAccounts).Delete(tokenKey(token))
	})
}

// termsAcceptance is the value of the terms bucket.
type termsAcceptance struct {
	Accepted map[string]string `json:"accepted"` // policy name -> accepted version
}

// AcceptedTerms returns, for userID, the version of each policy it accepted.
func (s *Store) AcceptedTerms(userID string) (map[string]string, error) {
	out := map[string]string{}
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTerms).Get([]byte(userID))
		if v == nil {
			return nil
		}
		var ta termsAcceptance
		if err := json.Unmarshal(v, &ta); err != nil {
			return err
		}
		for k, ver := range ta.Accepted {
			out[k] = ver
		}
		return nil
	})
	return out, err
}

// AcceptTerms records that userID accepted the given policy versions, keeping
// what it accepted before for other policies.
func (s *Store) AcceptTerms(userID string, accepted map[string]string) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTerms)
		ta := termsAcceptance{Accepted: map[string]string{}}
		if v := b.Get([]byte(userID)); v != nil {
			if err := json.Unmarshal(v, &ta); err != nil {
				return err
			}
			if ta.Accepted == nil {
				ta.Accepted = map[string]string{}
			}
		}
		for k, ver := range accepted {
			ta.Accepted[k] = ver
		}
		v, err := json.Marshal(ta)
		if err != nil {
			return err
		}
		return b.Put([]byte(userID), v)
	})
}

// SweepAccounts deletes the access tokens last active (Account.LastActive)
// before idleBeforeMS (none when it is 0: tokens that never expire), then
// the terms acceptances of users left with no token, and says how many of
// each. A user who registers again accepts the terms again.
func (s *Store) SweepAccounts(idleBeforeMS int64) (tokens, terms int, err error) {
	err = s.update(func(tx *bolt.Tx) error {
		holders := map[string]bool{} // users left with a token
		var err error
		tokens, err = deleteWhere(tx.Bucket(bucketAccounts), "account", func(_ []byte, a Account) bool {
			if a.LastActive() < idleBeforeMS {
				return true
			}
			holders[a.UserID] = true
			return false
		})
		if err != nil {
			return err
		}
		terms, err = deleteWhere(tx.Bucket(bucketTerms), "terms acceptance", func(user []byte, _ termsAcceptance) bool { return !holders[string(user)] })
		if err != nil {
			return err
		}
		if tokens+terms == 0 {
			return errNoChange
		}
		return nil
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	return tokens, terms, err
}
