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
// never served; a single server drops it at start-up. Replicas share the
// snapshot: one configured otherwise (during a rolling change of [ldap])
// ignores it and leaves it to the leader, whose sync replaces it, so that
// it does not empty the directory of the others.

// Record is one 3PID of a directory snapshot.
type Record struct{ Medium, Address, MXID string }

// snapshotSummary is the document stored with a snapshot.
type snapshotSummary struct {
	Settings string `json:"settings"` // settingsKey of the [ldap] section it was read with
	Sum      string `json:"sum"`      // order-independent hash of its records: a sync that reads the same stores nothing
	Count    int    `json:"count"`
	StoredMS int64  `json:"stored_ms"`
	// The display names stored with it (names.go), when [directory] is
	// on: the namesKey of the settings they were read with, their hash
	// and their number.
	Names      string `json:"names,omitempty"`
	NamesSum   string `json:"names_sum,omitempty"`
	NamesCount int    `json:"names_count,omitempty"`
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
// one. One read with other settings is not used; it is dropped unless the
// store is shared (replicas), where the leader's sync replaces it.
func (l *LDAP) useStore(st DirectoryStore, now func() time.Time, shared bool) error {
	l.store, l.now, l.settings = st, now, settingsKey(l.cfg)
	sum, ok, err := l.readSummary()
	if err != nil {
		return err
	}
	if !ok {
		l.log.Info("ldap: no directory snapshot stored yet: hashed lookups find directory users after the first sync")
		return nil
	}
	if sum.Settings != l.settings && shared {
		l.log.Warn("ldap: the stored directory snapshot was read with other [ldap] settings (base DNs, filter, attributes, uid_domain or default_region) than this replica's; not used here, the leader's sync replaces it", "threepids", sum.Count)
		return nil
	}
	if sum.Settings != l.settings {
		l.log.Warn("ldap: the stored directory snapshot was read with other [ldap] settings (base DNs, filter, attributes, uid_domain or default_region); dropped until the first sync", "threepids", sum.Count)
		return dropSnapshot(st)
	}
	l.setStored(sum)
	l.log.Info("ldap: hashed lookups use the stored directory snapshot until the first sync", "threepids", sum.Count, "stored", l.storedAt(sum))
	return nil
}

// readSummary reads the stored snapshot's summary; ok is false when there
// is no snapshot. An unreadable summary reads as settings that match
// nothing.
func (l *LDAP) readSummary() (sum snapshotSummary, ok bool, err error) {
	raw, ok, err := l.store.DirectorySummary()
	if err != nil {
		return sum, false, fmt.Errorf("reading the directory snapshot: %w", err)
	}
	if ok && json.Unmarshal(raw, &sum) != nil {
		sum = snapshotSummary{}
	}
	return sum, ok, nil
}

// reloadSummary reads the stored snapshot's summary again (another replica
// may have replaced the snapshot) and reports whether it differs from the
// one in memory. Taking syncMu waits for a save of this replica's under
// way, which updates the summary itself. A summary stored with other
// settings (a replica configured differently) counts as none.
func (l *LDAP) reloadSummary() (changed bool, err error) {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	sum, ok, err := l.readSummary()
	if err != nil {
		return false, err
	}
	if !ok || sum.Settings != l.settings {
		sum = snapshotSummary{}
	}
	l.sumMu.Lock()
	defer l.sumMu.Unlock()
	if sum == l.summary {
		return false, nil
	}
	l.summary = sum
	return true, nil
}

func (l *LDAP) setStored(sum snapshotSummary) {
	l.sumMu.Lock()
	l.summary = sum
	l.sumMu.Unlock()
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

// save stores recs (and, with [directory] on, the display names) as the
// new snapshot unless it holds the same as the stored one. Records are
// sorted (bbolt appends in key order fastest) and a 3PID held by several
// entries keeps the first one read, as a live search answers with the
// first entry found; a Matrix ID read twice keeps its first name, or its
// first non-empty one.
func (l *LDAP) save(recs []Record, names []Person) (changed bool, n int, err error) {
	slices.SortStableFunc(recs, func(a, b Record) int {
		return cmp.Or(strings.Compare(a.Medium, b.Medium), strings.Compare(a.Address, b.Address))
	})
	recs = slices.CompactFunc(recs, func(a, b Record) bool { return a.Medium == b.Medium && a.Address == b.Address })
	next := snapshotSummary{Settings: l.settings, Count: len(recs)}
	next.Sum = orderFreeSum(len(recs), func(i int, buf []byte) []byte {
		r := recs[i]
		return append(append(append(append(append(buf, r.Medium...), 0), r.Address...), 0), r.MXID...)
	})
	var fillNames func(put func(mxid, name string) error) error
	if l.names.enabled {
		slices.SortStableFunc(names, func(a, b Person) int {
			return cmp.Or(strings.Compare(a.UserID, b.UserID), cmp.Compare(unnamed(a), unnamed(b)))
		})
		names = slices.CompactFunc(names, func(a, b Person) bool { return a.UserID == b.UserID })
		next.Names, next.NamesCount = l.names.key, len(names)
		next.NamesSum = orderFreeSum(len(names), func(i int, buf []byte) []byte {
			return append(append(append(buf, names[i].UserID...), 0), names[i].DisplayName...)
		})
		fillNames = func(put func(mxid, name string) error) error {
			for _, p := range names {
				if err := put(p.UserID, p.DisplayName); err != nil {
					return err
				}
			}
			return nil
		}
	}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	cur := l.stored()
	cur.StoredMS = 0
	if cur == next {
		return false, len(recs), nil
	}
	next.StoredMS = l.now().UnixMilli()
	doc, err := json.Marshal(next)
	if err != nil {
		return false, 0, err
	}
	err = l.store.ReplaceDirectoryWithNames(doc, func(put func(medium, address, mxid string) error) error {
		for _, r := range recs {
			if err := put(r.Medium, r.Address, r.MXID); err != nil {
				return err
			}
		}
		return nil
	}, fillNames)
	if err != nil {
		return false, 0, fmt.Errorf("storing the directory snapshot: %w", err)
	}
	l.setStored(next)
	return true, len(recs), nil
}

// unnamed sorts people without a display name after the others.
func unnamed(p Person) int {
	if p.DisplayName == "" {
		return 1
	}
	return 0
}

// orderFreeSum is a hash of n items (item i written by put) that does not
// depend on their order: a sync that reads the same stores nothing.
func orderFreeSum(n int, put func(i int, buf []byte) []byte) string {
	var sum uint64
	h := fnv.New64a()
	var buf []byte
	for i := range n {
		buf = put(i, buf[:0])
		h.Reset()
		h.Write(buf)
		sum += h.Sum64()
	}
	return fmt.Sprintf("%016x", sum)
}

// namesMissing is told that the store holds n display names: when the
// summary promised others (a copy of the store that left them behind), the
// next sync stores them again even if the directory did not change.
func (l *LDAP) namesMissing(n int) bool {
	l.sumMu.Lock()
	defer l.sumMu.Unlock()
	if l.summary.NamesCount == n {
		return false
	}
	l.summary.NamesSum = ""
	return true
}

// Records implements Directory: the stored snapshot, read from the store,
// unless it was read with other settings.
func (l *LDAP) Records(fn func(medium, address, mxid []byte)) error {
	if l.store == nil || l.stored().Settings != l.settings {
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
