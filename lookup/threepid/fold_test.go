package threepid

import (
	"bufio"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/cases"
)

// pythonFold is Python's str.casefold per code point, read from
// testdata/casefold.txt (written by testdata/casefold.py).
type pythonFold struct {
	unicode  string          // the Unicode version of that Python
	to       map[rune]string // code points that do not fold to themselves
	assigned [][2]rune       // code points assigned in that version
}

func loadPythonFold(t *testing.T) *pythonFold {
	t.Helper()
	f, err := os.Open("testdata/casefold.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &pythonFold{to: map[rune]string{}}
	hex := func(s string) rune {
		n, err := strconv.ParseUint(s, 16, 32)
		if err != nil {
			t.Fatalf("casefold.txt: %v", err)
		}
		return rune(n)
	}
	dec := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("casefold.txt: %v", err)
		}
		return n
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "v":
			p.unicode = fields[1]
		case "m":
			var b strings.Builder
			for _, h := range fields[2:] {
				b.WriteRune(hex(h))
			}
			p.to[hex(fields[1])] = b.String()
		case "r":
			start, n, stride, delta := hex(fields[1]), dec(fields[2]), dec(fields[3]), dec(fields[4])
			for i := range n {
				r := start + rune(i*stride)
				p.to[r] = string(r + rune(delta))
			}
		case "a":
			for _, lohi := range fields[1:] {
				lo, hi, _ := strings.Cut(lohi, "-")
				p.assigned = append(p.assigned, [2]rune{hex(lo), hex(hi)})
			}
		}
	}
	if err := sc.Err(); err != nil || p.unicode == "" || len(p.to) < 1000 {
		t.Fatalf("casefold.txt: %d mappings, version %q, %v", len(p.to), p.unicode, err)
	}
	return p
}

func (p *pythonFold) fold(r rune) string {
	if f, ok := p.to[r]; ok {
		return f
	}
	return string(r)
}

func (p *pythonFold) isAssigned(r rune) bool {
	for _, a := range p.assigned {
		if r >= a[0] && r <= a[1] {
			return true
		}
	}
	return false
}

// Every code point folds as Python 3.11's str.casefold folds it (Unicode
// 14.0), and folding twice changes nothing. A newer Unicode may only add
// foldings for code points that version did not assign (case folding is
// stable for assigned characters); they are counted, not failed.
func TestFoldMatchesPython(t *testing.T) {
	py := loadPythonFold(t)
	newer := 0
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		got, want := fold(string(r)), py.fold(r)
		if got != want {
			if want == string(r) && !py.isAssigned(r) {
				newer++
				continue
			}
			t.Errorf("fold(%U %q) = %q %U, Python %s: %q %U", r, r, got, []rune(got), py.unicode, want, []rune(want))
		}
		if again := fold(got); again != got {
			t.Errorf("fold is not idempotent on %U: %q, then %q", r, got, again)
		}
	}
	t.Logf("x/text cases tables: Unicode %s; Python reference: Unicode %s; %d foldings of code points unassigned in %s",
		cases.UnicodeVersion, py.unicode, newer, py.unicode)
}

// Folding is per code point (no context: a final sigma folds like any
// sigma), so a string folds to its code points' foldings, joined.
func TestFoldStrings(t *testing.T) {
	py := loadPythonFold(t)
	tricky := []rune{'A', 'z', 'ß', 'ẞ', 'İ', 'ı', 'Σ', 'σ', 'ς', 'ﬃ', 'ſ', 'K', 'Å', 'ΐ', '\u0345', 'ǅ',
		0x13A0, 0x13F1, 0x13F5, 0x13F9, 0xAB70, 0xABBF, 0x10400, 0x10428, 0x1E900, '\u0307', '@', '.'}
	for r := range py.to {
		tricky = append(tricky, r)
	}
	rnd := rand.New(rand.NewPCG(7, 11))
	for range 20000 {
		var in, want strings.Builder
		for range 1 + rnd.IntN(12) {
			r := tricky[rnd.IntN(len(tricky))]
			in.WriteRune(r)
			want.WriteString(py.fold(r))
		}
		if got := fold(in.String()); got != want.String() {
			t.Fatalf("fold(%q) = %q, want %q", in.String(), got, want.String())
		}
	}
}

// The cases the issue names, spelled out.
func TestFoldKnownCases(t *testing.T) {
	for in, want := range map[string]string{
		"\u13F1":          "\u13F1", // CHEROKEE LETTER YE: the capital is the folded form
		"\u13F9":          "\u13F1", // CHEROKEE SMALL LETTER YE
		"\u13A0\uAB70":    "\u13A0\u13A0",
		"Straße":          "strasse",
		"ẞ":               "ss",
		"İstanbul":        "i\u0307stanbul", // full folding, not the Turkic one
		"ΣΊΣΥΦΟΣ":         "σίσυφοσ",        // no final sigma
		"ὈΔΥΣΣΕΎΣ":        "ὀδυσσεύσ",
		"ﬃ":               "ffi",
		"\U00010400":      "\U00010428", // DESERET CAPITAL LONG I
		"\U00010428":      "\U00010428",
		"MASSE":           "masse",
		"alice@EXAMPLE.o": "alice@example.o",
	} {
		if got := fold(in); got != want {
			t.Errorf("fold(%q) = %q %U, want %q %U", in, got, []rune(got), want, []rune(want))
		}
	}
}

// An address is its own canonical form, also where folding lengthens it
// past a limit: it is then refused rather than canonicalised to something
// that would itself be refused.
func TestCanonicalEmailIdempotent(t *testing.T) {
	for _, in := range []string{"Ᏹ@example.org", "ᏹ@example.org", "Strauß@Example.COM", "İ@example.org", "ΣΑΣ@example.gr"} {
		c, err := CanonicalEmail(in)
		if err != nil {
			t.Fatalf("CanonicalEmail(%q): %v", in, err)
		}
		if c2, err := CanonicalEmail(c); err != nil || c2 != c {
			t.Errorf("CanonicalEmail(%q) = %q, then %q, %v", in, c, c2, err)
		}
	}
	// 32 × U+0390 is 64 bytes; folded, three code points (6 bytes) each.
	long := strings.Repeat("\u0390", 32) + "@example.org"
	if c, err := CanonicalEmail(long); err == nil {
		t.Errorf("CanonicalEmail accepted %q, canonical form %q has a %d-byte local part", long, c, strings.IndexByte(c, '@'))
	}
}
