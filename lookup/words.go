package lookup

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Words as the directory search compares them: split on everything that is
// not a letter or a digit, compatibility-decomposed (NFKD: "ﬁ" is "fi",
// full-width letters are ASCII) with the accents dropped, case-folded
// (upper-cased then lower-cased, rune by rune: x/text's cases.Fold is not
// idempotent for Cherokee), and the few Latin letters that carry no
// separable accent written plainly (ß ss, ø o, ł l, æ ae, ...). So "Łukasz Ødegård-Müller" is the words
// lukasz, odegard, muller, and the search term "MULL ode" finds it.
//
// An apostrophe splits a word too ("O'Brien" is o and brien), but names
// also index the joined form (obrien), so "obrien", "o'brien" and "brien"
// all find O'Brien.

const (
	maxNameWords  = 32 // words indexed per entry
	maxTermWords  = 8  // words of a search term that count
	maxWordLength = 64 // bytes; longer words are cut
)

// plainLetters spells the lower-case letters that NFKD does not decompose.
var plainLetters = strings.NewReplacer("ß", "ss", "ø", "o", "ł", "l", "đ", "d", "ð", "d", "ħ", "h", "ı", "i", "æ", "ae", "œ", "oe", "þ", "th", "ŧ", "t", "ŋ", "n", "ĸ", "k")

// folder splits and normalises words, in buffers of its own: it is not
// safe for concurrent use.
type folder struct {
	word []byte
	join []byte
}

func newFolder() *folder { return &folder{} }

// words appends the normalised words of s to dst, at most max of them;
// with joined, a word split by apostrophes is appended joined too.
func (f *folder) words(dst []string, s string, joined bool, max int) []string {
	if !isASCII(s) {
		// Decomposed again after the case mapping, which may make a letter
		// that decomposes; invalid bytes separate words.
		s = norm.NFKD.String(strings.Map(foldCase, norm.NFKD.String(strings.ToValidUTF8(s, " "))))
	}
	f.word, f.join = f.word[:0], f.join[:0]
	parts := 0 // parts of the current apostrophe-joined word
	n := 0
	emit := func(b []byte) {
		if len(b) > 0 && n < max {
			dst = append(dst, f.finish(b))
			n++
		}
	}
	endPart := func() {
		if len(f.word) > 0 {
			emit(f.word)
			f.join = append(f.join, f.word...)
			parts++
			f.word = f.word[:0]
		}
	}
	endWord := func() {
		endPart()
		if joined && parts > 1 {
			emit(f.join)
		}
		f.join, parts = f.join[:0], 0
	}
	for _, r := range s {
		switch {
		case r < 0x80:
			switch {
			case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				f.word = append(f.word, byte(r))
			case r >= 'A' && r <= 'Z':
				f.word = append(f.word, byte(r)+'a'-'A')
			case r == '\'':
				endPart()
			default:
				endWord()
			}
		case r == '’' || r == 'ʼ':
			endPart()
		case unicode.Is(unicode.Mn, r): // an accent, decomposed from its letter
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			f.word = utf8.AppendRune(f.word, r)
		default:
			endWord()
		}
	}
	endWord()
	return dst
}

// finish spells a word's undecomposable letters plainly and cuts it to
// maxWordLength.
func (f *folder) finish(b []byte) string {
	w := string(b)
	if !isASCII(w) {
		w = plainLetters.Replace(w)
	}
	if len(w) > maxWordLength {
		w = strings.ToValidUTF8(w[:maxWordLength], "") // drops a cut rune
	}
	return w
}

// foldCase maps a rune to its case-folded form.
func foldCase(r rune) rune { return unicode.ToLower(unicode.ToUpper(r)) }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
