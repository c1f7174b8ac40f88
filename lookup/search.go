package lookup

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"mxid/server/matrixid"
)

// The directory search answers "who is Alice in accounting?" for Matrix
// clients (the user directory search, served by package server) from the
// display names the LDAP sync stores with the directory snapshot: never
// from an email address, a phone number or any other attribute (the sync
// does not read them for it), and never from a local binding.
//
// The index is a prefix index over normalised words (words.go): every word
// of every entry's display name and Matrix ID localpart, sorted, each with
// the sorted list of the entries holding it. A term matches the entries
// holding, for every one of its words, a word that starts with it. The words
// starting with a prefix are one range of the sorted words, found by binary
// search, and the number of entries under a range is a subtraction; so a
// search walks only the entries under its rarest word and checks the other
// words against each entry's own short list of word numbers. It is built
// whole from the snapshot, at start-up and after each sync (or, on another
// replica, each stored snapshot) that changed it, and swapped in atomically:
// searches never wait for a build.

// Person is one entry of the directory search, all a search returns of it.
type Person struct {
	UserID      string
	DisplayName string // "" when the entry has none
}

// SearchIndex is the directory search's index. Its zero value is an empty
// index, ready to use.
type SearchIndex struct {
	table   atomic.Pointer[searchTable]
	scratch sync.Pool // *[]uint64: a bitset of the entries a search has seen
}

type searchTable struct {
	people []Person // in rank order for ties: by normalised name, then user ID
	words  []string // every word, sorted, once
	cum    []uint32 // entries under words[:i]: words[i]'s are posts[cum[i]:cum[i+1]]
	posts  []uint32 // entry numbers, ascending for each word
	starts []uint32 // entry e's words are ewords[starts[e]:starts[e+1]]
	ewords []uint32 // word numbers, its display name's first word first
}

// Len is the number of entries the index holds.
func (x *SearchIndex) Len() int {
	if t := x.table.Load(); t != nil {
		return len(t.people)
	}
	return 0
}

// Replace builds an index over people and swaps it in. A user ID listed
// twice keeps its first entry.
func (x *SearchIndex) Replace(people []Person) {
	x.table.Store(buildSearch(people))
}

// buildSearch builds the index over people.
func buildSearch(people []Person) *searchTable {
	f := newFolder()
	type entry struct {
		p     Person
		key   string
		words []string
	}
	seen := make(map[string]bool, len(people))
	entries := make([]entry, 0, len(people))
	var buf []string
	for _, p := range people {
		if seen[p.UserID] {
			continue
		}
		seen[p.UserID] = true
		buf = f.words(buf[:0], p.DisplayName, true, maxNameWords)
		named := len(buf)
		if local, _, ok := matrixid.SplitUserID(p.UserID); ok {
			buf = f.words(buf, local, true, maxNameWords)
		}
		key := strings.Join(buf[:named], " ")
		if named == 0 {
			key = strings.Join(buf, " ")
		}
		entries = append(entries, entry{p: p, key: key, words: slices.Clone(buf)})
	}
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(strings.Compare(a.key, b.key), strings.Compare(a.p.UserID, b.p.UserID))
	})

	// Number the words in sorted order.
	num := map[string]uint32{}
	for _, e := range entries {
		for _, w := range e.words {
			num[w] = 0
		}
	}
	t := &searchTable{people: make([]Person, len(entries)), words: make([]string, 0, len(num))}
	for w := range num {
		t.words = append(t.words, w)
	}
	slices.Sort(t.words)
	for i, w := range t.words {
		num[w] = uint32(i)
	}
	// Each entry's words, once each, in order; then the postings.
	t.cum = make([]uint32, len(t.words)+1)
	t.starts = make([]uint32, 1, len(entries)+1)
	for i, e := range entries {
		t.people[i] = e.p
		start := len(t.ewords)
		for _, w := range e.words {
			n := num[w]
			if !slices.Contains(t.ewords[start:], n) {
				t.ewords = append(t.ewords, n)
				t.cum[n+1]++
			}
		}
		t.starts = append(t.starts, uint32(len(t.ewords)))
	}
	for i := 1; i < len(t.cum); i++ {
		t.cum[i] += t.cum[i-1]
	}
	t.posts = make([]uint32, len(t.ewords))
	fill := slices.Clone(t.cum[:len(t.words)])
	for e := range t.people {
		for _, n := range t.ewords[t.starts[e]:t.starts[e+1]] {
			t.posts[fill[n]] = uint32(e)
			fill[n]++
		}
	}
	return t
}

// span is the words that start with one word of a search term.
type span struct {
	lo, hi uint32 // words[lo:hi]
	exact  uint32 // the word itself, or ^0 when no entry has it whole
}

// hit is an entry matched by a search, with its score.
type hit struct {
	score int
	entry uint32
}

// better orders hits: higher score first, then rank order.
func (h hit) better(o hit) bool {
	return h.score > o.score || h.score == o.score && h.entry < o.entry
}

// Search returns the entries matching term, best first, at most limit of
// them; more says there were others. Every word of the term must start a
// word of the entry's display name or Matrix ID localpart, case and accents
// aside. Better matches come first: a word matched whole over a word
// matched by its start, a match of the name's first word over a later one;
// then names in alphabetical order.
func (x *SearchIndex) Search(term string, limit int) (found []Person, more bool) {
	t := x.table.Load()
	if t == nil || len(t.people) == 0 || limit <= 0 {
		return nil, false
	}
	terms := newFolder().words(nil, term, false, maxTermWords)
	slices.Sort(terms)
	terms = slices.Compact(terms)
	if len(terms) == 0 {
		return nil, false
	}
	spans := make([]span, len(terms))
	driver := 0 // the term word with the fewest entries under it
	for i, w := range terms {
		lo := sort.SearchStrings(t.words, w)
		hi := lo + sort.Search(len(t.words)-lo, func(j int) bool { return !strings.HasPrefix(t.words[lo+j], w) })
		if lo == hi {
			return nil, false
		}
		spans[i] = span{lo: uint32(lo), hi: uint32(hi), exact: ^uint32(0)}
		if t.words[lo] == w {
			spans[i].exact = uint32(lo)
		}
		if t.cum[hi]-t.cum[lo] < t.cum[spans[driver].hi]-t.cum[spans[driver].lo] {
			driver = i
		}
	}

	seen := x.bitset(len(t.people))
	defer x.scratch.Put(seen)
	top := make([]hit, 0, min(limit, 64))
	matches := 0
	d := spans[driver]
	for _, e := range t.posts[t.cum[d.lo]:t.cum[d.hi]] {
		if (*seen)[e>>6]&(1<<(e&63)) != 0 {
			continue // holds two words under the driver's prefix
		}
		(*seen)[e>>6] |= 1 << (e & 63)
		score := t.score(e, spans)
		if score == 0 {
			continue
		}
		matches++
		h := hit{score, e}
		if len(top) == limit {
			if !h.better(top[len(top)-1]) {
				continue
			}
			top = top[:len(top)-1]
		}
		i := sort.Search(len(top), func(i int) bool { return h.better(top[i]) })
		top = slices.Insert(top, i, h)
	}
	found = make([]Person, len(top))
	for i, h := range top {
		found[i] = t.people[h.entry]
	}
	return found, matches > len(top)
}

// score is how well entry e matches every span (0: it misses one): for
// each, its best word: 1 for a match, +2 when whole, +1 when it is the
// entry's first word.
func (t *searchTable) score(e uint32, spans []span) int {
	ws := t.ewords[t.starts[e]:t.starts[e+1]]
	total := 0
	for _, sp := range spans {
		best := 0
		for k, w := range ws {
			if w < sp.lo || w >= sp.hi {
				continue
			}
			s := 1
			if w == sp.exact {
				s += 2
			}
			if k == 0 {
				s++
			}
			best = max(best, s)
		}
		if best == 0 {
			return 0
		}
		total += best
	}
	return total
}

// bitset returns a cleared bitset of at least n bits from the pool.
func (x *SearchIndex) bitset(n int) *[]uint64 {
	words := (n + 63) / 64
	if b, ok := x.scratch.Get().(*[]uint64); ok && len(*b) >= words {
		clear(*b)
		return b
	}
	b := make([]uint64, words)
	return &b
}
