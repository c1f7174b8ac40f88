package lookup

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/big"
	"math/bits"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"mxid/lookup/threepid"
)

// The hash index answers sha256 lookups from memory: for the current pepper
// (and, during the grace period after a rotation, the previous one) it maps
// the raw 32-byte hash of every enumerable 3PID (local bindings, the LDAP
// directory) to its Matrix ID.
//
// A table is built once, in the background, from a scan of the sources:
// entries {hash, name id} placed in buckets by the hash's leading bits (a
// radix sort in place: hashes are uniform, so a bucket holds about one entry
// and a lookup is two memory reads), Matrix IDs in one byte arena. Changes after
// the build (binds, unbinds) go to a small overlay map and tombstones. The
// tables in use hang off an atomic pointer, so a rebuild never blocks a
// lookup; binds and unbinds made while a rebuild runs are logged and replayed
// onto the new table before it is swapped in, so none is lost.
//
// With several replicas (DESIGN.md §6) the pepper state in the store is the
// leader's: only the leader runs Run (rotation); the others run Expire and
// call Reload when the state changes, taking the leader's new pepper with
// the grace period it recorded.

// MetaKey is the meta key holding the pepper state.
const MetaKey = "lookup_pepper"

// sizeKey holds the size of the last index build (a hint for the next).
const sizeKey = "lookup_index_size"

const (
	// idDirectory marks entries from the directory (LDAP); a local binding
	// of the same 3PID wins over them.
	idDirectory = 1 << 31
	idMask      = idDirectory - 1
	idDeleted   = idMask
)

type entry struct {
	h  [32]byte
	id uint32
}

type table struct {
	pepper  string
	created time.Time

	shift   uint     // 64 - bucket bits
	starts  []uint32 // bucket b is entries[starts[b]:starts[b+1]]
	entries []entry
	names   []byte   // Matrix IDs, concatenated; never modified after build
	ends    []uint32 // name i is names[ends[i-1]:ends[i]]

	mu    sync.RWMutex
	extra map[[32]byte]string // binds made after the build
	// entries[i].id is written under mu too (tombstones).
}

func (t *table) name(id uint32) string {
	start := uint32(0)
	if id > 0 {
		start = t.ends[id-1]
	}
	b := t.names[start:t.ends[id]]
	return unsafe.String(unsafe.SliceData(b), len(b))
}

func (t *table) bucket(h *[32]byte) (lo, hi uint32) {
	b := prefix(h) >> t.shift
	return t.starts[b], t.starts[b+1]
}

// get returns the Matrix ID of a hash; the caller holds t.mu for reading.
func (t *table) get(h *[32]byte) (string, bool) {
	if len(t.extra) > 0 {
		if m, ok := t.extra[*h]; ok {
			return m, true
		}
	}
	lo, hi := t.bucket(h)
	found := uint32(idDeleted)
	for i := lo; i < hi; i++ {
		e := &t.entries[i]
		if e.h == *h && e.id&idMask != idDeleted {
			if e.id&idDirectory == 0 {
				return t.name(e.id), true // a local binding wins over the directory
			}
			if found == idDeleted {
				found = e.id & idMask
			}
		}
	}
	if found != idDeleted {
		return t.name(found), true
	}
	return "", false
}

// apply records a bind (mxid != "") or an unbind of a local binding; the
// caller holds t.mu for writing.
func (t *table) apply(medium, address, mxid string) {
	h := threepid.HashRaw(address, medium, t.pepper)
	lo, hi := t.bucket(&h)
	for i := lo; i < hi; i++ {
		if e := &t.entries[i]; e.h == h && e.id&idDirectory == 0 {
			e.id = idDeleted // the overlay holds the binding from now on
		}
	}
	if mxid == "" {
		delete(t.extra, h)
	} else {
		t.extra[h] = mxid
	}
}

func (t *table) size() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.entries) + len(t.extra)
}

// builder collects records and builds one table per pepper.
type builder struct {
	peppers []string
	raw     [][]entry // per pepper, unsorted
	names   []byte
	ends    []uint32
}

// newBuilder sizes the builder for about entries records holding
// nameBytes of Matrix IDs: growing a slice of a million entries by append
// would briefly hold it twice.
func newBuilder(entries, nameBytes int, peppers ...string) *builder {
	b := &builder{peppers: peppers, raw: make([][]entry, len(peppers))}
	for i := range b.raw {
		b.raw[i] = make([]entry, 0, entries)
	}
	b.names = make([]byte, 0, nameBytes)
	b.ends = make([]uint32, 0, entries)
	return b
}

func addRecord[S ~string | ~[]byte](b *builder, medium, address, mxid S, directory bool) {
	id := uint32(len(b.ends))
	if id >= idDeleted || uint64(len(b.names))+uint64(len(mxid)) > math.MaxUint32 {
		return // beyond 2^31 entries or 4 GiB of names: far beyond what fits anyway
	}
	b.names = append(b.names, mxid...)
	b.ends = append(b.ends, uint32(len(b.names)))
	if directory {
		id |= idDirectory
	}
	for i, p := range b.peppers {
		b.raw[i] = append(b.raw[i], entry{h: threepid.HashRaw(address, medium, p), id: id})
	}
}

// build turns the collected records into tables (one per pepper), in
// place, so building needs no second array of entries: an MSD radix sort on
// the bucket bits of the hash, first by the top 8 bits (256 sequential write
// streams: cache-friendly), then each of those partitions, which fit in
// cache, by the remaining bucket bits.
func (b *builder) build(created time.Time) []*table {
	names := b.names[:len(b.names):len(b.names)]
	ends := b.ends[:len(b.ends):len(b.ends)]
	out := make([]*table, len(b.peppers))
	for i, p := range b.peppers {
		es := b.raw[i][:len(b.raw[i]):len(b.raw[i])]
		b.raw[i] = nil
		nb := max(8, bits.Len(uint(len(es)))) // about one entry per bucket
		nb = min(nb, 24)
		t := &table{pepper: p, created: created, shift: uint(64 - nb), entries: es, names: names, ends: ends, extra: map[[32]byte]string{}}
		lo := uint(nb - 8) // bits below the top 8
		var pos, fill []uint32
		permute(es, 64-8, 8, &pos, &fill)
		part := append([]uint32(nil), pos...) // partitions by the top 8 bits
		if lo > 0 {
			for k := 0; k < 256; k++ {
				permute(es[part[k]:part[k+1]], t.shift, lo, &pos, &fill)
			}
		}
		t.starts = make([]uint32, 1<<nb+1)
		for j := range es {
			t.starts[t.bucketOf(&es[j].h)+1]++
		}
		for j := 1; j < len(t.starts); j++ {
			t.starts[j] += t.starts[j-1]
		}
		out[i] = t
	}
	return out
}

func prefix(h *[32]byte) uint64 {
	return uint64(h[0])<<56 | uint64(h[1])<<48 | uint64(h[2])<<40 | uint64(h[3])<<32
}

// permute orders es in place by key (prefix >> shift) & (1<<nbits - 1)
// (an American flag sort). pos and fill are scratch space; on return pos
// holds the bucket boundaries.
func permute(es []entry, shift, nbits uint, pos, fill *[]uint32) {
	n := 1 << nbits
	mask := uint64(n - 1)
	if cap(*pos) < n+1 {
		*pos, *fill = make([]uint32, n+1), make([]uint32, n)
	}
	ps, fs := (*pos)[:n+1], (*fill)[:n]
	clear(ps)
	for j := range es {
		ps[(prefix(&es[j].h)>>shift)&mask+1]++
	}
	for j := 1; j <= n; j++ {
		ps[j] += ps[j-1]
	}
	copy(fs, ps[:n])
	for bk := 0; bk < n; bk++ {
		end := ps[bk+1]
		for fs[bk] < end {
			e := es[fs[bk]]
			for to := (prefix(&e.h) >> shift) & mask; to != uint64(bk); to = (prefix(&e.h) >> shift) & mask {
				j := fs[to]
				fs[to]++
				e, es[j] = es[j], e
			}
			es[fs[bk]] = e
			fs[bk]++
		}
	}
	*pos = ps
}

func (t *table) bucketOf(h *[32]byte) uint64 { return prefix(h) >> t.shift }

// Directory is a source whose whole content the index holds (LDAP: its
// stored snapshot).
type Directory interface {
	// Records calls fn for every 3PID of the snapshot; the slices are valid
	// only during the call.
	Records(fn func(medium, address, mxid []byte)) error
}

// IndexOptions configure NewIndex.
type IndexOptions struct {
	Store Store
	// Directories are indexed after the local bindings (which win).
	Directories []Directory
	// Rotation, Grace, Fixed: as lookup.Config's pepper settings.
	Rotation, Grace time.Duration
	Fixed           string
	Now             func() time.Time
	Logger          *slog.Logger
	// Observe is Deps.Observe: told once per LookupHashes call, as source
	// "index", outcome "found" (at least one hit) or "not_found".
	Observe func(source, outcome string, d time.Duration)
}

type indexState struct {
	current     *table
	previous    *table // nil when none is accepted
	prevExpires time.Time
}

type event struct{ medium, address, mxid string }

// Index is the in-process hash index. It implements server.BindingListener
// (Bound, Unbound).
type Index struct {
	opt   IndexOptions
	state atomic.Pointer[indexState]

	buildMu sync.Mutex // one rebuild at a time
	mu      sync.Mutex // serialises changes to the tables and the state swap
	pending *[]event   // non-nil while a rebuild runs: changes to replay

	hits, misses, rotations atomic.Int64
	lastBuild               atomic.Int64 // nanoseconds

	wakeMu sync.Mutex
	wake   chan struct{} // closed (and replaced) when the pepper state changes
}

// pepperState is the persisted pepper (meta key MetaKey).
type pepperState struct {
	Current         string `json:"current"`
	CreatedMS       int64  `json:"created_ms"`
	Previous        string `json:"previous,omitempty"`
	PreviousExpires int64  `json:"previous_expires_ms,omitempty"`
}

// NewPepper returns 32 random characters of [A-Za-z0-9] (about 190 bits).
func NewPepper() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 32)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			panic("crypto/rand failed: " + err.Error())
		}
		b[i] = alphabet[n.Int64()]
	}
	return string(b)
}

// NewIndex loads (or creates) the pepper and builds the index over the
// local bindings and the directories' stored snapshots before returning.
func NewIndex(opt IndexOptions) (*Index, error) {
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	x := &Index{opt: opt, wake: make(chan struct{})}
	now := opt.Now()
	ps, _, err := x.loadPepper()
	if err != nil {
		return nil, err
	}
	dirty := false
	switch {
	case opt.Fixed != "":
		if ps.Current != opt.Fixed {
			ps, dirty = pepperState{Current: opt.Fixed, CreatedMS: now.UnixMilli()}, true
		}
		ps.Previous = ""
	case ps.Current == "":
		if ps, dirty, err = x.firstPepper(now); err != nil {
			return nil, err
		}
	}
	if dirty {
		if err := x.savePepper(ps); err != nil {
			return nil, err
		}
	}
	peppers := []string{ps.Current}
	prevExpires := time.UnixMilli(ps.PreviousExpires)
	withPrev := ps.Previous != "" && now.Before(prevExpires)
	if withPrev {
		peppers = append(peppers, ps.Previous)
	}
	start := time.Now()
	tables, err := x.scan(context.Background(), peppers, time.UnixMilli(ps.CreatedMS))
	if err != nil {
		return nil, err
	}
	st := &indexState{current: tables[0]}
	if withPrev {
		st.previous, st.prevExpires = tables[1], prevExpires
	}
	x.state.Store(st)
	x.lastBuild.Store(int64(time.Since(start)))
	releaseMemory()
	return x, nil
}

// loadPepper reads the stored pepper state; ok is false when there is none
// or it is unreadable (logged).
func (x *Index) loadPepper() (ps pepperState, ok bool, err error) {
	raw, ok, err := x.opt.Store.GetMeta(MetaKey)
	if err != nil || !ok {
		return pepperState{}, false, err
	}
	if err := json.Unmarshal(raw, &ps); err != nil || !pepperRE.MatchString(ps.Current) {
		x.opt.Logger.Warn("lookup: the stored pepper is unreadable; starting with a new one")
		return pepperState{}, false, nil
	}
	return ps, true, nil
}

// firstPepper makes the first pepper of a store that has none readable:
// created only if the store holds none yet, so that replicas starting
// together on one database agree on the first one's pepper; dirty says the
// caller must still write it (the stored one was unreadable).
func (x *Index) firstPepper(now time.Time) (ps pepperState, dirty bool, err error) {
	fresh := pepperState{Current: NewPepper(), CreatedMS: now.UnixMilli()}
	v, err := json.Marshal(fresh)
	if err != nil {
		return fresh, false, err
	}
	stored, created, err := x.opt.Store.CreateMeta(MetaKey, v)
	if err != nil || created {
		return fresh, false, err
	}
	if json.Unmarshal(stored, &ps) == nil && pepperRE.MatchString(ps.Current) {
		return ps, false, nil // another replica's, created a moment ago
	}
	return fresh, true, nil // the unreadable one: replaced
}

func (x *Index) savePepper(ps pepperState) error {
	v, err := json.Marshal(ps)
	if err != nil {
		return err
	}
	return x.opt.Store.PutMeta(MetaKey, v)
}

// scan reads every source and builds one table per pepper.
func (x *Index) scan(ctx context.Context, peppers []string, created time.Time) ([]*table, error) {
	// The last build's size, plus room for what was bound since.
	entries, nameBytes := 0, 0
	if cur := x.state.Load(); cur != nil {
		t := cur.current
		t.mu.RLock()
		entries, nameBytes = len(t.entries)+len(t.extra), len(t.names)+32*len(t.extra)
		t.mu.RUnlock()
	} else if raw, ok, _ := x.opt.Store.GetMeta(sizeKey); ok {
		fmt.Sscanf(string(raw), "%d %d", &entries, &nameBytes)
		entries, nameBytes = min(max(entries, 0), 1<<30), min(max(nameBytes, 0), math.MaxInt32)
	}
	b := newBuilder(entries+entries/64+1024, nameBytes+nameBytes/64+32*1024, peppers...)
	n := 0
	err := x.opt.Store.ScanBindings(func(medium, address, mxid []byte) error {
		addRecord(b, medium, address, mxid, false)
		if n++; n%65536 == 0 {
			return ctx.Err()
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lookup index: reading local bindings: %w", err)
	}
	for _, d := range x.opt.Directories {
		if err := d.Records(func(medium, address, mxid []byte) { addRecord(b, medium, address, mxid, true) }); err != nil {
			return nil, fmt.Errorf("lookup index: reading the directory snapshot: %w", err)
		}
	}
	tables := b.build(created)
	if err := x.opt.Store.PutMeta(sizeKey, fmt.Appendf(nil, "%d %d", len(tables[0].entries), len(tables[0].names))); err != nil {
		x.opt.Logger.Debug("lookup index: saving its size", "err", err)
	}
	return tables, nil
}

// releaseMemory hands the memory of a build's scratch space and of dropped
// tables back to the OS now rather than over the next minutes: the resident
// size is what operators of small machines watch.
func releaseMemory() { debug.FreeOSMemory() }

// rebuild builds new tables in the background, one per pepper, and swaps
// in the state finish makes of them, replaying the changes made meanwhile
// onto them. The caller holds buildMu.
func (x *Index) rebuild(ctx context.Context, peppers []string, created time.Time, finish func(old *indexState, ts []*table) (*indexState, error)) error {
	start := time.Now()
	x.mu.Lock()
	log := []event{}
	x.pending = &log
	x.mu.Unlock()
	releaseMemory() // start the build from a compact heap: the peak is old + new table
	tables, err := x.scan(ctx, peppers, created)
	x.mu.Lock()
	defer x.mu.Unlock()
	events := *x.pending
	x.pending = nil
	if err != nil {
		return err
	}
	for _, t := range tables {
		t.mu.Lock()
		for _, e := range events {
			t.apply(e.medium, e.address, e.mxid)
		}
		t.mu.Unlock()
	}
	next, err := finish(x.state.Load(), tables)
	if err != nil {
		return err
	}
	x.state.Store(next)
	x.lastBuild.Store(int64(time.Since(start)))
	go releaseMemory() // the lock is held here; lookups need no memory back in a hurry
	return nil
}

// Rotate switches to a new random pepper: the new table is built in the
// background, then swapped in; the old pepper is still answered for the
// grace period. With a fixed pepper it does nothing.
func (x *Index) Rotate(ctx context.Context) error {
	if x.opt.Fixed != "" {
		return nil
	}
	x.buildMu.Lock()
	defer x.buildMu.Unlock()
	pepper := NewPepper()
	start := time.Now()
	err := x.rebuild(ctx, []string{pepper}, x.opt.Now(), func(old *indexState, ts []*table) (*indexState, error) {
		t := ts[0]
		now := x.opt.Now()
		t.created = now
		next := &indexState{current: t, previous: old.current, prevExpires: now.Add(x.opt.Grace)}
		if x.opt.Grace <= 0 {
			next.previous = nil
		}
		ps := pepperState{Current: pepper, CreatedMS: now.UnixMilli()}
		if next.previous != nil {
			ps.Previous, ps.PreviousExpires = old.current.pepper, next.prevExpires.UnixMilli()
		}
		if err := x.savePepper(ps); err != nil {
			return nil, fmt.Errorf("lookup: saving the new pepper: %w", err)
		}
		return next, nil
	})
	if err != nil {
		return err
	}
	x.rotations.Add(1)
	x.opt.Logger.Info("lookup pepper rotated", "entries", x.Size(), "duration_ms", time.Since(start).Milliseconds(), "grace", x.opt.Grace.String())
	x.poke()
	return nil
}

// Refresh rebuilds the current table with the same pepper (after a
// directory sync changed what the index should hold).
func (x *Index) Refresh(ctx context.Context) error {
	x.buildMu.Lock()
	defer x.buildMu.Unlock()
	cur := x.state.Load().current
	start := time.Now()
	err := x.rebuild(ctx, []string{cur.pepper}, cur.created, func(old *indexState, ts []*table) (*indexState, error) {
		return &indexState{current: ts[0], previous: old.previous, prevExpires: old.prevExpires}, nil
	})
	if err == nil {
		x.opt.Logger.Info("lookup index rebuilt", "entries", x.Size(), "duration_ms", time.Since(start).Milliseconds())
	}
	return err
}

// Reload takes in the pepper state another replica stored (the leader
// rotated, or a replica starting on an empty database created it): when
// its current pepper is not this index's, the index is rebuilt for it in
// the background and swapped in, and this index's table goes on answering
// the previous pepper until the grace period the state records ends. It
// reports whether the pepper changed. With a fixed pepper it does nothing.
func (x *Index) Reload(ctx context.Context) (bool, error) {
	if x.opt.Fixed != "" {
		return false, nil
	}
	x.buildMu.Lock() // after a Rotate of this index: the state it stored is its own
	defer x.buildMu.Unlock()
	ps, ok, err := x.loadPepper()
	if err != nil || !ok || ps.Current == x.state.Load().current.pepper {
		return false, err
	}
	start := time.Now()
	prevExpires := time.UnixMilli(ps.PreviousExpires)
	withPrev := ps.Previous != "" && x.opt.Now().Before(prevExpires)
	keepOld := withPrev && ps.Previous == x.state.Load().current.pepper // usually: the one rotation since
	peppers := []string{ps.Current}
	if withPrev && !keepOld {
		peppers = append(peppers, ps.Previous)
	}
	err = x.rebuild(ctx, peppers, time.UnixMilli(ps.CreatedMS), func(old *indexState, ts []*table) (*indexState, error) {
		next := &indexState{current: ts[0]}
		switch {
		case keepOld:
			next.previous, next.prevExpires = old.current, prevExpires
		case withPrev:
			next.previous, next.prevExpires = ts[1], prevExpires
		}
		return next, nil
	})
	if err != nil {
		return false, err
	}
	until := "not accepted"
	if withPrev {
		until = prevExpires.UTC().Format(time.RFC3339)
	}
	x.opt.Logger.Info("lookup pepper changed by another replica", "entries", x.Size(), "duration_ms", time.Since(start).Milliseconds(),
		"previous_pepper_until", until)
	x.poke()
	return true, nil
}

// poke wakes the loops (Run, Expire): the pepper state changed.
func (x *Index) poke() {
	x.wakeMu.Lock()
	close(x.wake)
	x.wake = make(chan struct{})
	x.wakeMu.Unlock()
}

func (x *Index) woken() <-chan struct{} {
	x.wakeMu.Lock()
	defer x.wakeMu.Unlock()
	return x.wake
}

// Run rotates the pepper on schedule and forgets the previous pepper when
// its grace period ends, until ctx ends. With several replicas only the
// leader runs it; the others run Expire.
func (x *Index) Run(ctx context.Context) { x.run(ctx, true) }

// Expire forgets the previous pepper when its grace period ends, until ctx
// ends, and never rotates: what a replica that is not the leader runs (it
// learns of rotations through Reload).
func (x *Index) Expire(ctx context.Context) { x.run(ctx, false) }

func (x *Index) run(ctx context.Context, rotate bool) {
	for {
		woken := x.woken()
		st := x.state.Load()
		now := x.opt.Now()
		wait := 24 * time.Hour
		if st.previous != nil {
			if !now.Before(st.prevExpires) {
				x.mu.Lock()
				if cur := x.state.Load(); cur.previous != nil && !now.Before(cur.prevExpires) {
					x.state.Store(&indexState{current: cur.current})
				}
				x.mu.Unlock()
				releaseMemory() // the previous table is garbage now
				continue
			}
			wait = min(wait, st.prevExpires.Sub(now))
		}
		if rotate && x.opt.Fixed == "" {
			due := st.current.created.Add(x.opt.Rotation)
			if !now.Before(due) {
				if err := x.Rotate(ctx); err != nil {
					if ctx.Err() != nil {
						return
					}
					x.opt.Logger.Error("lookup: pepper rotation failed; retrying in a minute", "err", err)
					wait = time.Minute
				} else {
					continue
				}
			} else {
				wait = min(wait, due.Sub(now))
			}
		}
		timer := time.NewTimer(max(wait, 10*time.Millisecond))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-woken:
			timer.Stop()
		}
	}
}

// Bound records a new binding (committed by the caller). Address is
// canonical.
func (x *Index) Bound(medium, address, mxid string) { x.change(medium, address, mxid) }

// Unbound records the removal of a binding.
func (x *Index) Unbound(medium, address string) { x.change(medium, address, "") }

func (x *Index) change(medium, address, mxid string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.state.Load()
	for _, t := range []*table{st.current, st.previous} {
		if t != nil {
			t.mu.Lock()
			t.apply(medium, address, mxid)
			t.mu.Unlock()
		}
	}
	if x.pending != nil {
		*x.pending = append(*x.pending, event{medium, address, mxid})
	}
}

// Pepper is the current pepper.
func (x *Index) Pepper() string { return x.state.Load().current.pepper }

// ErrPepper is returned for a pepper that is neither the current one nor the
// previous one within its grace period.
var ErrPepper = errors.New("unknown or expired pepper")

// LookupHashes answers a sha256 lookup: out[i] is the Matrix ID of
// hashes[i] or "". Malformed hashes simply do not match.
func (x *Index) LookupHashes(pepper string, hashes []string) (out []string, err error) {
	t := x.tableFor(pepper)
	if t == nil {
		return nil, ErrPepper
	}
	var start time.Time
	if x.opt.Observe != nil {
		start = time.Now()
	}
	out = make([]string, len(hashes))
	hit := 0
	t.mu.RLock()
	for i, s := range hashes {
		h, ok := threepid.DecodeHash(s)
		if !ok {
			continue
		}
		if m, ok := t.get(&h); ok {
			out[i] = m
			hit++
		}
	}
	t.mu.RUnlock()
	x.hits.Add(int64(hit))
	x.misses.Add(int64(len(hashes) - hit))
	if x.opt.Observe != nil {
		outcome := "not_found"
		if hit > 0 {
			outcome = "found"
		}
		x.opt.Observe("index", outcome, time.Since(start))
	}
	return out, nil
}

// PepperAccepted reports whether /lookup accepts pepper now.
func (x *Index) PepperAccepted(pepper string) bool { return x.tableFor(pepper) != nil }

func (x *Index) tableFor(pepper string) *table {
	st := x.state.Load()
	if pepper == st.current.pepper {
		return st.current
	}
	if st.previous != nil && pepper == st.previous.pepper && x.opt.Now().Before(st.prevExpires) {
		return st.previous
	}
	return nil
}

// Resolve returns the Matrix ID the index holds for a canonical 3PID
// (local bindings and the synced directory), without asking any source.
func (x *Index) Resolve(medium, address string) (string, bool) {
	t := x.state.Load().current
	h := threepid.HashRaw(address, medium, t.pepper)
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.get(&h)
}

// IndexStats are cheap counters for metrics.
type IndexStats struct {
	Entries       int           // current table, overlay included (an estimate: unbinds leave tombstones)
	Hits, Misses  int64         // sha256 addresses answered / not found
	Rotations     int64         // since start
	PepperAge     time.Duration // age of the current pepper
	LastBuild     time.Duration // duration of the last (re)build
	PreviousValid bool          // the previous pepper is still accepted
	Fixed         bool          // the pepper is fixed by configuration: no rotation
	NextRotation  time.Time     // when the pepper rotates next (zero when fixed)
}

// Stats returns the index's counters.
func (x *Index) Stats() IndexStats {
	st := x.state.Load()
	s := IndexStats{
		Entries: st.current.size(), Hits: x.hits.Load(), Misses: x.misses.Load(), Rotations: x.rotations.Load(),
		PepperAge: x.opt.Now().Sub(st.current.created), LastBuild: time.Duration(x.lastBuild.Load()),
		PreviousValid: st.previous != nil && x.opt.Now().Before(st.prevExpires),
		Fixed:         x.opt.Fixed != "",
	}
	if !s.Fixed {
		s.NextRotation = st.current.created.Add(x.opt.Rotation)
	}
	return s
}

// Size is the number of entries of the current table.
func (x *Index) Size() int { return x.state.Load().current.size() }
