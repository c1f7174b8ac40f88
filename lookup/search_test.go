package lookup_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"mxid/lookup"
)

func TestFoldWords(t *testing.T) {
	for _, c := range []struct {
		in     string
		joined bool
		want   string
	}{
		{"Alice Martin (Accounting)", false, "alice martin accounting"},
		{"Łukasz Ødegård-Müller", false, "lukasz odegard muller"},
		{"ÉLODIE Dupont", false, "elodie dupont"},
		{"Straße", false, "strasse"},
		{"Ｆｕｌｌ ﬁsh", false, "full fish"},
		{"Ærø Œuvre Þór", false, "aero oeuvre thor"},
		{"O'Brien d’Artagnan", false, "o brien d artagnan"},
		{"O'Brien d’Artagnan", true, "o brien obrien d artagnan dartagnan"},
		{"alice.martin_2", false, "alice martin 2"},
		{"Ὀδυσσεύς", false, "οδυσσευσ"},
		{"李小龍 Bruce", false, "李小龍 bruce"},
		{"  ,;-  ", false, ""},
		{"", false, ""},
		{strings.Repeat("é", 40), false, strings.Repeat("e", 40)},
		{strings.Repeat("ж", 40), false, strings.Repeat("ж", 32)}, // cut at 64 bytes, on a rune boundary
	} {
		if got := strings.Join(lookup.FoldWords(c.in, c.joined), " "); got != c.want {
			t.Errorf("FoldWords(%q, %v) = %q, want %q", c.in, c.joined, got, c.want)
		}
	}
}

func searchFixture() *lookup.SearchIndex {
	var x lookup.SearchIndex
	x.Replace([]lookup.Person{
		{"@alice:example.org", "Alice Martin (Accounting)"},
		{"@amartin:example.org", "Alice Martinez (Sales)"},
		{"@ali:example.org", "Ali Khan"},
		{"@bob.smith:example.org", "Bob Alison"},
		{"@elodie:example.org", "Élodie Dupont"},
		{"@lukasz:example.org", "Łukasz Ødegård-Müller"},
		{"@obrien:example.org", "Conan O'Brien"},
		{"@jdoe:example.org", ""},
		{"@jdoe2:example.org", "John Doe"},
		{"@jdoe3:example.org", "John Doe"},
		{"@alice:example.org", "A second entry for Alice is ignored"},
	})
	return &x
}

func ids(ps []lookup.Person) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.UserID)
	}
	return strings.Join(out, " ")
}

func TestSearch(t *testing.T) {
	x := searchFixture()
	if x.Len() != 10 {
		t.Errorf("Len = %d, want 10 (one entry per user ID)", x.Len())
	}
	for _, c := range []struct {
		term  string
		limit int
		want  string
		more  bool
	}{
		{"ali acc", 10, "@alice:example.org", false},
		{"ACC ali", 10, "@alice:example.org", false},
		// Whole word first, then first-word prefixes, then later words.
		{"ali", 10, "@ali:example.org @alice:example.org @amartin:example.org @bob.smith:example.org", false},
		{"ali", 2, "@ali:example.org @alice:example.org", true},
		{"martin", 10, "@alice:example.org @amartin:example.org", false},
		{"elodie", 10, "@elodie:example.org", false},
		{"ÉLO", 10, "@elodie:example.org", false},
		{"odegard muller", 10, "@lukasz:example.org", false},
		{"lukasz", 10, "@lukasz:example.org", false},
		{"obrien", 10, "@obrien:example.org", false},
		{"o'brien", 10, "@obrien:example.org", false},
		{"brien", 10, "@obrien:example.org", false},
		{"jdoe", 10, "@jdoe:example.org @jdoe2:example.org @jdoe3:example.org", false}, // the localpart; the entry without a name too
		{"john doe", 10, "@jdoe2:example.org @jdoe3:example.org", false},               // duplicate names: both people
		{"bob.smi", 10, "@bob.smith:example.org", false},
		{"alice second", 10, "", false}, // the ignored duplicate's name is not indexed
		{"example", 10, "", false},      // the server name is not a word of anyone
		{"zzz", 10, "", false},
		{"", 10, "", false},
		{" - ", 10, "", false},
		{"ali", 0, "", false},
	} {
		got, more := x.Search(c.term, c.limit)
		if ids(got) != c.want || more != c.more {
			t.Errorf("Search(%q, %d) = %q more=%v, want %q more=%v", c.term, c.limit, ids(got), more, c.want, c.more)
		}
	}
	got, _ := x.Search("ali acc", 10)
	if len(got) != 1 || got[0].DisplayName != "Alice Martin (Accounting)" {
		t.Errorf("the display name as stored: %+v", got)
	}
	var empty lookup.SearchIndex
	if got, more := empty.Search("ali", 10); got != nil || more {
		t.Errorf("an empty index found %v", got)
	}
}

// Concurrent searches while the index is replaced: every search sees one
// whole index (run with -race).
func TestSearchWhileReplaced(t *testing.T) {
	x := searchFixture()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50 {
			people := []lookup.Person{{"@alice:example.org", "Alice Martin (Accounting)"}}
			for j := range 200 {
				people = append(people, lookup.Person{UserID: fmt.Sprintf("@u%d_%d:example.org", i, j), DisplayName: "Alice Someone"})
			}
			x.Replace(people)
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		got, _ := x.Search("ali acc", 5)
		if !slices.ContainsFunc(got, func(p lookup.Person) bool { return p.UserID == "@alice:example.org" }) {
			t.Fatalf("a search during a swap missed Alice: %v", got)
		}
	}
}

// The word normalisation of search terms (client input): no panic; words
// not empty, at most maxWordLength bytes, valid UTF-8; folding the words
// again gives the same words.
func FuzzFoldWords(f *testing.F) {
	for _, s := range []string{"Alice Martin (Accounting)", "Łukasz Ødegård-Müller", "O'Brien d’Artagnan", "Ｆｕｌｌ ﬁsh", "Straße", "\xff\xfe", "a\u0301\u0301b", strings.Repeat("ж", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words := lookup.FoldWords(s, true)
		for _, w := range words {
			if w == "" || len(w) > 64 || !utf8.ValidString(w) {
				t.Fatalf("word %q of %q", w, s)
			}
		}
		plain := lookup.FoldWords(s, false)
		if again := lookup.FoldWords(strings.Join(plain, " "), false); !slices.Equal(again, plain) {
			t.Fatalf("folding %q again: %q, then %q", s, plain, again)
		}
	})
}
