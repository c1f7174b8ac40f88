package main

import (
	"fmt"
	"strconv"
	"strings"
)

// keyLines maps every key path of a TOML document to the line that defines
// it: keys as joinKey writes them, "[i]" after the elements of arrays and of
// arrays of tables ("forwarders[1].url"), table headers and the tables that
// dotted keys imply included. BurntSushi/toml keeps positions to itself and
// without array indexes, so this finds them again. It reads documents the
// library has already parsed, so it only has to know where keys, headers and
// values start and end; on anything else it stops early and never fails.
func keyLines(doc string) map[string]int {
	s := &lineScanner{doc: strings.TrimPrefix(doc, "\uFEFF"), line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	s.document()
	return s.lines
}

// lineOf is the line of key, else of the nearest table or list holding it,
// else 0.
func lineOf(lines map[string]int, key string) int {
	for key != "" {
		if l, ok := lines[key]; ok {
			return l
		}
		if strings.HasSuffix(key, "]") {
			key = key[:max(strings.LastIndexByte(key, '['), 0)]
		} else {
			key = key[:max(strings.LastIndexByte(key, '.'), 0)]
		}
	}
	return 0
}

type lineScanner struct {
	doc    string
	pos    int
	line   int
	lines  map[string]int
	arrays map[string]int // [[headers]] seen so far per array path
}

func (s *lineScanner) eof() bool { return s.pos >= len(s.doc) }

func (s *lineScanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.doc[s.pos]
}

// advance moves one byte on, counting lines.
func (s *lineScanner) advance() {
	if !s.eof() {
		if s.doc[s.pos] == '\n' {
			s.line++
		}
		s.pos++
	}
}

func (s *lineScanner) mark(key string, line int) {
	if _, ok := s.lines[key]; !ok {
		s.lines[key] = line
	}
}

// blank skips spaces, comments and, when newlines is set, line ends.
func (s *lineScanner) blank(newlines bool) {
	for !s.eof() {
		switch c := s.peek(); {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n' && newlines:
			s.advance()
		case c == '#':
			for !s.eof() && s.peek() != '\n' {
				s.pos++
			}
		default:
			return
		}
	}
}

func (s *lineScanner) document() {
	table := ""
	for {
		s.blank(true)
		if s.eof() {
			return
		}
		start, line := s.pos, s.line
		if s.peek() == '[' {
			s.pos++
			array := s.peek() == '['
			if array {
				s.pos++
			}
			table = s.header(s.key(), array, line)
			for s.peek() == ']' || s.peek() == ' ' || s.peek() == '\t' {
				s.pos++
			}
		} else {
			key := s.dotted(table, s.key(), line)
			s.blank(false)
			if s.peek() == '=' {
				s.pos++
				s.value(key)
			}
		}
		if s.pos == start { // not TOML after all: give up on this line
			for !s.eof() && s.peek() != '\n' {
				s.pos++
			}
		}
	}
}

// header resolves a [table] or [[array]] header to its key path: arrays of
// tables on the way get the index of their last element.
func (s *lineScanner) header(keys []string, array bool, line int) string {
	path := ""
	for i, k := range keys {
		path = joinKey(path, k)
		s.mark(path, line)
		if array && i == len(keys)-1 {
			s.arrays[path]++
		}
		if n := s.arrays[path]; n > 0 {
			path = fmt.Sprintf("%s[%d]", path, n-1)
			s.mark(path, line)
		}
	}
	return path
}

// dotted marks a (dotted) key and the tables it implies.
func (s *lineScanner) dotted(table string, keys []string, line int) string {
	path := table
	for _, k := range keys {
		path = joinKey(path, k)
		s.mark(path, line)
	}
	return path
}

// key reads a dotted key: bare, "quoted" or 'literal' parts.
func (s *lineScanner) key() []string {
	var keys []string
	for {
		s.blank(false)
		switch c := s.peek(); c {
		case '"', '\'':
			keys = append(keys, s.str())
		default:
			start := s.pos
			for !s.eof() && !strings.ContainsRune(" \t\r\n.=[]{},#\"'", rune(s.peek())) {
				s.pos++
			}
			if s.pos == start {
				return keys
			}
			keys = append(keys, s.doc[start:s.pos])
		}
		s.blank(false)
		if s.peek() != '.' {
			return keys
		}
		s.pos++
	}
}

// value skips the value of key, marking the keys of inline tables and the
// elements of arrays in it.
func (s *lineScanner) value(key string) {
	s.blank(false)
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.pos++
		for i := 0; ; i++ {
			s.blank(true)
			if s.eof() || s.peek() == ']' {
				s.advance()
				return
			}
			start := s.pos
			elem := fmt.Sprintf("%s[%d]", key, i)
			s.mark(elem, s.line)
			s.value(elem)
			s.blank(true)
			if s.peek() == ',' {
				s.pos++
			} else if s.pos == start {
				return
			}
		}
	case '{':
		s.pos++
		for {
			s.blank(true)
			if s.eof() || s.peek() == '}' {
				s.advance()
				return
			}
			start, line := s.pos, s.line
			k := s.dotted(key, s.key(), line)
			s.blank(false)
			if s.peek() == '=' {
				s.pos++
				s.value(k)
			}
			s.blank(true)
			if s.peek() == ',' {
				s.pos++
			} else if s.pos == start {
				return
			}
		}
	default: // number, boolean, date
		for !s.eof() && !strings.ContainsRune(",]}\n#", rune(s.peek())) {
			s.pos++
		}
	}
}

// str reads a string of any of TOML's four kinds and returns its text
// (escapes undone for single-line basic strings, which is what keys use).
func (s *lineScanner) str() string {
	q := s.peek()
	if delim := strings.Repeat(string(q), 3); strings.HasPrefix(s.doc[s.pos:], delim) {
		s.pos += 3
		for !s.eof() {
			switch {
			case q == '"' && s.peek() == '\\':
				s.advance()
				s.advance()
			case strings.HasPrefix(s.doc[s.pos:], delim):
				s.pos += 3
				for i := 0; i < 2 && s.peek() == q; i++ { // quotes just before the closing ones
					s.pos++
				}
				return ""
			default:
				s.advance()
			}
		}
		return ""
	}
	s.pos++
	start := s.pos
	for !s.eof() && s.peek() != q && s.peek() != '\n' {
		if q == '"' && s.peek() == '\\' && s.pos+1 < len(s.doc) && s.doc[s.pos+1] != '\n' {
			s.pos++
		}
		s.pos++
	}
	raw := s.doc[start:s.pos]
	if s.peek() == q {
		s.pos++
	}
	if q == '"' {
		if u, err := strconv.Unquote(`"` + raw + `"`); err == nil {
			return u
		}
	}
	return raw
}
