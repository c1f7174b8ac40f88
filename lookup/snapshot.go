package lookup

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The directory snapshot is what the last successful LDAP sync read: every
// canonical 3PID of the directory with its Matrix ID. It lives in the store
// (DirectoryStore), not in memory: a sync that finds a change replaces it
// whole in one transaction; the hash index is built from it like from the
// local bindings, at start-up too, so a restart while the directory is down
// keeps directory users in hashed lookups; and plaintext and v1 lookups that
// the directory fails to answer in time are answered from it, with one log
// line when the outage starts and one when it ends.
//
// The summary stored with it records the [ldap] settings that shape its
// content (base DNs, filter, attributes, uid_domain, default_region): a
// snapshot read with other settings maps users to other Matrix IDs, so it is
// dropped at start-up rather than served until the next sync.

// Record is one 3PID of a directory snapshot.
type Record struct{ Medium, Address, MXID string }

// snapshotSummary is the document stored with a snapshot.
type snapshotSummary struct {
	Settings string `json:"settings"` // settingsKey of the [ldap] section it was read with
	Sum      string `json:"sum"`      // order-independent hash of its records: a sync that reads the same stores nothing
	Count    int    `json:"count"`
	StoredMS int64  `json:"stored_ms"`
}

// snapshot is the LDAP source's side of the stored snapshot.
type snapshot struct {
	store    DirectoryStore
	now      func() time.Time
	settings string

	syncMu  sync.Mutex // one save at a time
	sumMu   sync.Mutex
	summary snapshotSummary // of the stored snapshot; Count 0 when there is none
	down    atomic.Bool     // lookups are failing: logged once when it starts and once when it ends
}

// settingsKey fingerprints the settings that decide what a sync reads and
// which Matrix IDs it maps to; URLs, credentials and timeouts do not.
func settingsKey(c LDAPConfig) string {
	b, _ := json.Marshal([]any{c.BaseDNs, c.Filter, c.UIDAttribute, c.UIDDomain, c.MXIDAttribute, c.EmailAttributes, c.MSISDNAttributes, c.DefaultRegion})
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// useStore attaches the store and takes the stored snapshot as the current
// one, or drops it when it was read with other settings.
func (l *LDAP) useStore(st DirectoryStore, now func() time.Time) error {
	l.store, l.now, l.settings = st, now, settingsKey(l.cfg)
	raw, ok, err := st.DirectorySummary()
	if err != nil {
		return fmt.Errorf("reading the directory snapshot: %w", err)
	}
	if !ok {
		l.log.Info("ldap: no directory snapshot stored yet: hashed lookups find directory users after the first sync")
		return nil
	}
	var sum snapshotSummary
	if err := json.Unmarshal(raw, &sum); err != nil || sum.Settings != l.settings {
		l.log.Warn("ldap: the stored directory snapshot was read with other [ldap] settings (base DNs, filter, attributes, uid_domain or default_region); dropped until the first sync", "threepids", sum.Count)
		return dropSnapshot(st)
	}
	l.summary = sum
	l.log.Info("ldap: hashed lookups use the stored directory snapshot until the first sync", "threepids", sum.Count, "stored", l.storedAt(sum))
	return nil
}

// reloadSummary reads the stored snapshot's summary again (another replica
// may have replaced the snapshot) and reports whether it differs from the
// one in memory. Taking syncMu waits for a save of this replica's under
// way, which updates the summary itself.
func (l *LDAP) reloadSummary() (changed bool, err error) {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	raw, ok, err := l.store.DirectorySummary()
	if err != nil {
		return false, fmt.Errorf("reading the directory snapshot: %w", err)
	}
	var sum snapshotSummary
	if ok {
		if err := json.Unmarshal(raw, &sum); err != nil {
			return false, fmt.Errorf("reading the directory snapshot: %w", err)
		}
	}
	l.sumMu.Lock()
	defer l.sumMu.Unlock()
	if sum == l.summary {
		return false, nil
	}
	l.summary = sum
	return true, nil
}

// dropSnapshot removes a stored snapshot.
func dropSnapshot(st DirectoryStore) error {
	if err := st.ReplaceDirectory(nil, nil); err != nil {
		return fmt.Errorf("dropping the directory snapshot: %w", err)
	}
	return nil
}

// dropStaleSnapshot removes the directory snapshot left behind when there
// is no directory or no sync any more: nothing would ever refresh it, so
// it must not answer, now or when the sync is turned on again.
func dropStaleSnapshot(st DirectoryStore, log *slog.Logger) error {
	raw, ok, err := st.DirectorySummary()
	if err != nil || !ok {
		return err
	}
	var sum snapshotSummary
	json.Unmarshal(raw, &sum)
	log.Info("no [ldap] directory or sync_interval = 0: dropping the stored directory snapshot", "threepids", sum.Count)
	return dropSnapshot(st)
}

// stored returns the summary of the stored snapshot.
func (l *LDAP) stored() snapshotSummary {
	l.sumMu.Lock()
	defer l.sumMu.Unlock()
	return l.summary
}

// storedAt says when a snapshot was stored, for the log.
func (l *LDAP) storedAt(sum snapshotSummary) string {
	if sum.StoredMS == 0 {
		return "never"
	}
	return time.UnixMilli(sum.StoredMS).UTC().Format(time.RFC3339)
}

// save stores recs as the new snapshot unless it holds the same as the
// stored one. Records are sorted (bbolt appends in key order fastest) and
// a 3PID held by several entries keeps the first one read, as a live
// search answers with the first entry found.
func (l *LDAP) save(recs []Record) (changed bool, n int, err error) {
	slices.SortStableFunc(recs, func(a, b Record) int {
		return cmp.Or(strings.Compare(a.Medium, b.Medium), strings.Compare(a.Address, b.Address))
	})
	recs = slices.CompactFunc(recs, func(a, b Record) bool { return a.Medium == b.Medium && a.Address == b.Address })
	var sum uint64
	h := fnv.New64a()
	var buf []byte
	for _, r := range recs {
		buf = append(append(append(append(append(buf[:0], r.Medium...), 0), r.Address...), 0), r.MXID...)
		h.Reset()
		h.Write(buf)
		sum += h.Sum64() // order-independent
	}
	next := snapshotSummary{Settings: l.settings, Sum: fmt.Sprintf("%016x", sum), Count: len(recs)}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	cur := l.stored()
	if cur.Settings == next.Settings && cur.Sum == next.Sum && cur.Count == next.Count {
		return false, len(recs), nil
	}
	next.StoredMS = l.now().UnixMilli()
	doc, err := json.Marshal(next)
	if err != nil {
		return false, 0, err
	}
	err = l.store.ReplaceDirectory(doc, func(put func(medium, address, mxid string) error) error {
		for _, r := range recs {
			if err := put(r.Medium, r.Address, r.MXID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, 0, fmt.Errorf("storing the directory snapshot: %w", err)
	}
	l.sumMu.Lock()
	l.summary = next
	l.sumMu.Unlock()
	return true, len(recs), nil
}

// Records implements Directory: the stored snapshot, read from the store.
func (l *LDAP) Records(fn func(medium, address, mxid []byte)) error {
	if l.store == nil {
		return nil
	}
	return l.store.ScanDirectory(func(medium, address, mxid []byte) error {
		fn(medium, address, mxid)
		return nil
	})
}

// orSnapshot completes a live lookup of want: when the directory failed
// (err), the 3PIDs it did not answer are looked up in the snapshot, and the
// start and the end of the outage are logged once each. A lookup its caller
// gave up on says nothing about the directory.
func (l *LDAP) orSnapshot(want map[ThreePID]bool, out map[ThreePID]string, err error) (map[ThreePID]string, error) {
	if l.store == nil || errors.Is(err, context.Canceled) {
		return out, err
	}
	if err == nil {
		if l.down.CompareAndSwap(true, false) {
			l.log.Info("ldap: the directory answers again; plaintext and v1 lookups ask it live")
		}
		return out, nil
	}
	sum := l.stored()
	if l.down.CompareAndSwap(false, true) {
		if sum.Count > 0 {
			l.log.Warn("ldap: the directory does not answer; plaintext and v1 lookups of directory users are answered from the stored snapshot until it does",
				"threepids", sum.Count, "stored", l.storedAt(sum), "err", err)
		} else {
			l.log.Warn("ldap: the directory does not answer and no snapshot is stored yet: directory users are not found until it does", "err", err)
		}
	}
	if sum.Count == 0 {
		return out, loggedError{err}
	}
	var ask [][2]string
	var tps []ThreePID
	for tp := range want {
		if _, ok := out[tp]; !ok {
			ask = append(ask, [2]string{tp.Medium, tp.Address})
			tps = append(tps, tp)
		}
	}
	mxids, serr := l.store.DirectoryMXIDs(ask)
	if serr != nil {
		return out, fmt.Errorf("%w; and reading the directory snapshot: %w", err, serr)
	}
	for i, m := range mxids {
		if m != "" {
			out[tps[i]] = m
		}
	}
	return out, loggedError{err}
}
