package proxy

import (
	"regexp"
	"regexp/syntax"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Go's regexp runs its NFA over every byte of a body when a pattern has no
// literal prefix (\b\d{3}-... scans at some 20 MB/s). A prefilter makes the
// common case cheap: the set of bytes a match can start with is computed
// once per pattern, and a buffer holding none of them is not searched at
// all; otherwise the search starts just before the first such byte. The
// result is the same as searching the whole buffer.

// startSet is the bytes a match of a pattern can begin with; all is set
// when any byte can.
type startSet struct {
	b   [256]bool
	all bool
}

var startSets sync.Map // *regexp.Regexp -> *startSet

func startSetOf(re *regexp.Regexp) *startSet {
	if v, ok := startSets.Load(re); ok {
		return v.(*startSet)
	}
	ss := &startSet{all: true}
	if sre, err := syntax.Parse(re.String(), syntax.Perl); err == nil {
		var s startSet
		if empty := first(sre.Simplify(), &s); !empty && !s.all {
			ss = &s
		}
	}
	startSets.Store(re, ss)
	return ss
}

// first adds the bytes re can start with to s and reports whether re can
// match without consuming a byte.
func first(re *syntax.Regexp, s *startSet) bool {
	switch re.Op {
	case syntax.OpNoMatch:
		return false
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	case syntax.OpLiteral:
		if len(re.Rune) == 0 {
			return true
		}
		addRune(s, re.Rune[0], re.Flags&syntax.FoldCase != 0)
		return false
	case syntax.OpCharClass:
		for i := 0; i+1 < len(re.Rune); i += 2 {
			lo, hi := re.Rune[i], re.Rune[i+1]
			for r := lo; r <= hi && r < utf8.RuneSelf; r++ {
				s.b[r] = true
			}
			if hi >= utf8.RuneSelf {
				for c := 0xC0; c < 0x100; c++ {
					s.b[c] = true // any multi-byte leading byte
				}
			}
		}
		return len(re.Rune) == 0
	case syntax.OpCapture:
		return first(re.Sub[0], s)
	case syntax.OpStar, syntax.OpQuest:
		first(re.Sub[0], s)
		return true
	case syntax.OpPlus:
		return first(re.Sub[0], s)
	case syntax.OpRepeat:
		e := first(re.Sub[0], s)
		return e || re.Min == 0
	case syntax.OpConcat:
		for _, sub := range re.Sub {
			if !first(sub, s) {
				return false
			}
		}
		return true
	case syntax.OpAlternate:
		empty := false
		for _, sub := range re.Sub {
			if first(sub, s) {
				empty = true
			}
		}
		return empty
	}
	s.all = true
	return false
}

func addRune(s *startSet, r rune, fold bool) {
	add := func(r rune) {
		var b [utf8.UTFMax]byte
		utf8.EncodeRune(b[:], r)
		s.b[b[0]] = true
	}
	add(r)
	if fold {
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			add(f)
		}
	}
}

// firstIndex returns the index of the first byte of b a match can start
// with, or -1.
func (s *startSet) firstIndex(b []byte) int {
	if s.all {
		return 0
	}
	for i, c := range b {
		if s.b[c] {
			return i
		}
	}
	return -1
}

// findAll is re.FindAllIndex(b, -1) skipping the bytes before the first
// possible match start. ctx (when has) is the byte before b in the
// stream, seen by \b and friends but never part of a match.
func findAll(re *regexp.Regexp, b []byte, ctx byte, has bool) [][]int {
	i := startSetOf(re).firstIndex(b)
	if i < 0 {
		return nil
	}
	off := i - 1 // keep one byte of context: it cannot start a match
	var hay []byte
	switch {
	case off >= 0:
		hay = b[off:]
	case has:
		hay = make([]byte, 0, len(b)+1)
		hay = append(append(hay, ctx), b...)
	default:
		off, hay = 0, b
	}
	locs := re.FindAllIndex(hay, -1)
	if len(locs) > 0 && locs[0][0] == 0 && (i > 0 || has) {
		// A match would start in the context byte (already forwarded,
		// or the end of a replaced match): search without it.
		hay, off = b[max(i, 0):], max(i, 0)
		locs = re.FindAllIndex(hay, -1)
	}
	for _, l := range locs {
		l[0] += off
		l[1] += off
	}
	return locs
}

// matches is re.Match(b) skipping the bytes before the first possible
// match start.
func matches(re *regexp.Regexp, b []byte) bool {
	i := startSetOf(re).firstIndex(b)
	return i >= 0 && re.Match(b[max(i-1, 0):])
}
