package db

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// What the operator's tools read and remove (mxid admin): a user's
// bindings, the sessions and invites of a 3PID, invites by sender, and the
// erasure of everything mxid holds about a user. Each removal writes its
// audit entries in the same transaction.

// Erased is what EraseUser removed.
type Erased struct {
	// Bindings are the user's bindings that were removed.
	Bindings []Binding `json:"bindings"`
	// InvitesSent counts the invites the user had sent that were still
	// pending (not yet carried to an invitee's homeserver).
	InvitesSent int `json:"invites_sent"`
	// InvitesReceived counts the invites addressed to the erased 3PIDs
	// (pending, on their way or delivered).
	InvitesReceived int `json:"invites_received"`
	// Deliveries counts the queued onbind deliveries for the user.
	Deliveries int `json:"deliveries"`
	// Tokens counts the user's access tokens; Terms is 1 when its terms
	// acceptance was removed.
	Tokens int `json:"tokens"`
	Terms  int `json:"terms"`
	// Sessions counts the validation sessions of the erased 3PIDs.
	Sessions int `json:"sessions"`
}

// Empty reports whether nothing was removed.
func (e Erased) Empty() bool {
	return len(e.Bindings)+e.InvitesSent+e.InvitesReceived+e.Deliveries+e.Tokens+e.Terms+e.Sessions == 0
}

// String says what was removed in counts, never an address: "3 bindings,
// 2 invites sent, 1 token" ("nothing" when empty).
func (e Erased) String() string {
	var parts []string
	add := func(n int, one, many string) {
		switch {
		case n == 1:
			parts = append(parts, "1 "+one)
		case n > 1:
			parts = append(parts, fmt.Sprintf("%d %s", n, many))
		}
	}
	add(len(e.Bindings), "binding", "bindings")
	add(e.InvitesSent, "pending invite sent", "pending invites sent")
	add(e.InvitesReceived, "invite received", "invites received")
	add(e.Deliveries, "queued delivery", "queued deliveries")
	add(e.Tokens, "access token", "access tokens")
	add(e.Terms, "terms acceptance", "terms acceptances")
	add(e.Sessions, "validation session", "validation sessions")
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// InviteFilter selects invites: those of one 3PID (Medium and Address),
// or those one user sent (Sender), or all when both are empty.
type InviteFilter struct {
	Medium, Address string
	Sender          string
}

func (f InviteFilter) match(inv Invite) bool {
	return (f.Medium == "" || inv.Medium == f.Medium && inv.Address == f.Address) && (f.Sender == "" || inv.Sender == f.Sender)
}

// SortInvites orders invites as both backends list them: by creation
// time, then token.
func SortInvites(invs []Invite) {
	slices.SortFunc(invs, func(a, b Invite) int {
		return cmp.Or(cmp.Compare(a.CreatedTS, b.CreatedTS), strings.Compare(a.Token, b.Token))
	})
}

// JobSubject is what an onbind delivery is about: the medium, address and
// Matrix ID of its body (the spec's association), "" where it has none.
func JobSubject(body []byte) (medium, address, mxid string) {
	var b struct {
		Medium  string `json:"medium"`
		Address string `json:"address"`
		MXID    string `json:"mxid"`
	}
	if json.Unmarshal(body, &b) != nil {
		return "", "", ""
	}
	return b.Medium, b.Address, b.MXID
}

// JobOf reports whether a delivery's body is for mxid (when set) or about
// the 3PID medium/address (when set).
func JobOf(body []byte, mxid, medium, address string) bool {
	m, a, x := JobSubject(body)
	return mxid != "" && x == mxid || medium != "" && m == medium && a == address
}

// prefixKeys returns the keys of bucket that start with prefix.
func prefixKeys(b *bolt.Bucket, prefix []byte) [][]byte {
	var out [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		out = append(out, bytes.Clone(k))
	}
	return out
}

// bindingsOf lists mxid's bindings from the reverse index.
func bindingsOf(tx *bolt.Tx, mxid string) ([]Binding, error) {
	prefix := append(key(mxid), 0)
	var out []Binding
	for _, k := range prefixKeys(tx.Bucket(bucketBindingsByMXID), prefix) {
		medium, address, ok := bytes.Cut(k[len(prefix):], []byte{0})
		if !ok {
			return nil, fmt.Errorf("corrupt reverse index key %q", k)
		}
		v := tx.Bucket(bucketBindings).Get(key(string(medium), string(address)))
		if v == nil {
			continue
		}
		var b Binding
		if err := json.Unmarshal(v, &b); err != nil {
			return nil, fmt.Errorf("decode binding: %w", err)
		}
		if b.MXID == mxid {
			out = append(out, b)
		}
	}
	return out, nil
}

// BindingsOf returns the bindings of mxid, by medium and address.
func (s *Store) BindingsOf(mxid string) ([]Binding, error) {
	var out []Binding
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = bindingsOf(tx, mxid)
		return err
	})
	return out, err
}

// sessionsOf lists the sessions of a 3PID (every client_secret).
func sessionsOf(tx *bolt.Tx, medium, address string) ([]Session, error) {
	prefix := append(key(medium, address), 0)
	var out []Session
	idx := tx.Bucket(bucketSessionsBy3PID)
	for _, k := range prefixKeys(idx, prefix) {
		sess, err := getSession(tx, string(idx.Get(k)))
		if err != nil {
			return nil, err
		}
		if sess != nil {
			out = append(out, *sess)
		}
	}
	return out, nil
}

// SessionsOf returns the validation sessions of a 3PID (canonical
// address), oldest first.
func (s *Store) SessionsOf(medium, address string) ([]Session, error) {
	var out []Session
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = sessionsOf(tx, medium, address)
		return err
	})
	slices.SortFunc(out, func(a, b Session) int {
		return cmp.Or(cmp.Compare(a.CreatedTS, b.CreatedTS), strings.Compare(a.ID, b.ID))
	})
	return out, err
}

// invites lists the invites f selects (a 3PID's through its index).
func invites(tx *bolt.Tx, f InviteFilter) ([]Invite, error) {
	var out []Invite
	decode := func(v []byte) error {
		var inv Invite
		if err := json.Unmarshal(v, &inv); err != nil {
			return fmt.Errorf("decode invite: %w", err)
		}
		if f.match(inv) {
			out = append(out, inv)
		}
		return nil
	}
	if f.Medium != "" {
		prefix := append(key(f.Medium, f.Address), 0)
		for _, k := range prefixKeys(tx.Bucket(bucketInvitesBy3PID), prefix) {
			if v := tx.Bucket(bucketInvites).Get(k[len(prefix):]); v != nil {
				if err := decode(v); err != nil {
					return nil, err
				}
			}
		}
		return out, nil
	}
	err := tx.Bucket(bucketInvites).ForEach(func(_, v []byte) error { return decode(v) })
	return out, err
}

// Invites returns the invites f selects, pending, queued or delivered,
// by creation time.
func (s *Store) Invites(f InviteFilter) ([]Invite, error) {
	var out []Invite
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		out, err = invites(tx, f)
		return err
	})
	SortInvites(out)
	return out, err
}

// withdrawInvites deletes the pending invites sender sent (those no
// delivery carries yet; delivered ones and those on their way stay).
func withdrawInvites(tx *bolt.Tx, sender string) (int, error) {
	sent, err := invites(tx, InviteFilter{Sender: sender})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, inv := range sent {
		if inv.QueuedJob != 0 || inv.DeliveredTS != 0 {
			continue
		}
		if err := deleteInvite(tx, inv); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// WithdrawInvites deletes the invites sender sent that are still pending
// and, in the same transaction, writes the audit entries audit returns for
// how many there were (none when it returns none). Delivered invites, and
// those on their way to an invitee's homeserver, stay.
func (s *Store) WithdrawInvites(sender string, audit func(n int) []AuditEntry) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		if n, err = withdrawInvites(tx, sender); err != nil {
			return err
		}
		return appendAudit(tx, audit(n)...)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// Unbind is DeleteBinding that writes audit to the audit log in the same
// transaction when it removes the binding.
func (s *Store) Unbind(medium, address, mxid string, audit AuditEntry) (bool, error) {
	if err := CheckAuditEntry(audit); err != nil {
		return false, err
	}
	deleted := false
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		if deleted, err = deleteBinding(tx, medium, address, mxid); err != nil || !deleted {
			return err
		}
		return appendAudit(tx, audit)
	})
	return deleted, err
}

// EraseUser removes, in one transaction, everything the store holds about
// mxid: its bindings and, for each of their 3PIDs, what Erase3PID removes;
// the pending invites it sent; its queued onbind deliveries; its access
// tokens and terms acceptance. Then it writes the audit entries audit
// returns for what was removed. Erasing again removes nothing (audit is
// still called). The LDAP directory snapshot is not touched: it is the
// directory's copy.
func (s *Store) EraseUser(mxid string, audit func(Erased) []AuditEntry) (Erased, error) {
	var out Erased
	err := s.update(func(tx *bolt.Tx) error {
		out = Erased{}
		bs, err := bindingsOf(tx, mxid)
		if err != nil {
			return err
		}
		for _, b := range bs {
			if err := erase3PID(tx, b.Medium, b.Address, mxid, &out); err != nil {
				return err
			}
		}
		if out.InvitesSent, err = withdrawInvites(tx, mxid); err != nil {
			return err
		}
		n, err := deleteJobs(tx, mxid, "", "")
		if err != nil {
			return err
		}
		out.Deliveries += n
		if out.Tokens, err = deleteTokensOf(tx, mxid); err != nil {
			return err
		}
		if tx.Bucket(bucketTerms).Get([]byte(mxid)) != nil {
			if err := tx.Bucket(bucketTerms).Delete([]byte(mxid)); err != nil {
				return err
			}
			out.Terms = 1
		}
		return appendAudit(tx, audit(out)...)
	})
	if err != nil {
		return Erased{}, err
	}
	return out, nil
}

// Erase3PID removes, in one transaction, everything the store holds about a
// 3PID (canonical address): its binding, whoever holds it, the invites
// addressed to it (pending, on their way or delivered), the onbind
// deliveries about it and its validation sessions; then it writes the
// audit entries audit returns. It is idempotent as EraseUser is.
func (s *Store) Erase3PID(medium, address string, audit func(Erased) []AuditEntry) (Erased, error) {
	var out Erased
	err := s.update(func(tx *bolt.Tx) error {
		out = Erased{}
		if err := erase3PID(tx, medium, address, "", &out); err != nil {
			return err
		}
		return appendAudit(tx, audit(out)...)
	})
	if err != nil {
		return Erased{}, err
	}
	return out, nil
}

// erase3PID removes a 3PID's binding (only mxid's when mxid is set), its
// invites, the deliveries about it and its sessions, counting into out.
func erase3PID(tx *bolt.Tx, medium, address, mxid string, out *Erased) error {
	if v := tx.Bucket(bucketBindings).Get(key(medium, address)); v != nil {
		var b Binding
		if err := json.Unmarshal(v, &b); err != nil {
			return fmt.Errorf("decode binding: %w", err)
		}
		if mxid == "" || b.MXID == mxid {
			if _, err := deleteBinding(tx, medium, address, b.MXID); err != nil {
				return err
			}
			out.Bindings = append(out.Bindings, b)
		}
	}
	received, err := invites(tx, InviteFilter{Medium: medium, Address: address})
	if err != nil {
		return err
	}
	for _, inv := range received {
		if err := deleteInvite(tx, inv); err != nil {
			return err
		}
		out.InvitesReceived++
	}
	n, err := deleteJobs(tx, "", medium, address)
	if err != nil {
		return err
	}
	out.Deliveries += n
	sessions, err := sessionsOf(tx, medium, address)
	if err != nil {
		return err
	}
	for _, sess := range sessions {
		if err := deleteSession(tx, &sess); err != nil {
			return err
		}
		out.Sessions++
	}
	return nil
}

// deleteJobs deletes the onbind deliveries for mxid or about a 3PID (see
// JobOf).
func deleteJobs(tx *bolt.Tx, mxid, medium, address string) (int, error) {
	return deleteWhere(tx.Bucket(bucketQueue), "queued delivery", func(_ []byte, j Job) bool { return JobOf(j.Body, mxid, medium, address) })
}

// deleteWhere deletes the records of bucket b (JSON values of type T) that
// match, collected first (deleting under a cursor skips keys), and says how
// many. match sees every record, key and value, in key order.
func deleteWhere[T any](b *bolt.Bucket, what string, match func(k []byte, v T) bool) (int, error) {
	var victims [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var x T
		if err := json.Unmarshal(v, &x); err != nil {
			return fmt.Errorf("decode %s: %w", what, err)
		}
		if match(k, x) {
			victims = append(victims, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range victims {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(victims), nil
}

// deleteTokensOf deletes every access token of userID.
func deleteTokensOf(tx *bolt.Tx, userID string) (int, error) {
	return deleteWhere(tx.Bucket(bucketAccounts), "account", func(_ []byte, a Account) bool { return a.UserID == userID })
}
